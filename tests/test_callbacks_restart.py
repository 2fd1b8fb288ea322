"""Callbacks outlive the process: a real server SIGKILLed with 60 callbacks pending delivers every one after a
restart on the same DATA_DIR (embedded) or the same Redis. Real processes, real sandboxed jobs, a real receiver."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.callbacks import IDEMPOTENCY_HEADER
from tests.conftest import free_port, scaled
from tests.test_cluster import Instance

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
