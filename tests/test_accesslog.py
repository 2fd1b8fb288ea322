"""The access log (a line per request, no secrets from the query), the audit log (admin actions, authentication
failures over HTTP and the WebSocket) and the job log's user and door, on a real app."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from server.doors.accesslog import door_of
from server.queue.joblog import Submitters
from server.queue.jobs import Job
from tests.conftest import AppClientFactory, keys_file

ADMIN = "cvy_accesslog-admin-key"
USER = "cvy_accesslog-user-key"


def lines(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


@pytest.fixture
def keys(tmp_path: Path) -> str:
    return keys_file(tmp_path, {"ops": (ADMIN, True), "alice": (USER, False)})


async def test_every_request_gets_a_line_without_query_secrets(
    app_client: AppClientFactory, caplog: pytest.LogCaptureFixture, keys: str
) -> None:
    client = await app_client(api_keys_file=keys)
    with caplog.at_level(logging.INFO):
        resp = await client.get("/queue/status?key=hunter2&window=60", headers={"Authorization": f"Bearer {USER}"})
        assert resp.status == 200
        assert (await client.get("/no-such-page")).status == 404
    access = lines(caplog, "server.doors.accesslog")
    assert re.fullmatch(
        r"GET /queue/status\?key=\*\*\*&window=60 200 [\d.]+ms client=127\.0\.0\.1 user=alice", access[0]
    )
    assert re.fullmatch(r"GET /no-such-page 404 [\d.]+ms client=127\.0\.0\.1 user=-", access[1])
    # aiohttp's own access log is the test server's; the real server runs without it (server/doors/edge.py make_runner).
    assert [r.name for r in caplog.records if "hunter2" in r.getMessage() and r.name != "aiohttp.access"] == []


async def test_authentication_failures_are_audited_on_both_doors(
    app_client: AppClientFactory, caplog: pytest.LogCaptureFixture, keys: str
) -> None:
    client = await app_client(api_keys_file=keys)
    with caplog.at_level(logging.INFO):
        resp = await client.get("/queue/status", headers={"Authorization": "Bearer cvy_wrong"})
        assert resp.status == 401
        ws = await client.ws_connect("/ws")
        await ws.receive_json()  # hello
        await ws.send_json({"type": "auth", "key": "cvy_wrong-too"})
        assert (await ws.receive_json())["error"] == "Unauthorized"
        await ws.close()
    audit = lines(caplog, "server.doors.accesslog.audit")
    assert audit == [
        "audit auth-failure user=- client=127.0.0.1 door=rest path=/queue/status",
        "audit auth-failure user=- client=127.0.0.1 door=websocket",
    ]
    assert not any("cvy_wrong" in r.getMessage() for r in caplog.records)


async def test_admin_actions_are_audited(
    app_client: AppClientFactory, caplog: pytest.LogCaptureFixture, keys: str
) -> None:
    client = await app_client(api_keys_file=keys)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    done = await (await client.post("/run?wait=true", json={"language": "bash", "code": "true"})).json()
    with caplog.at_level(logging.INFO):
        resp = await client.post(f"/queue/job/{done['id']}/rerun", headers=admin)
        assert resp.status == 202
        resp = await client.post("/queue/jobs/cancel", json={"ids": [done["id"], "0" * 32]}, headers=admin)
        assert resp.status == 200
        resp = await client.post(
            "/queue/jobs/cancel", json={"ids": [done["id"]]}, headers={"Authorization": f"Bearer {USER}"}
        )
        assert resp.status == 403
    assert lines(caplog, "server.doors.accesslog.audit") == [
        f"audit rerun user=ops client=127.0.0.1 status=202 job={done['id']}",
        "audit bulk-cancel user=ops client=127.0.0.1 status=200 jobs=2",
        "audit bulk-cancel user=alice client=127.0.0.1 status=403",  # refused before its body was read
    ]


async def test_job_lines_name_the_user_and_the_door(
    app_client: AppClientFactory, caplog: pytest.LogCaptureFixture, keys: str
) -> None:
    client = await app_client(api_keys_file=keys)
    with caplog.at_level(logging.INFO, logger="server.queue.joblog"):
        rest = await (
            await client.post(
                "/run?wait=true", json={"language": "bash", "code": "true"}, headers={"Authorization": f"Bearer {USER}"}
            )
        ).json()
        ws = await client.ws_connect("/ws")
        await ws.receive_json()  # hello
        await ws.send_json({"type": "run", "language": "bash", "code": "true", "requestId": "r"})
        ws_id = ""
        while True:
            message = await ws.receive_json()
            ws_id = ws_id or message.get("jobId", "")
            if message["type"] == "completed":
                break
        await ws.close()
        piston = await client.post(
            "/api/v2/execute", json={"language": "bash", "version": "*", "files": [{"content": "true"}]}
        )
        assert piston.status == 200
        judge0 = await client.post("/judge0/submissions?wait=true", json={"language_id": 46, "source_code": "true"})
        assert judge0.status in (200, 201)
    log = lines(caplog, "server.queue.joblog")
    assert f"job {rest['id']} submitted language=bash user=alice door=rest" in log
    assert any(
        line.startswith(f"job {rest['id']} completed ") and line.endswith(" user=alice door=rest") for line in log
    )
    assert f"job {ws_id} submitted language=bash user=anonymous door=websocket" in log
    doors = [line.rsplit("door=", 1)[1] for line in log if " submitted " in line]
    assert doors == ["rest", "websocket", "piston", "judge0"]


def test_the_submitters_kept_are_bounded() -> None:
    submitters = Submitters(size=2)
    jobs = [Job(language="bash", code="true", owner=f"key:u{i}") for i in range(3)]
    for job in jobs:
        submitters.remember(job)
    assert len(submitters) == 2
    assert submitters.pop(jobs[0].id) is None  # the oldest was forgotten
    assert submitters.pop(jobs[2].id) == "user=u2 door=-"


def test_doors_by_path() -> None:
    paths = ["/run", "/ws", "/api/v2/execute", "/judge0/submissions", "/", "/static/x.js", "/queue/jobs"]
    assert [door_of(p) for p in paths] == ["rest", "websocket", "piston", "judge0", "pages", "pages", "rest"]


async def test_a_quiet_logger_costs_no_line(app_client: AppClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    client = await app_client()
    with caplog.at_level(logging.WARNING):
        assert (await client.get("/health")).status == 200
        await asyncio.sleep(0)
    assert lines(caplog, "server.doors.accesslog") == []
