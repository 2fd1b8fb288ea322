"""Finish-and-claim on Redis: a finish stores a batch of results and, with the slots they free, claims the next jobs
in the same script call. Fairness, the global cap, per-instance slots, shutdown and leases hold as for CLAIM."""

from __future__ import annotations

import asyncio
from typing import Any

from server.queue import Worker
from server.queue.jobs import ExecutionResult, Job, JobIO, JobStatus
from server.queue.redis.store import RedisStore
from tests.queues import Gate, build_queue, eventually, job, started, status_of
from tests.test_worker import SlowFinish

DONE = ExecutionResult(exit_code=0)


async def _store(url: str) -> RedisStore:
    store = RedisStore(url)
    await store.start()
    return store


async def _claim_one(store: RedisStore, lease_ms: int = 60_000, max_concurrent: int = 10) -> Job:
    [(claimed, _)] = await store.claim(1, lease_ms=lease_ms, max_concurrent=max_concurrent)
    return claimed


async def test_a_finish_claims_by_priority_then_fifo(redis_url: str) -> None:
    store = await _store(redis_url)
    try:
        await store.enqueue(job("first"), max_queue_size=10, max_concurrent=1)
        running = await _claim_one(store, max_concurrent=1)
        for code, priority in [("low-a", 0), ("high-a", 5), ("low-b", 0), ("mid", 2), ("high-b", 5)]:
            await store.enqueue(job(code, priority), max_queue_size=10, max_concurrent=1)
        order = []
        for _ in range(5):
            done, claimed = await store.finish_and_claim(
                [(running, JobStatus.COMPLETED, DONE)], claim=1, lease_ms=60_000, max_concurrent=1
            )
            assert done == [True]
            [(running, _)] = claimed
            order.append(running.code)
        assert order == ["high-a", "high-b", "mid", "low-a", "low-b"]
        assert [e["type"] for e in await store.read_events(running.id, 0)] == ["queued", "running"]
    finally:
        await store.close()


async def test_a_finish_claims_no_more_than_the_cluster_may_run(redis_url: str) -> None:
    mine, theirs = await _store(redis_url), await _store(redis_url)
    try:
        for n in range(6):
            await mine.enqueue(job(f"j{n}"), max_queue_size=10, max_concurrent=3)
        first = await _claim_one(mine, max_concurrent=3)
        await _claim_one(theirs, max_concurrent=3)
        await _claim_one(theirs, max_concurrent=3)
        # One place frees (ours) while two run elsewhere: asking for five takes one.
        done, claimed = await mine.finish_and_claim(
            [(first, JobStatus.COMPLETED, DONE)], claim=5, lease_ms=60_000, max_concurrent=3
        )
        assert done == [True] and len(claimed) == 1
        assert (await mine.stats(max_concurrent=3, max_queue_size=10))["runningCount"] == 3
    finally:
        await mine.close()
        await theirs.close()


async def test_one_call_finishes_a_batch_idempotently_and_refuses_lost_leases(redis_url: str) -> None:
    store, other = await _store(redis_url), await _store(redis_url)
    try:
        for n in range(3):
            await store.enqueue(job(f"j{n}"), max_queue_size=10, max_concurrent=10)
        batch = [claimed for claimed, _ in await store.claim(3, lease_ms=60_000, max_concurrent=10)]
        # The middle one's lease went to another instance meanwhile: that finish alone is refused.
        await store._redis.hset(store._key(f"job:{batch[1].id}"), "worker", other.instance)
        finished = [(j, JobStatus.COMPLETED, DONE) for j in batch]
        done, claimed = await store.finish_and_claim(finished, claim=0, lease_ms=60_000, max_concurrent=10)
        assert done == [True, False, True] and claimed == []
        # A retry after a lost reply applies nothing twice.
        again, _ = await store.finish_and_claim(finished, claim=0, lease_ms=60_000, max_concurrent=10)
        assert again == [True, False, True]
        stats = await store.stats(max_concurrent=10, max_queue_size=10)
        assert stats["totalProcessed"] == stats["totalCompleted"] == 2
        for j in (batch[0], batch[2]):
            assert [e["type"] for e in await store.read_events(j.id, 0)] == ["queued", "running", "completed"]
    finally:
        await store.close()
        await other.close()


async def test_a_job_claimed_by_a_finish_holds_a_lease_and_is_reclaimed_when_its_worker_dies(redis_url: str) -> None:
    dead, survivor = await _store(redis_url), await _store(redis_url)
    try:
        for code in ("a", "b"):
            await dead.enqueue(job(code), max_queue_size=10, max_concurrent=10)
        first = await _claim_one(dead)
        _, claimed = await dead.finish_and_claim(
            [(first, JobStatus.COMPLETED, DONE)], claim=1, lease_ms=200, max_concurrent=10
        )
        [(second, _)] = claimed
        assert second.status is JobStatus.RUNNING
        stored = await dead.get(second.id)
        assert stored is not None and stored.status is JobStatus.RUNNING
        assert await dead._redis.zscore(dead._key("running"), second.id) is not None
        # Its lease is renewed like any other...
        assert await dead.renew([second.id], lease_ms=200) == {}
        await dead.close()  # ...until its instance dies: then it ends as worker_lost.
        await eventually(lambda: survivor.reclaim(retry=False, lease_ms=60_000))
        lost = await survivor.get(second.id)
        assert lost is not None and lost.status is JobStatus.FAILED
        assert lost.result is not None and lost.result.reason == "worker_lost"
    finally:
        await survivor.close()


