"""The dashboard's job list and instances view: the stores' listing and heartbeat records (both backends, fake
executor), and GET /queue/jobs and /queue/instances on the real sandbox, checked against openapi.json."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.hub.hub import HUB
from server.queue.jobs import ExecutionResult
from server.queue.redis import store as redis_store
from server.queue.redis.store import RedisStore
from tests.clients import call, wait_for_status
from tests.conftest import AppClientFactory, keys_file
from tests.queues import Gate, build_queue, eventually, job, started

ADMIN = "cvy_listing-admin-key-0123456789"


async def test_listing_is_every_active_job_and_the_newest_finished_without_output(
    make_queue: Callable[..., Any], gate: Gate
) -> None:
    queue = await make_queue(max_concurrent=1)
    done = []
    for i in range(4):
        code = f"done-{i}"
        gate.finish(code, ExecutionResult(exit_code=i, stdout="OUTPUT" * 1000, reason="runtime_error" if i else None))
        done.append(await queue.wait((await queue.submit(job(code))).id))
    running = await queue.submit(job("running"))
    await started(gate, 5)
    queued = await queue.submit(job("queued", priority=3))
    listed = {j.id: j for j in await queue.listing(2)}
    # The window: every active job, and past it only the newest finished ones.
    assert set(listed) == {running.id, queued.id, done[3].id, done[2].id}
    for original in (done[2], done[3], running, queued):
        stored = await queue.get(original.id)
        assert listed[original.id].summary() == stored.summary()
    assert listed[done[3].id].result.exit_code == 3 and listed[done[3].id].result.reason == "runtime_error"
    gate.finish("running")


async def test_redis_instances_beat_expire_and_stay_bounded(
    redis_url: str, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long leases: the only heartbeats are the ones at start and the ones this test makes.
    one = build_queue("redis", redis_url, executor=gate, max_concurrent=4, slots=1, lease_timeout_ms=600_000)
    two = build_queue("redis", redis_url, executor=gate, max_concurrent=4, slots=3, lease_timeout_ms=600_000)
    beating = build_queue("redis", redis_url, executor=gate, max_concurrent=4, slots=0, lease_timeout_ms=300)
    await one.start()
    await two.start()
    ghost: RedisStore | None = None
    try:
        first = await one.submit(job("held"))
        await started(gate, 1)
        seen = {r["name"]: r for r in await one.instances()}
        names = (one.store.instance, two.store.instance)
        assert set(seen) == set(names)
        # Slots and running jobs per instance, whichever instance is asked.
        holder = next(name for name in names if seen[name]["running"])
        assert seen[holder]["running"] == [first.id] and seen[holder]["slots"] in (1, 3)
        assert [r["here"] for r in await two.instances() if r["name"] == two.store.instance] == [True]
        gate.finish("held")
        await one.wait(first.id)

        # The lease loop beats on its own (every third of a lease: here 100 ms).
        await beating.start()

        async def beat_of() -> float:
            return next(r["lastHeartbeat"] for r in await one.instances() if r["name"] == beating.store.instance)

        first_beat = await beat_of()

        async def moved() -> bool:
            return await beat_of() > first_beat

        await eventually(moved)
        await beating.close()

        # An instance that stops beating is gone one TTL after its last beat (here 1 ms), at the next beat.
        ghost = RedisStore(redis_url)
        await ghost.start()
        await ghost.heartbeat(slots=2, ttl_ms=60_000)
        assert ghost.instance in {r["name"] for r in await one.instances()}
        await asyncio.sleep(0.01)
        await one.store.heartbeat(slots=1, ttl_ms=1)
        assert ghost.instance not in {r["name"] for r in await one.instances()}

        # Past MAX_INSTANCES the stalest records go: many instances (or restarts) never grow the keys.
        # (A beat's score is its millisecond: beats a millisecond apart, or ties are trimmed by name.)
        monkeypatch.setattr(redis_store, "MAX_INSTANCES", 2)
        for n in range(4):
            await asyncio.sleep(0.002)
            ghost.instance = f"ghost-{n}"
            await ghost.heartbeat(slots=1, ttl_ms=60_000)
        assert {r["name"] for r in await one.instances()} == {"ghost-2", "ghost-3"}
        await ghost.close()
        ghost = None

        # A closing instance takes its record with it.
        monkeypatch.setattr(redis_store, "MAX_INSTANCES", 256)
        await two.store.heartbeat(slots=3, ttl_ms=60_000)
        assert two.store.instance in {r["name"] for r in await one.instances()}
        await two.close()
        assert two.store.instance not in {r["name"] for r in await one.instances()}
    finally:
        if ghost is not None:
            await ghost.close()
        await one.close()
        await two.close()
        await beating.close()  # closing twice, or a queue never started, is a no-op


# -- GET /queue/jobs and /queue/instances -----------------------------------------------------------------------


@pytest.fixture
async def lister(app_client: AppClientFactory, tmp_path: Path) -> TestClient[Any, Any]:
    return await app_client(api_keys_file=keys_file(tmp_path, {"ops": (ADMIN, True)}), max_concurrent_jobs=1)


ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


async def test_job_list_pages_sorts_and_counts(lister: TestClient[Any, Any]) -> None:
    client = lister
    ids = {}
    for name, language, code in (("ok", "bash", "true"), ("bad", "bash", "exit 3"), ("py", "python", "print(1)")):
        ids[name] = (await call(client, "POST", "/run", 200, json={"language": language, "code": code}))["id"]
    sleeper = await call(client, "POST", "/run?wait=false", 202, json={"language": "bash", "code": "sleep 60"})
    await wait_for_status(client, sleeper["jobId"], {"running"})
    waiting = await call(client, "POST", "/run?wait=false", 202, json={"language": "bash", "code": "true"})
    handles = client.app[HUB].handles

    page = await call(client, "GET", "/queue/jobs?pageSize=2", 200)
    assert page["counts"] == {
        "queued": 1, "running": 1, "completed": 2, "failed": 1, "timeout": 0, "cancelled": 0, "all": 5,
    }  # fmt: skip
    assert page["total"] == 5 and page["page"] == 1 and page["languages"] == ["bash", "python"]
    # Newest first by default; a viewer gets handles, never ids.
    assert [j["handle"] for j in page["jobs"]] == [handles(waiting["jobId"]), handles(sleeper["jobId"])]
    assert all("id" not in j for j in page["jobs"])
    last = await call(client, "GET", "/queue/jobs?pageSize=2&page=3", 200)
    assert [j["handle"] for j in last["jobs"]] == [handles(ids["ok"])]
    assert (await call(client, "GET", "/queue/jobs?pageSize=2&page=4", 200))["jobs"] == []

    failed = await call(client, "GET", "/queue/jobs?status=failed", 200)
    assert [j["handle"] for j in failed["jobs"]] == [handles(ids["bad"])] and failed["total"] == 1
    assert failed["jobs"][0]["exitCode"] == 3 and failed["jobs"][0]["reason"] == "runtime_error"
    python = await call(client, "GET", "/queue/jobs?language=python", 200)
    assert python["counts"]["all"] == 1 and python["counts"]["completed"] == 1
    # Run time: queued and running jobs have none and come last in either order.
    for order in ("asc", "desc"):
        ranked = await call(client, "GET", f"/queue/jobs?sort=executionTimeMs&order={order}", 200)
        assert {j["handle"] for j in ranked["jobs"][3:]} == {handles(waiting["jobId"]), handles(sleeper["jobId"])}
        times = [j["executionTimeMs"] for j in ranked["jobs"][:3]]
        assert times == sorted(times, reverse=order == "desc")

    # Search: a viewer by handle only (an id's first digits would be a probe), an admin by id too.
    assert (await call(client, "GET", f"/queue/jobs?q={handles(ids['py'])[:6]}", 200))["total"] == 1
    assert (await call(client, "GET", f"/queue/jobs?q={ids['py'][:10]}", 200))["total"] == 0
    mine = await call(client, "GET", f"/queue/jobs?q={ids['py'][:10]}", 200, headers=ADMIN_HEADERS)
    assert [j["id"] for j in mine["jobs"]] == [ids["py"]]

    for query, field in (
        ("status=lost", "status"),
        ("sort=code", "sort"),
        ("order=up", "order"),
        ("page=0", "page"),
        ("page=x", "page"),
        ("pageSize=101", "pageSize"),  # the bound on a page
        ("pageSize=0", "pageSize"),
        ("q=" + "a" * 65, "q"),
    ):
        error = await call(client, "GET", f"/queue/jobs?{query}", 400)
        assert error["error"] == "Bad request" and error["field"] == field
    await call(client, "POST", f"/queue/job/{sleeper['jobId']}/stop", 200, headers=ADMIN_HEADERS)


async def test_instances_in_memory_mode_is_this_one(lister: TestClient[Any, Any]) -> None:
    client = lister
    sleeper = await call(client, "POST", "/run?wait=false", 202, json={"language": "bash", "code": "sleep 60"})
    await wait_for_status(client, sleeper["jobId"], {"running"})
    body = await call(client, "GET", "/queue/instances", 200)
    assert body["backend"] == "memory"
    [instance] = body["instances"]
    assert instance["slots"] == 1 and instance["here"] and instance["name"].startswith("memory:")
    assert instance["running"] == [{"handle": client.app[HUB].handles(sleeper["jobId"])}]
    admin = await call(client, "GET", "/queue/instances", 200, headers=ADMIN_HEADERS)
    assert admin["instances"][0]["running"][0]["id"] == sleeper["jobId"]
    await call(client, "POST", f"/queue/job/{sleeper['jobId']}/stop", 200, headers=ADMIN_HEADERS)
