"""Batches (POST /runs, GET /runs) and callbacks through the app, on both backends: each item on its own, counted by
the rate limiter, read under the owners' rules; a finished job delivered to its callback, never to a refused one."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.clients import call
from tests.conftest import AppClientFactory
from tests.test_ownership import ALICE, BOB, OPS, Client, bearer
from tests.test_ownership import app_client as app_client  # both backends, with keys alice, bob and ops

HELLO = {"language": "python", "code": "print('hello')"}


async def test_each_item_is_queued_or_refused_on_its_own(app_client: AppClientFactory) -> None:
    client = await app_client()
    items = [HELLO, {"language": "no-such-lang", "code": "x"}, {**HELLO, "priority": 5}, {"language": "python"}]
    answer = await call(client, "POST", "/runs", 200, json={"submissions": items})
    runs = answer["runs"]
    assert [r["index"] for r in runs] == [0, 1, 2, 3]
    assert runs[0]["status"] == 202 and len(runs[0]["jobId"]) == 32
    assert (runs[1]["status"], runs[1]["field"]) == (400, "language")
    assert runs[2]["status"] == 403  # an anonymous caller's priority
    assert (runs[3]["status"], runs[3]["field"]) == (400, "code")
    stats = await call(client, "GET", "/queue/status", 200)
    assert stats["totalQueued"] == 1


async def test_each_item_draws_a_submit_token(app_client: AppClientFactory) -> None:
    client = await app_client(rate_limit_requests=3, rate_limit_burst=3)
    answer = await call(client, "POST", "/runs", 200, json={"submissions": [HELLO] * 5})
    statuses = [r["status"] for r in answer["runs"]]
    assert statuses == [202, 202, 202, 429, 429]
    assert answer["runs"][3]["retryAfter"] > 0
    await call(client, "POST", "/run", 429, json=HELLO)  # the bucket is empty for single runs too


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"submissions": []}, 400, "submissions"),
        ({"submissions": [HELLO] * 21}, 400, "submissions"),
        ({"nope": []}, 400, "submissions"),
        ([HELLO], 400, "submissions"),
    ],
)
async def test_bad_batches_are_refused_whole(app_client: AppClientFactory, body: Any, status: int, field: str) -> None:
    client = await app_client()
    error = await call(client, "POST", "/runs", status, json=body)
    assert error["field"] == field
    assert (await call(client, "GET", "/queue/status", 200))["totalQueued"] == 0


async def test_a_batch_may_be_larger_than_one_run_body(app_client: AppClientFactory) -> None:
    client = await app_client(max_code_bytes=40_000)
    code = "print(1)\n#" + "x" * 39_000
    answer = await call(client, "POST", "/runs", 200, json={"submissions": [{"language": "python", "code": code}] * 4})
    assert [r["status"] for r in answer["runs"]] == [202] * 4


async def test_get_runs_reads_in_order_and_hides_what_the_caller_may_not_read(app_client: AppClientFactory) -> None:
    client = await app_client()
    mine = await call(client, "POST", "/runs", 200, json={"submissions": [HELLO, HELLO]}, headers=bearer(ALICE))
    ids = [r["jobId"] for r in mine["runs"]]
    unknown = "0" * 32
    query = f"/runs?ids={ids[1]},{unknown},{ids[0]}"
    read = await call(client, "GET", query, 200, headers=bearer(ALICE))
    assert [j["id"] for j in read["jobs"]] == [ids[1], unknown, ids[0]]
    assert read["jobs"][1]["error"] == "Not found"
    assert "code" in read["jobs"][0]
    # Bob and an anonymous caller know the ids, but the jobs are Alice's: answered as unknown, like the unknown id.
    for headers in (bearer(BOB), {}):
        other = await call(client, "GET", query, 200, headers=headers)
        assert [j.get("error") for j in other["jobs"]] == ["Not found"] * 3
        assert all("code" not in j for j in other["jobs"])
    admin = await call(client, "GET", query, 200, headers=bearer(OPS))
    assert admin["jobs"][0]["code"] == HELLO["code"]


async def test_get_runs_bounds_the_ids(app_client: AppClientFactory) -> None:
    client = await app_client()
    await call(client, "GET", "/runs", 400)
    await call(client, "GET", "/runs?ids=" + ",".join(f"{i:032x}" for i in range(21)), 400)


async def test_get_runs_answers_a_repeated_id_once_and_bounds_its_bytes(app_client: AppClientFactory) -> None:
    # The amplification: one id twenty times turned a short request into twenty copies of a large job.
    client = await app_client(max_batch_answer_bytes=300_000)
    big = {"language": "python", "code": "print('x' * 200_000)"}
    first = (await call(client, "POST", "/run", 200, json=big))["id"]
    second = (await call(client, "POST", "/run", 200, json=big))["id"]
    resp = await client.get("/runs?ids=" + ",".join([first] * 20))
    body = await resp.read()
    assert resp.status == 200 and len(body) < 250_000
    assert [j["id"] for j in orjson.loads(body)["jobs"]] == [first]
    resp = await client.get(f"/runs?ids={first},{second},{first}")
    body = await resp.read()
    assert len(body) <= 300_000
    jobs = orjson.loads(body)["jobs"]
    assert [j["id"] for j in jobs] == [first, second]
    assert len(jobs[0]["stdout"]) == 200_001
    # Past the answer's budget a job is named with where to read it alone, never cut.
    assert jobs[1]["error"] == "Payload too large" and f"/queue/job/{second}" in jobs[1]["message"]
    assert "stdout" not in jobs[1]


@pytest.fixture
async def receiver() -> Any:
    seen: list[tuple[dict[str, str], bytes]] = []
    arrived = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read()))
        arrived.set()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, seen, arrived
    await server.close()


async def test_a_finished_job_is_delivered_to_its_callback_signed(app_client: AppClientFactory, receiver: Any) -> None:
    server, seen, arrived = receiver
    client = await app_client(callback_allowed_networks=("127.0.0.0/8",), callback_secret="s3cret")
    url = f"http://127.0.0.1:{server.port}/hook"
    job = await call(client, "POST", "/run", 200, json={**HELLO, "callbackUrl": url})
    async with asyncio.timeout(20):
        await arrived.wait()
    headers, body = seen[0]
    delivered = orjson.loads(body)
    assert delivered["id"] == job["id"] and delivered["stdout"] == "hello\n" and delivered["status"] == "completed"
    assert headers["X-Conveyor-Signature"] == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()


async def test_a_callback_to_loopback_is_refused_unless_allowed(app_client: AppClientFactory, receiver: Any) -> None:
    server, seen, arrived = receiver
    client = await app_client()
    # Ideographic full stops and full-width digits: IDNA makes them the loopback literal the client connects to.
    for host in ("127.0.0.1", "localhost", "127\u30020\u30020\u30021", "\uff11\uff12\uff17.0.0.1"):
        job = await call(
            client, "POST", "/run", 200, json={**HELLO, "callbackUrl": f"http://{host}:{server.port}/hook"}
        )
        assert job["status"] == "completed"  # the job itself is unaffected
    await asyncio.sleep(1.0)
    assert seen == []


async def test_callbacks_from_a_batch_and_the_websocket(app_client: AppClientFactory, receiver: Any) -> None:
    server, seen, _ = receiver
    client: Client = await app_client(callback_allowed_networks=("127.0.0.0/8",))
    url = f"http://127.0.0.1:{server.port}/hook"
    batch = await call(client, "POST", "/runs", 200, json={"submissions": [{**HELLO, "callbackUrl": url}] * 2})
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "run", **HELLO, "callbackUrl": url, "requestId": "r1"})
        async with asyncio.timeout(20):
            while (msg := await ws.receive_json())["type"] != "queued":
                pass
        ids = {r["jobId"] for r in batch["runs"]} | {msg["jobId"]}
        async with asyncio.timeout(20):
            while len(seen) < 3:
                await asyncio.sleep(0.05)
    assert {orjson.loads(body)["id"] for _, body in seen} == ids
