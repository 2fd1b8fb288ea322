"""Several real server processes on one real Redis: one queue, one rate limit, one event stream."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.servers import ServerProcess

TERMINAL = {"completed", "failed", "timeout", "cancelled"}
SLEEP = {"language": "python", "code": "import time\nprint('started', flush=True)\ntime.sleep(60)"}


class Instance(ServerProcess):
    """One `python -m server` process on `redis_url` (empty: the embedded store)."""

    def __init__(self, redis_url: str, tmp_path: Path, **env: str) -> None:
        super().__init__(
            tmp_path,
            **{
                "REDIS_URL": redis_url,
                "RATE_LIMIT_REQUESTS": "1000",
                "RATE_LIMIT_READ_REQUESTS": "100000",
                "LEASE_TIMEOUT_MS": "2000",
                "SHUTDOWN_GRACE_MS": "0",
                "JOB_TIMEOUT_MS": "60000",
                "LOG_LEVEL": "warning",
                **env,
            },
        )


@pytest.fixture
async def cluster(redis_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., Instance]]:
    instances: list[Instance] = []

    def make(**env: str) -> Instance:
        instance = Instance(redis_url, tmp_path, **env)
        instances.append(instance)
        return instance

    yield make
    for instance in instances:
        instance.stop()


async def post_run(session: aiohttp.ClientSession, instance: Instance, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(f"{instance.url}/run?wait=false", json=body) as resp:
        assert resp.status == 202, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


async def get_job(session: aiohttp.ClientSession, instance: Instance, job_id: str) -> dict[str, Any]:
    async with session.get(f"{instance.url}/queue/job/{job_id}") as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


async def wait_status(
    session: aiohttp.ClientSession, instance: Instance, job_id: str, statuses: set[str], timeout: float = 30
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while (job := await get_job(session, instance, job_id))["status"] not in statuses:
            await asyncio.sleep(0.05)
    return job


async def test_submit_on_a_watch_and_stop_on_a_run_on_b(cluster: Callable[..., Instance]) -> None:
    # Started side by side: a start probes every language, the longest wait of these tests.
    front, worker = await asyncio.gather(
        cluster(WORKER_SLOTS="0").start(),  # executes nothing: every job runs on the worker
        cluster(WORKER_SLOTS="2").start(),
    )
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{front.url}/ws") as ws:
        assert orjson.loads((await ws.receive()).data)["type"] == "hello"
        code = "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.2)"
        await ws.send_json({"type": "run", "language": "python", "code": code})
        messages: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while not messages or messages[-1]["type"] not in TERMINAL:
                messages.append(orjson.loads((await ws.receive()).data))
        kinds = [m["type"] for m in messages]
        assert kinds[:2] == ["queued", "running"] and kinds[-1] == "completed"
        assert "".join(m["data"] for m in messages if m["type"] == "output") == "tick 0\ntick 1\ntick 2\n"
        seqs = [m["seq"] for m in messages]
        assert seqs == sorted(seqs)
        # The job ran on the worker, and both instances answer for it.
        job_id = messages[0]["jobId"]
        assert (await get_job(session, worker, job_id))["stdout"] == "tick 0\ntick 1\ntick 2\n"

        # Stop sent to the front instance kills the job on the worker.
        await ws.send_json({"type": "run", "language": "python", "code": SLEEP["code"]})
        loop_id = orjson.loads((await ws.receive()).data)["jobId"]
        async with asyncio.timeout(30):
            while orjson.loads((await ws.receive()).data).get("type") != "output":
                pass
        await ws.send_json({"type": "stop", "jobId": loop_id})
        async with asyncio.timeout(30):
            while (final := orjson.loads((await ws.receive()).data))["type"] not in TERMINAL:
                pass
        assert final["type"] == "cancelled" and final["reason"] == "stopped"
        assert (await get_job(session, worker, loop_id))["status"] == "cancelled"


async def test_the_rate_limit_is_shared(cluster: Callable[..., Instance]) -> None:
    a, b = await asyncio.gather(cluster(RATE_LIMIT_REQUESTS="3").start(), cluster(RATE_LIMIT_REQUESTS="3").start())
    hello = {"language": "bash", "code": "echo hi"}
    async with aiohttp.ClientSession() as session:
        statuses = []
        for instance in (a, b, a, b):
            async with session.post(f"{instance.url}/run?wait=false", json=hello) as resp:
                statuses.append(resp.status)
        assert statuses == [202, 202, 202, 429]


async def test_a_killed_worker_is_detected_within_the_lease(cluster: Callable[..., Instance]) -> None:
    front, worker = await asyncio.gather(cluster(WORKER_SLOTS="0").start(), cluster(WORKER_SLOTS="1").start())
    async with aiohttp.ClientSession() as session:
        job_id = (await post_run(session, front, SLEEP))["jobId"]
        await wait_status(session, front, job_id, {"running"})
        worker.signal(signal.SIGKILL)
        worker.wait()
        killed = time.monotonic()
        job = await wait_status(session, front, job_id, TERMINAL, timeout=20)
        # LEASE_TIMEOUT_MS=2000, swept every third of it: never stuck `running`.
        assert time.monotonic() - killed < 2 + 2 / 3 + 2
        assert (job["status"], job["reason"]) == ("failed", "worker_lost")


async def test_a_lost_job_is_retried_once_when_asked(cluster: Callable[..., Instance]) -> None:
    # A cluster-wide choice: every instance's sweeper may be the one that finds the lost job.
    front, doomed = await asyncio.gather(
        cluster(WORKER_SLOTS="0", RETRY_LOST_JOBS="1").start(), cluster(WORKER_SLOTS="1", RETRY_LOST_JOBS="1").start()
    )
    async with aiohttp.ClientSession() as session:
        job_id = (await post_run(session, front, {"language": "bash", "code": "sleep 1; echo done"}))["jobId"]
        await wait_status(session, front, job_id, {"running"})
        doomed.signal(signal.SIGKILL)
        doomed.wait()
        await cluster(WORKER_SLOTS="1", RETRY_LOST_JOBS="1").start()
        job = await wait_status(session, front, job_id, TERMINAL, timeout=30)
        assert (job["status"], job["stdout"]) == ("completed", "done\n")


async def test_queued_jobs_survive_a_restart_and_run_once(cluster: Callable[..., Instance]) -> None:
    front = await cluster(WORKER_SLOTS="0").start()
    async with aiohttp.ClientSession() as session:
        ids = [
            (await post_run(session, front, {"language": "bash", "code": f"echo job {i}"}))["jobId"] for i in range(5)
        ]
        front.signal(signal.SIGTERM)
        assert front.wait() == 0
        # Every instance was down; new ones find the queue as it was.
        worker, _ = await asyncio.gather(cluster(WORKER_SLOTS="2").start(), cluster(WORKER_SLOTS="2").start())
        for i, job_id in enumerate(ids):
            job = await wait_status(session, worker, job_id, TERMINAL)
            assert (job["status"], job["stdout"]) == ("completed", f"job {i}\n")
        async with session.get(f"{worker.url}/queue/status") as resp:
            stats = await resp.json()
        # Each ran exactly once: five processed, nothing queued or running.
        assert (stats["totalQueued"], stats["totalProcessed"], stats["queueLength"], stats["runningCount"]) == (
            5,
            5,
            0,
            0,
        )
