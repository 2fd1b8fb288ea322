"""One owner of a job's life: the same scripted jobs on the embedded and the Redis store give the same events, field
by field (real sandboxed programs, a real redis-server). Fields a run decides (ids, times, peaks) are compared by
presence and kind; every other field by value."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from server.queue import Worker
from server.queue.events import Event
from server.queue.jobs import Job, JobStatus, Runner, TestCase
from server.queue.redis.store import RedisStore
from tests.conftest import scaled, scaled_ms
from tests.queues import build_queue, eventually

# Decided by the run, not by the rules: compared by presence and JSON kind.
RUN_DEPENDENT = frozenset(
    {
        "jobId",
        "createdAt",
        "startedAt",
        "waitTimeMs",
        "executionTimeMs",
        "compileTimeMs",
        "cpuTimeMs",
        "memoryPeakBytes",
        "compileCpuTimeMs",
        "compileMemoryPeakBytes",
        "timeMs",
    }
)
# Durations in milliseconds: shown to 0.1 ms by every door, so an event carries them so on both stores.
DURATIONS = frozenset({"waitTimeMs", "executionTimeMs", "compileTimeMs", "cpuTimeMs", "compileCpuTimeMs", "timeMs"})
TERMINAL = frozenset(s.value for s in JobStatus if s.finished)

# Every program writes its output in one call: how a run's writes are split into events is timing, not a rule.
SUM = "a, b = map(int, input().split())\nimport os\nos.write(1, b'%d\\n' % (a + b))\n"
Script = Callable[[Worker], Awaitable[list[str]]]


def _job(code: str, **kwargs: Any) -> Job:
    return Job(language="python", code=code, **kwargs)


async def _run(queue: Worker, job: Job) -> str:
    await queue.submit(job)
    await queue.wait(job.id)
    return job.id


async def complete(queue: Worker) -> list[str]:
    return [await _run(queue, _job("import os\nos.write(1, b'hello\\n')"))]


async def fail(queue: Worker) -> list[str]:
    return [await _run(queue, _job("import os\nos.write(2, b'bad\\n')\nraise SystemExit(3)"))]


async def fail_quietly(queue: Worker) -> list[str]:
    return [await _run(queue, _job("raise SystemExit(3)"))]


async def timeout(queue: Worker) -> list[str]:
    return [await _run(queue, _job("import time\ntime.sleep(60)", timeout_ms=scaled_ms(500)))]


async def cancel_queued_then_stop_running(queue: Worker) -> list[str]:
    """One slot: the first job runs (and prints), the second waits and is cancelled, then the first is stopped."""
    running = _job("import os, time\nos.write(1, b'started\\n')\ntime.sleep(60)")
    waiting = _job("print('never')")
    printed = asyncio.Event()
    unsubscribe = queue.events.subscribe(
        lambda e: printed.set() if e["jobId"] == running.id and e["type"] == "output" else None
    )
    try:
        await queue.submit(running)
        await queue.submit(waiting)
        async with asyncio.timeout(scaled(30)):
            await printed.wait()
        await queue.cancel(waiting.id)
        await queue.stop(running.id)
    finally:
        unsubscribe()
    return [running.id, waiting.id]


async def judged_accepted(queue: Worker) -> list[str]:
    cases = [TestCase(stdin="1 2\n", expected_output="3\n"), TestCase(stdin="20 22\n", expected_output="42\n")]
    return [await _run(queue, _job(SUM, tests=cases))]


async def judged_wrong_answer(queue: Worker) -> list[str]:
    cases = [TestCase(stdin="1 2\n", expected_output="3\n"), TestCase(stdin="2 2\n", expected_output="5\n")]
    return [await _run(queue, _job(SUM, tests=cases))]


SCRIPTS: dict[str, Script] = {
    "complete": complete,
    "fail": fail,
    "timeout": timeout,
    "cancel_queued_then_stop_running": cancel_queued_then_stop_running,
    "judged_accepted": judged_accepted,
    "judged_wrong_answer": judged_wrong_answer,
}


@asynccontextmanager
async def _queue(backend: str, url: str, runner: Runner, **kwargs: Any) -> AsyncIterator[Worker]:
    queue = build_queue(backend, url, executor=runner, max_concurrent=1, timeout_grace_ms=scaled_ms(20_000), **kwargs)
    await queue.start()
    try:
        yield queue
    finally:
        await queue.close()


async def _events(backend: str, url: str, runner: Runner, script: Script) -> list[list[Event]]:
    """Every event of the script's jobs as their watchers saw them live, checked against the store's own log."""
    async with _queue(backend, url, runner) as queue:
        seen: list[Event] = []
        unsubscribe = queue.events.subscribe(seen.append)
        ids = await script(queue)
        await eventually(lambda: sum(e["type"] in TERMINAL for e in seen if e["jobId"] in ids) == len(ids))
        unsubscribe()
        live = [[e for e in seen if e["jobId"] == job_id] for job_id in ids]
        assert live == [await queue.read_events(job_id, 0) for job_id in ids]
        return live


def _kind(value: Any) -> str:
    """A value's JSON kind: a number is a number, whether a store wrote 8 or 8.0."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return type(value).__name__
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _differences(embedded: Event, redis: Event) -> list[str]:
    kind = embedded.get("type")
    found = []
    for name in sorted(embedded.keys() ^ redis.keys()):
        where = "the embedded store" if name in embedded else "Redis"
        found.append(f"{kind}: {name} only on {where}")
    for name in sorted(embedded.keys() & redis.keys()):
        a, b = embedded[name], redis[name]
        if name not in RUN_DEPENDENT:
            if a != b:
                found.append(f"{kind}: {name} is {a!r} embedded, {b!r} on Redis")
            continue
        if _kind(a) != _kind(b):
            found.append(f"{kind}: {name} is a {_kind(a)} embedded, a {_kind(b)} on Redis")
        for store, value in (("embedded", a), ("on Redis", b)):
            if name in DURATIONS and isinstance(value, float) and value != round(value, 1):
                found.append(f"{kind}: {name} {value!r} {store} is not rounded to 0.1 ms")
    return found


