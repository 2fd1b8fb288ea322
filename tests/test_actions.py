"""Admin actions from the dashboard: run again and bulk cancel, on the real sandbox (memory backend: both go
through the worker's own submit and stop, which the queue suites run on both backends). Non-admins are attackers
here: they hold ids, own the jobs, and still get nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.clients import call, wait_for_status
from tests.conftest import AppClientFactory, keys_file
from tests.test_ownership import bearer

OPS, ALICE = "cvy_actions-ops-key-0123456789", "cvy_actions-alice-key-0123456789"
SLEEP = {"language": "bash", "code": "sleep 60"}


@pytest.fixture
async def make(app_client: AppClientFactory, tmp_path: Path) -> Any:
    keys = keys_file(tmp_path, {"ops": (OPS, True), "alice": (ALICE, False)})

    async def build(**overrides: Any) -> TestClient[Any, Any]:
        return await app_client(api_keys_file=keys, max_concurrent_jobs=1, **overrides)

    return build


async def test_an_admin_runs_a_job_again_as_a_new_job_of_its_own(make: Any) -> None:
    client = await make()
    run = {"language": "python", "code": "print(input()[::-1])", "stdin": "olleh", "args": ["x"]}
    original = await call(client, "POST", "/run", 200, json=run, headers=bearer(ALICE))
    again = await call(client, "POST", f"/queue/job/{original['id']}/rerun", 202, headers=bearer(OPS))
    assert again["rerunOf"] == original["id"] and again["jobId"] != original["id"]
    job = await wait_for_status(client, again["jobId"], {"completed"}, headers=bearer(OPS))
    assert (job["code"], job["stdin"], job["args"], job["stdout"]) == (run["code"], "olleh", ["x"], "hello\n")
    # The admin's job, not alice's: she cannot read it.
    await call(client, "GET", f"/queue/job/{again['jobId']}", 404, headers=bearer(ALICE))
    await call(client, "POST", "/queue/job/0123456789abcdef0123456789abcdef/rerun", 404, headers=bearer(OPS))


async def test_run_again_draws_a_submit_token(make: Any) -> None:
    client = await make(rate_limit_requests=2, rate_limit_burst=2)
    done = await call(client, "POST", "/run", 200, json={"language": "bash", "code": "true"}, headers=bearer(OPS))
    await call(client, "POST", f"/queue/job/{done['id']}/rerun", 202, headers=bearer(OPS))
    error = await call(client, "POST", f"/queue/job/{done['id']}/rerun", 429, headers=bearer(OPS))
    assert error["error"] == "Too many requests"


async def test_bulk_cancel_answers_once_per_id(make: Any) -> None:
    client = await make()
    finished = await call(client, "POST", "/run", 200, json={"language": "bash", "code": "true"})
    running = await call(client, "POST", "/run?wait=false", 202, json=SLEEP, headers=bearer(ALICE))
    await wait_for_status(client, running["jobId"], {"running"}, headers=bearer(OPS))
    queued = await call(client, "POST", "/run?wait=false", 202, json=SLEEP)
    unknown = "0123456789abcdef0123456789abcdef"
    ids = [queued["jobId"], running["jobId"], unknown, queued["jobId"], finished["id"]]
    body = await call(client, "POST", "/queue/jobs/cancel", 200, json={"ids": ids}, headers=bearer(OPS))
    results = body["results"]
    assert [r["id"] for r in results] == [queued["jobId"], running["jobId"], unknown, finished["id"]]
    assert results[0] == {"id": queued["jobId"], "status": 200, "jobStatus": "cancelled", "reason": "stopped"}
    assert results[1] == {"id": running["jobId"], "status": 200, "jobStatus": "cancelled", "reason": "stopped"}
    assert results[2] == {"id": unknown, "status": 404, "error": "Not found", "message": f"No job with id {unknown!r}."}
    assert results[3]["status"] == 409 and results[3]["jobStatus"] == "completed"

    for payload, status in (
        ({"ids": []}, 400),
        ({"ids": "abc"}, 400),
        ({"ids": [1, 2]}, 400),
        ({"ids": ["a"] * 21}, 400),  # past MAX_BATCH_SIZE (20 in tests)
        ([], 400),
    ):
        error = await call(client, "POST", "/queue/jobs/cancel", status, json=payload, headers=bearer(OPS))
        assert error["field"] == "ids"
    text = {**bearer(OPS), "Content-Type": "text/plain"}
    error = await call(client, "POST", "/queue/jobs/cancel", 415, data="ids", headers=text)
    assert error["error"] == "Unsupported media type"
    as_json = {**bearer(OPS), "Content-Type": "application/json"}
    error = await call(client, "POST", "/queue/jobs/cancel", 400, data="{ids", headers=as_json)
    assert error["message"].startswith("The body is not valid JSON")


async def test_non_admins_cannot_run_again_or_cancel_in_bulk(make: Any) -> None:
    client = await make()
    mine = await call(client, "POST", "/run?wait=false", 202, json=SLEEP, headers=bearer(ALICE))
    await wait_for_status(client, mine["jobId"], {"running"}, headers=bearer(ALICE))
    anonymous = await call(client, "POST", "/run?wait=false", 202, json=SLEEP)
    before = (await call(client, "GET", "/queue/status", 200))["totalQueued"]
    unknown = "0123456789abcdef0123456789abcdef"
    # The owner of the job, a holder of an anonymous job's id, a stranger: the same 403 for a real id and an
    # unknown one, so the refusal confirms nothing.
    for headers in (bearer(ALICE), {}):
        answers = []
        for job_id in (mine["jobId"], anonymous["jobId"], unknown):
            answers.append(await call(client, "POST", f"/queue/job/{job_id}/rerun", 403, headers=headers))
            body = {"ids": [job_id]}
            answers.append(await call(client, "POST", "/queue/jobs/cancel", 403, json=body, headers=headers))
        assert {a["error"] for a in answers} == {"Forbidden"}
        assert len({a["message"] for a in answers[::2]}) == 1 and len({a["message"] for a in answers[1::2]}) == 1
    # Nothing was queued, nothing cancelled.
    assert (await call(client, "GET", "/queue/status", 200))["totalQueued"] == before
    assert (await call(client, "GET", f"/queue/job/{mine['jobId']}", 200, headers=bearer(ALICE)))["status"] == "running"
    assert (await call(client, "GET", f"/queue/job/{anonymous['jobId']}", 200))["status"] == "queued"
    await call(client, "POST", "/queue/jobs/cancel", 200, json={"ids": [mine["jobId"]]}, headers=bearer(OPS))
