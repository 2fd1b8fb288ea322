"""The contenders of `bench_redis`: for Conveyor, SAQ and arq, a consumer (its worker, started, counting the jobs it
finished) and a producer (an enqueue function), each used in a process of its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

from server.queue import Worker
from server.queue.jobs import ExecutionResult, Job, JobIO, JobStatus
from server.queue.redis.store import RedisStore
from server.queue.worker.handoff import Finished

SLOTS = 32  # jobs one worker process runs at once: Conveyor worker_slots, SAQ concurrency, arq max_jobs
MAX_CONCURRENT = 64  # Conveyor's global cap: two instances x SLOTS, so the cap never binds
PREFIX = "bench"
NOOP_RESULT = ExecutionResult(exit_code=0)

Consumer = Callable[[str, int, Callable[[], None]], AbstractAsyncContextManager[None]]
Producer = Callable[[str, int], AbstractAsyncContextManager[Callable[[], Any]]]


async def noop(job: Job, io: JobIO) -> ExecutionResult:
    return NOOP_RESULT


class _CountingStore(RedisStore):
    """The Redis store, counting the jobs it stored as completed (as SAQ's `after_process` and arq's
    `after_job_end` run once the result is stored). Not the `completed` events: the shared stream is for live
    readers, and one that falls 10,000 entries behind (a consumer starved of CPU) misses the oldest."""

    def __init__(self, url: str, done: Callable[[], None]) -> None:
        super().__init__(url, prefix=PREFIX)
        self._done = done

    async def finish_and_claim(
        self, finished: list[Finished], *, claim: int, lease_ms: int, max_concurrent: int
    ) -> tuple[list[bool], list[tuple[Job, str | None]]]:
        flags, claimed = await super().finish_and_claim(
            finished, claim=claim, lease_ms=lease_ms, max_concurrent=max_concurrent
        )
        for (_, status, _), applied in zip(finished, flags, strict=True):
            if applied and status is JobStatus.COMPLETED:
                self._done()
        return flags, claimed


@asynccontextmanager
async def conveyor_consumer(url: str, n: int, done: Callable[[], None]) -> AsyncIterator[None]:
    """One Conveyor instance: a worker on the Redis store; a job counts once its result is stored."""
    queue = Worker(
        _CountingStore(url, done), executor=noop, max_concurrent=MAX_CONCURRENT, max_queue_size=n, slots=SLOTS
    )
    await queue.start()
    try:
        yield
    finally:
        await queue.close()


@asynccontextmanager
async def conveyor_producer(url: str, n: int) -> AsyncIterator[Callable[[], Any]]:
    """The store's enqueue alone, as a web instance's submit calls it (no worker, no event reader started)."""
    store = RedisStore(url, prefix=PREFIX)
    try:
        yield lambda: store.enqueue(Job(language="python", code=""), max_queue_size=n, max_concurrent=MAX_CONCURRENT)
    finally:
        await store.close()


async def saq_noop(ctx: Any) -> None:
    return None


@asynccontextmanager
async def saq_consumer(url: str, n: int, done: Callable[[], None]) -> AsyncIterator[None]:
    """SAQ's documented use: `Queue.from_url`, a `Worker(queue, functions, concurrency=...)` started in-process."""
    from saq import Queue
    from saq import Worker as SaqWorker
    from saq.job import Status

    logging.getLogger("saq").setLevel(logging.ERROR)  # its stop() warns that it cancelled the idle dequeuers
    queue = Queue.from_url(url)

    async def after_process(ctx: Any) -> None:  # runs after the job's result is stored
        if ctx["job"].status == Status.COMPLETE:
            done()

    worker = SaqWorker(queue, functions=[saq_noop], concurrency=SLOTS, after_process=after_process)
    await queue.connect()
    task = asyncio.create_task(worker.start())
    await asyncio.sleep(0.2)  # let the worker's dequeuers block on BLMOVE, as Conveyor's claim loop is up
    try:
        yield
    finally:
        await worker.stop()
        await task
        await queue.disconnect()


@asynccontextmanager
async def saq_producer(url: str, n: int) -> AsyncIterator[Callable[[], Any]]:
    from saq import Queue

    queue = Queue.from_url(url)
    await queue.connect()
    try:
        yield lambda: queue.enqueue("saq_noop")
    finally:
        await queue.disconnect()


async def arq_noop(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> None:
    return None


@asynccontextmanager
async def arq_consumer(url: str, n: int, done: Callable[[], None]) -> AsyncIterator[None]:
    """arq's documented use: a `Worker(functions, max_jobs=...)` run in-process."""
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker as ArqWorker

    pool = await create_pool(RedisSettings.from_dsn(url))

    async def after_job_end(ctx: dict[Any, Any]) -> None:  # runs after the result is stored
        done()

    worker = ArqWorker(
        functions=[arq_noop], redis_pool=pool, max_jobs=SLOTS, handle_signals=False, after_job_end=after_job_end
    )
    task = asyncio.create_task(worker.async_run())
    await asyncio.sleep(0.2)
    try:
        yield
    finally:
        await worker.close()  # cancels the worker's main task and closes the pool
        with suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def arq_producer(url: str, n: int) -> AsyncIterator[Callable[[], Any]]:
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        yield lambda: pool.enqueue_job("arq_noop")
    finally:
        await pool.aclose()


@dataclass(frozen=True, slots=True)
class Contender:
    consumer: Consumer
    producer: Producer
    consumers: int = 1


CONTENDERS: dict[str, Contender] = {
    "conveyor-1": Contender(conveyor_consumer, conveyor_producer),
    "conveyor-2": Contender(conveyor_consumer, conveyor_producer, consumers=2),
    "saq": Contender(saq_consumer, saq_producer),
    "arq": Contender(arq_consumer, arq_producer),
}