def _compare(embedded: list[list[Event]], redis: list[list[Event]]) -> list[str]:
    found = []
    for number, (ours, theirs) in enumerate(zip(embedded, redis, strict=True)):
        types = ([e["type"] for e in ours], [e["type"] for e in theirs])
        if types[0] != types[1]:
            found.append(f"job {number}: events {types[0]} embedded, {types[1]} on Redis")
            continue
        for a, b in zip(ours, theirs, strict=True):
            found += [f"job {number}: {d}" for d in _differences(a, b)]
    return found


@pytest.mark.parametrize("name", list(SCRIPTS))
async def test_both_stores_tell_a_job_s_life_alike(name: str, sandbox: Runner, redis_url: str) -> None:
    embedded = await _events("memory", "", sandbox, SCRIPTS[name])
    redis = await _events("redis", redis_url, sandbox, SCRIPTS[name])
    differences = _compare(embedded, redis)
    assert not differences, "\n".join(differences)
    final = [job[-1] for job in embedded]
    assert all(e["type"] in TERMINAL for e in final)


async def test_a_lost_worker_s_terminal_event_has_every_field_a_finished_job_s_has(
    sandbox: Runner, redis_url: str
) -> None:
    # Only a shared store can lose a worker: an instance that claimed a job and died. Its job's terminal event is
    # compared with an embedded failed job's, field by field (reason and status aside: those are the point).
    dead = RedisStore(redis_url)
    async with _queue("redis", redis_url, sandbox, lease_timeout_ms=scaled_ms(600), worker_slots=0) as front:
        seen: list[Event] = []
        front.events.subscribe(seen.append)
        lost = await front.submit(_job("print('never')"))
        claimed = await dead.claim(1, lease_ms=scaled_ms(600), max_concurrent=1)
        assert [job.id for job, _ in claimed] == [lost.id]
        await dead.close()  # the instance dies: nobody renews its lease
        done = await front.wait(lost.id)
        assert done.result is not None and (done.status, done.result.reason) == (JobStatus.FAILED, "worker_lost")
        await eventually(lambda: any(e["type"] in TERMINAL for e in seen if e["jobId"] == lost.id))
        theirs = [e for e in seen if e["jobId"] == lost.id]
    [ours] = await _events("memory", "", sandbox, fail_quietly)
    assert [e["type"] for e in theirs] == [e["type"] for e in ours] == ["queued", "running", "failed"]
    expected = {**ours[-1], "reason": "worker_lost", "exitCode": None}
    for name in ("cpuTimeMs", "memoryPeakBytes", "compileCpuTimeMs", "compileMemoryPeakBytes", "compileTimeMs"):
        expected[name] = None  # it never ran here: nothing was measured
    differences = _compare([ours[:-1] + [expected]], [theirs])
    assert not differences, "\n".join(differences)


# -- a decision made on a stale read is refused: the Redis scripts compare before they persist ------------------


async def test_a_cancel_decided_before_a_claim_changes_nothing(redis_url: str) -> None:
    store = RedisStore(redis_url)
    await store.start()
    try:
        job = await store.enqueue(_job("print(1)"), max_queue_size=10, max_concurrent=1)
        read, now = await store._read(job.id)
        assert read is not None and read.status is JobStatus.QUEUED
        [(claimed, _)] = await store.claim(1, lease_ms=60_000, max_concurrent=1)  # the claim wins the race
        assert not await store._cancel_queued(read, "cancelled", now)
        assert await store.get(job.id) is not None and claimed.status is JobStatus.RUNNING
        assert [e["type"] for e in await store.read_events(job.id, 0)] == ["queued", "running"]
        # Decided again from what is there now: a running job is not cancelled, it is asked to stop.
        status, current = await store.cancel(job.id, "cancelled")
        assert status == "running" and current is not None and current.status is JobStatus.RUNNING
    finally:
        await store.close()


async def test_a_lease_renewed_after_it_was_found_expired_is_not_reclaimed(redis_url: str) -> None:
    store = RedisStore(redis_url)
    await store.start()
    try:
        job = await store.enqueue(_job("print(1)"), max_queue_size=10, max_concurrent=1)
        await store.claim(1, lease_ms=1, max_concurrent=1)
        found: list[Any] = []

        async def expired() -> bool:
            # The instances' lease (60 s) judges whether Redis stalled (a gap over half of it moves every lease on);
            # this job's own lease was 1 ms. With 1 here every call would look like a stall and heal it.
            keys = store._keys("running", "heartbeat")
            _, hashes = await store._scripts["EXPIRED"](keys=keys, args=[60_000, "conveyor"])
            found[:] = hashes
            return bool(hashes)

        await eventually(expired)
        data = dict(zip(found[0][::2], found[0][1::2], strict=True))
        await store.renew([job.id], lease_ms=60_000)  # the worker was slow, not dead
        stale = await store.get(job.id)
        assert stale is not None
        assert not await store._reclaim_one(stale, data, 0.0, retry=False)
        assert (await store.get(job.id)).status is JobStatus.RUNNING  # type: ignore[union-attr]
    finally:
        await store.close()
