"""Callbacks outlive the process: a real server SIGKILLed with 60 callbacks pending delivers every one after a
restart on the same DATA_DIR (embedded) or the same Redis; one SIGKILLed while the jobs are still queued or running
has their callbacks delivered by whoever ends them. Real processes, real sandboxed jobs, a real receiver."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.callbacks import IDEMPOTENCY_HEADER
from server.settings import Settings
from tests.conftest import free_port, scaled
from tests.test_cluster import Instance, get_job, post_run

JOBS = 60


async def metric(session: aiohttp.ClientSession, instance: Instance, name: str) -> float:
    async with session.get(f"{instance.url}/metrics") as resp:
        text = await resp.text()
    found = re.search(rf"^conveyor_{name} (\S+)$", text, re.M)
    assert found is not None, text
    return float(found.group(1))


@pytest.mark.timeout(scaled(300))
@pytest.mark.parametrize("store", ["embedded", "redis"])
async def test_a_sigkill_loses_no_callback(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue("redis_url") if store == "redis" else ""
    hook_port = free_port()  # the receiver is down: nothing listens here until the server is dead
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "MAX_QUEUE_SIZE": str(2 * JOBS),
        "WORKER_SLOTS": "2",
    }
    first = await Instance(redis_url, tmp_path, **env).start()
    try:
        async with aiohttp.ClientSession() as session:
            ids = set()
            for i in range(JOBS):
                url = f"http://127.0.0.1:{hook_port}/hook/{i}"
                body = {"language": "python", "code": f"print({i})", "callbackUrl": url}
                async with session.post(f"{first.url}/run?wait=false", json=body) as resp:
                    assert resp.status == 202, await resp.text()
                    ids.add((await resp.json())["jobId"])
            # Every job finished, and each callback was tried and refused at least once: all 60 pending.
            async with asyncio.timeout(scaled(120)):
                while await metric(session, first, "callbacks_pending") < JOBS or (
                    await metric(session, first, "callbacks_retried_total") < JOBS
                ):
                    await asyncio.sleep(0.1)
            assert await metric(session, first, "callbacks_delivered_total") == 0
        first.signal(signal.SIGKILL)
        first.wait()
    finally:
        first.stop()

    keys: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        keys.append(request.headers[IDEMPOTENCY_HEADER])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook/{i}", hook)
    receiver = TestServer(app, host="127.0.0.1", port=hook_port)
    await receiver.start_server()
    second = await Instance(redis_url, tmp_path, **env).start()
    try:
        async with asyncio.timeout(scaled(180)):  # the longest backoff before the kill is seconds, not minutes
            while len(set(keys)) < JOBS:
                await asyncio.sleep(0.1)
        assert set(keys) == ids  # every job's callback, told apart by its idempotency key
    finally:
        second.stop()
        await receiver.close()


async def outstanding(session: aiohttp.ClientSession, instances: list[Instance]) -> float:
    """Callbacks armed or pending, as each instance's /metrics reads the outbox (on Redis, one shared outbox)."""
    total = 0.0
    for instance in instances:
        total += await metric(session, instance, "callbacks_armed") + await metric(
            session, instance, "callbacks_pending"
        )
    return total


# Without the embedded store's journal (DURABLE), a job queued or running when its server dies is gone after the
# restart, and so is its callback (dropped as orphaned): the embedded half of the test below waits for the journal.
DURABLE_STORE = "durable" in {f.name for f in dataclasses.fields(Settings)}


@pytest.mark.timeout(scaled(300))
@pytest.mark.parametrize(
    "store",
    [
        pytest.param(
            "embedded",
            marks=pytest.mark.skipif(not DURABLE_STORE, reason="the embedded store's journal is not on this branch"),
        ),
        "redis",
    ],
)
async def test_a_callback_outlives_the_server_that_accepted_its_job(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Issue 23: a callback was written only when its job ended, by the server that accepted it. That server is
    # SIGKILLed with one job running and one queued; the restarted server (embedded), or two survivors racing each
    # other (Redis), end or run them, and each callback arrives once.
    redis_url = request.getfixturevalue("redis_url") if store == "redis" else ""
    seen: list[tuple[str, str, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers[IDEMPOTENCY_HEADER], await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook/{name}", hook)
    receiver = TestServer(app, host="127.0.0.1")
    await receiver.start_server()
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "DURABLE": "1",
        "CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "MAX_CONCURRENT_JOBS": "1",
    }
    first = await Instance(redis_url, tmp_path, **env).start()
    survivors: list[Instance] = []
    try:
        async with aiohttp.ClientSession() as session:
            ids = {}
            for name, code in (("running", "import time\ntime.sleep(600)"), ("queued", "print(42)")):
                url = f"http://127.0.0.1:{receiver.port}/hook/{name}"
                ids[name] = (await post_run(session, first, {"language": "python", "code": code, "callbackUrl": url}))[
                    "jobId"
                ]
            async with asyncio.timeout(scaled(60)):
                while (await get_job(session, first, ids["running"]))["status"] != "running":
                    await asyncio.sleep(0.1)
            assert (await get_job(session, first, ids["queued"]))["status"] == "queued"
            first.signal(signal.SIGKILL)
            first.wait()
            for _ in range(2 if redis_url else 1):
                survivors.append(await Instance(redis_url, tmp_path, **env).start())
            async with asyncio.timeout(scaled(180)):
                while len(seen) < 2 or await outstanding(session, survivors):
                    await asyncio.sleep(0.1)
            delivered = sum([await metric(session, s, "callbacks_delivered_total") for s in survivors])
            bodies = {path: (key, orjson.loads(body)) for path, key, body in seen}
            ended = {name: await get_job(session, survivors[0], job_id) for name, job_id in ids.items()}
        assert len(seen) == 2 and delivered == 2  # each callback once, whichever survivor filled and sent it
        for name, job_id in ids.items():
            key, body = bodies[f"/hook/{name}"]
            assert key == body["id"] == job_id and body["status"] == ended[name]["status"]
        assert bodies["/hook/queued"][1]["stdout"] == "42\n"  # run after the death, by a survivor
        assert bodies["/hook/running"][1]["status"] != "completed"  # ended by the death (worker_lost)
    finally:
        first.stop()
        for survivor in survivors:
            survivor.stop()
        await receiver.close()