class _Counting:
    """An executor that records how many of its jobs run at once here."""

    def __init__(self) -> None:
        self.active = 0
        self.most = 0
        self.done = 0

    async def __call__(self, job: Job, io: JobIO) -> ExecutionResult:
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            for _ in range(3):
                await asyncio.sleep(0)
        finally:
            self.active -= 1
            self.done += 1
        return DONE


async def test_a_worker_claiming_as_it_finishes_keeps_to_its_slots(redis_url: str) -> None:
    counting = _Counting()
    queue: Worker = build_queue("redis", redis_url, executor=counting, max_concurrent=50, worker_slots=3)
    await queue.start()
    try:
        jobs = [await queue.submit(job(f"j{n}")) for n in range(40)]
        await eventually(lambda: counting.done == 40)
        for j in jobs:
            assert (await queue.wait(j.id)).status is JobStatus.COMPLETED
        assert 1 <= counting.most <= 3
    finally:
        await queue.close()


async def test_a_finish_during_shutdown_claims_nothing(redis_url: str, gate: Gate) -> None:
    queue: Any = build_queue("redis", redis_url, executor=gate, max_concurrent=5, worker_slots=1)
    await queue.start()
    try:
        running = await queue.submit(job("running"))
        await started(gate, 1)
        waiting = await queue.submit(job("waiting"))
        closing = asyncio.create_task(queue.close(grace_s=30))
        await eventually(lambda: queue._closing)
        gate.finish("running")  # finishes within the grace, with a free slot and a job in line
        await closing
        assert gate.started == ["running"]
        check = await _store(redis_url)
        try:
            assert await status_of(check, running.id) is JobStatus.COMPLETED
            assert await status_of(check, waiting.id) is JobStatus.QUEUED
        finally:
            await check.close()
    finally:
        await queue.close()


async def test_jobs_claimed_by_a_finish_in_flight_at_shutdown_are_stopped_with_the_others(
    redis_url: str, gate: Gate
) -> None:
    # The finish's call left before close() began (it asked for the slot it frees); its reply comes after close()
    # stopped the running jobs. The job it claimed must not run on unstopped while the worker goes away (it would
    # be left `running` in Redis, with nobody renewing its lease).
    queue: Any = build_queue("redis", redis_url, executor=gate, max_concurrent=5, worker_slots=1, lease_timeout_ms=2000)
    held = SlowFinish(queue)
    await queue.start()
    try:
        running = await queue.submit(job("running"))
        await started(gate, 1)
        waiting = await queue.submit(job("waiting"))
        gate.finish("running")
        await held.entered.wait()  # the call is in flight, one slot reserved for it
        closing = asyncio.create_task(queue.close())
        await eventually(lambda: queue._closing)
        held.release.set()
        await closing
        check = await _store(redis_url)
        try:
            assert await status_of(check, running.id) is JobStatus.COMPLETED
            ended = await check.get(waiting.id)
            assert ended is not None and ended.status is JobStatus.CANCELLED, ended
            assert ended.result is not None and ended.result.reason == "shutdown"
        finally:
            await check.close()
    finally:
        await queue.close()


async def test_a_claim_that_empties_the_queue_leaves_no_wake_ups_behind(redis_url: str) -> None:
    """Each enqueue leaves a wake-up for the idle instances; once a claim (or a finish's claim) took every queued job,
    those left over would send an instance to claim nothing, so they go with the last job. While jobs wait, they
    stay."""
    store = await _store(redis_url)
    wake = store._key("wake")
    try:
        for n in range(3):
            await store.enqueue(job(f"j{n}"), max_queue_size=10, max_concurrent=10)
        assert await store._redis.llen(wake) == 3
        first = await _claim_one(store)
        assert await store._redis.llen(wake) == 3  # two jobs still wait: the wake-ups stay for them
        done, claimed = await store.finish_and_claim(
            [(first, JobStatus.COMPLETED, DONE)], claim=1, lease_ms=60_000, max_concurrent=10
        )
        assert done == [True] and len(claimed) == 1
        assert await store._redis.llen(wake) > 0  # one job still waits
        assert len(await store.claim(5, lease_ms=60_000, max_concurrent=10)) == 1
        assert await store._redis.llen(wake) == 0
        await store.enqueue(job("late"), max_queue_size=10, max_concurrent=10)
        assert await store._redis.llen(wake) == 1  # a new job is news again
    finally:
        await store.close()
