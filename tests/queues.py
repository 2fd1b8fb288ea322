"""Queue test helpers shared by the queue and worker suites: a gated fake executor, queue builders, waits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from server.queue import MemoryStore, Worker
from server.queue.jobs import ExecutionResult, Job, JobIO, JobStatus
from server.queue.redis.store import RedisStore


class Gate:
    """A fake executor whose jobs run until released; records the order they started in."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.cancelled: list[str] = []
        self.results: dict[str, ExecutionResult] = {}

    async def __call__(self, job: Job, io: JobIO) -> ExecutionResult:
        self.started.append(job.code)
        event = self.release.setdefault(job.code, asyncio.Event())
        try:
            await event.wait()
        except asyncio.CancelledError:
            self.cancelled.append(job.code)
            raise
        return self.results.get(job.code, ExecutionResult(exit_code=0, stdout=job.code))

    def finish(self, code: str, result: ExecutionResult | None = None) -> None:
        if result is not None:
            self.results[code] = result
        self.release.setdefault(code, asyncio.Event()).set()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


STORE_ARGS = ("retention_seconds", "retention_count", "retention_bytes", "clock", "timeout_ms", "pool_size")


def build_queue(backend: str, url: str = "", **kwargs: Any) -> Worker:
    """A worker over a fresh store of `backend`; store options and worker options in one set of keywords."""
    store_kwargs = {name: kwargs.pop(name) for name in STORE_ARGS if name in kwargs}
    store: Any
    if backend == "redis":
        store_kwargs.pop("clock", None)
        store = RedisStore(url, **store_kwargs)
    else:
        store_kwargs.pop("timeout_ms", None)
        store_kwargs.pop("pool_size", None)
        store = MemoryStore(**store_kwargs)
    if "worker_slots" in kwargs:
        kwargs["slots"] = kwargs.pop("worker_slots")
    return Worker(store, **kwargs)


def memory_queue(**kwargs: Any) -> Worker:
    return build_queue("memory", **kwargs)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def eventually(predicate: Callable[[], Any], timeout: float = 10) -> None:
    """Wait until `predicate()` (sync or async) is true; the Redis backend acts through its own tasks."""
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.01)


async def status_of(queue: Any, job_id: str) -> JobStatus:
    job = await queue.get(job_id)
    assert job is not None
    return job.status  # type: ignore[no-any-return]


def job(code: str, priority: int = 0, **kwargs: Any) -> Job:
    return Job(language="python", code=code, priority=priority, **kwargs)


async def started(gate: Gate, n: int) -> None:
    await eventually(lambda: len(gate.started) >= n)
