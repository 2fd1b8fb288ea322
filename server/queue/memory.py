"""The embedded queue: a heap of waiting jobs, a task per running job, retention of finished ones."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from ..errors import Conflict, NotFound, QueueFull, ShuttingDown
from ..events import EventEmitter
from ..jobs import ExecutionResult, Executor, Job, JobIO, JobStatus, Stream, now_ms
from ..stats import QueueStats
from .base import OutputCoalescer, execute

logger = logging.getLogger(__name__)

RETENTION_SWEEP_SECONDS = 5.0


class MemoryQueue:
    """Priority queue in one process.

    Waiting jobs sit in a heap keyed (-priority, arrival): higher priority first, FIFO within one priority,
    O(log n) enqueue and dequeue. Cancelled entries are removed lazily. A freed slot starts the next job at once:
    every transition calls `_dispatch`, there is no polling loop.
    """

    def __init__(
        self,
        *,
        executor: Executor,
        max_concurrent: int = 5,
        max_queue_size: int = 100,
        retention_seconds: float = 3600.0,
        retention_count: int = 10_000,
        timeout_grace_ms: float = 0.0,
        events: EventEmitter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.events = events if events is not None else EventEmitter()
        self.max_concurrent = max_concurrent
        self.max_queue_size = max_queue_size
        self._executor = executor
        self._retention_seconds = retention_seconds
        self._retention_count = retention_count
        self._timeout_grace_s = timeout_grace_ms / 1000.0
        self._clock = clock
        self._stats = QueueStats(clock=clock)
        self._heap: list[tuple[int, int, Job]] = []
        self._arrival = itertools.count()
        self._queued = 0  # live (not cancelled) entries in the heap
        self._active: dict[str, Job] = {}  # queued and running, by id
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stdin: dict[str, asyncio.Queue[bytes | None]] = {}
        self._stop_reasons: dict[str, str] = {}
        self._finished: OrderedDict[str, Job] = OrderedDict()
        self._finished_clock: dict[str, float] = {}
        self._waiters: dict[str, list[asyncio.Future[Job]]] = {}
        self._closing = False
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="conveyor-retention")

    async def close(self, grace_s: float = 0.0) -> None:
        self._closing = True
        for job in [j for j in self._active.values() if j.status is JobStatus.QUEUED]:
            self._cancel_queued(job, "shutdown")
        if self._running and grace_s > 0:
            await asyncio.wait(list(self._running.values()), timeout=grace_s)
        for job_id in list(self._running):
            self._stop_reasons[job_id] = "shutdown"
            self._running[job_id].cancel()
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with suppress(asyncio.CancelledError):
                await self._sweeper

    # -- submission and lookup -------------------------------------------------------------------------------

    async def submit(self, job: Job) -> Job:
        if self._closing:
            raise ShuttingDown("The server is shutting down; try another instance or retry shortly.", retryAfter=5)
        if self._queued >= self.max_queue_size and len(self._running) >= self.max_concurrent:
            self._stats.on_rejected()
            retry = self._retry_after()
            raise QueueFull(
                f"The queue holds {self._queued} jobs, its maximum. Try again in {retry} seconds.",
                headers={"Retry-After": str(retry)},
                retryAfter=retry,
            )
        job.status = JobStatus.QUEUED
        self._active[job.id] = job
        heapq.heappush(self._heap, (-job.priority, next(self._arrival), job))
        self._queued += 1
        self._stats.on_queued()
        self.events.emit(
            {
                "type": "queued",
                "jobId": job.id,
                "seq": job.next_seq(),
                "language": job.language,
                "priority": job.priority,
                "createdAt": job.created_at,
            }
        )
        self._dispatch()
        return job

    async def get(self, job_id: str) -> Job | None:
        return self._active.get(job_id) or self._finished.get(job_id)

    async def position(self, job: Job) -> int | None:
        return self.position_now(job)

    def position_now(self, job: Job) -> int | None:
        """1-based place in line. O(n): asked for one job at a time, never on the dispatch path."""
        if job.status is not JobStatus.QUEUED:
            return None
        key = None
        for prio, arrival, entry in self._heap:
            if entry is job:
                key = (prio, arrival)
                break
        if key is None:
            return None
        return 1 + sum(1 for p, a, j in self._heap if (p, a) < key and j.status is JobStatus.QUEUED)

    async def wait(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job is None:
            raise NotFound(f"No job with id {job_id!r}.")
        if job.status.finished:
            return job
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        try:
            return await future
        finally:
            waiters = self._waiters.get(job_id)
            if waiters and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[job_id]

    async def recent(self, limit: int = 100) -> list[Job]:
        active = sorted(self._active.values(), key=lambda j: j.created_at)
        finished = list(self._finished.values())[-limit:]
        return (finished + active)[-limit:]

    async def stats(self) -> dict[str, Any]:
        return self.stats_now()

    def stats_now(self) -> dict[str, Any]:
        return self._stats.snapshot(
            queue_length=self._queued,
            running=len(self._running),
            max_concurrent=self.max_concurrent,
            max_queue_size=self.max_queue_size,
        )

    def note_rate_limited(self) -> None:
        self._stats.on_rate_limited()

    # -- cancellation and input ------------------------------------------------------------------------------

    async def cancel(self, job_id: str) -> Job:
        job = await self._require(job_id)
        if job.status is not JobStatus.QUEUED:
            raise Conflict(
                f"Job {job_id} is {job.status.value}; only queued jobs can be cancelled.", status=job.status.value
            )
        self._cancel_queued(job, "cancelled")
        return job

    async def stop(self, job_id: str, reason: str = "stopped") -> Job:
        job = await self._require(job_id)
        if job.status is JobStatus.QUEUED:
            self._cancel_queued(job, reason)
            return job
        task = self._running.get(job_id)
        if task is None:
            raise Conflict(f"Job {job_id} is already {job.status.value}.", status=job.status.value)
        self._stop_reasons[job_id] = reason
        task.cancel()
        # Wait for the executor to tear the process tree down, so the caller sees the final status.
        await asyncio.wait([task])
        return job

    async def write_stdin(self, job_id: str, data: bytes | None) -> None:
        channel = self._stdin.get(job_id)
        if channel is None:
            job = await self._require(job_id)
            raise Conflict(f"Job {job.id} is {job.status.value} and does not accept input.", status=job.status.value)
        channel.put_nowait(data)

    async def _require(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job is None:
            raise NotFound(f"No job with id {job_id!r}.")
        return job

    def _cancel_queued(self, job: Job, reason: str) -> None:
        job.status = JobStatus.CANCELLED
        job.result = ExecutionResult(reason=reason)
        self._queued -= 1
        # Lazy removal: compact once dead entries dominate, so the heap stays O(live).
        if len(self._heap) > 64 and len(self._heap) > 2 * self._queued:
            self._heap = [entry for entry in self._heap if entry[2].status is JobStatus.QUEUED]
            heapq.heapify(self._heap)
        self._finish(job)

    # -- running ---------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while len(self._running) < self.max_concurrent and self._queued:
            _, _, job = heapq.heappop(self._heap)
            if job.status is not JobStatus.QUEUED:
                continue
            self._queued -= 1
            job.status = JobStatus.RUNNING
            job.started_at = now_ms()
            self._stats.on_started(job)
            if job.interactive:
                channel: asyncio.Queue[bytes | None] = asyncio.Queue()
                if job.stdin:  # what came with the submission goes first, then live input
                    channel.put_nowait(job.stdin.encode())
                self._stdin[job.id] = channel
            self._running[job.id] = asyncio.create_task(self._run(job), name=f"job-{job.id}")
            self.events.emit(
                {
                    "type": "running",
                    "jobId": job.id,
                    "seq": job.next_seq(),
                    "startedAt": job.started_at,
                    "waitTimeMs": job.wait_time_ms,
                }
            )

    async def _run(self, job: Job) -> None:
        def on_output(stream: Stream, data: str) -> None:
            if data:
                self.events.emit(
                    {"type": "output", "jobId": job.id, "seq": job.next_seq(), "stream": stream, "data": data}
                )

        coalescer = OutputCoalescer(on_output)
        io = JobIO(on_output=coalescer, stdin=self._stdin.get(job.id))
        try:
            status, result = await execute(
                self._executor, job, io, self._timeout_grace_s, lambda: self._stop_reasons.pop(job.id, None)
            )
            coalescer.flush()
        finally:
            self._running.pop(job.id, None)
            self._stdin.pop(job.id, None)
        self._stop_reasons.pop(job.id, None)
        job.status = status
        job.result = result
        self._finish(job)
        self._dispatch()

    def _finish(self, job: Job) -> None:
        job.finished_at = now_ms()
        self._active.pop(job.id, None)
        self._stats.on_finished(job)
        self._finished[job.id] = job
        self._finished_clock[job.id] = self._clock()
        self._evict()
        result = job.result or ExecutionResult()
        self.events.emit(
            {
                "type": job.status.value,
                "jobId": job.id,
                "seq": job.next_seq(),
                "exitCode": result.exit_code,
                "signal": result.signal,
                "reason": result.reason,
                "truncated": result.truncated,
                "waitTimeMs": job.wait_time_ms,
                "executionTimeMs": job.execution_time_ms,
                "compileTimeMs": result.compile_time_ms,
                **result.usage(),
                "language": job.language,
            }
        )
        for future in self._waiters.pop(job.id, ()):
            if not future.done():
                future.set_result(job)

    # -- retention -------------------------------------------------------------------------------------------

    def _evict(self) -> None:
        finished, clocks = self._finished, self._finished_clock
        while len(finished) > self._retention_count:
            job_id, _ = finished.popitem(last=False)
            clocks.pop(job_id, None)
        horizon = self._clock() - self._retention_seconds
        while finished:
            job_id = next(iter(finished))
            if clocks[job_id] > horizon:
                break
            del finished[job_id]
            del clocks[job_id]

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_SWEEP_SECONDS)
            try:
                self._evict()
            except Exception:
                logger.exception("retention sweep failed")

    def _retry_after(self) -> int:
        """A rough wait until a place frees up: the queue ahead divided by throughput, 1 to 60 s."""
        rate = self._stats.jobs_per_second()
        if rate <= 0:
            return 5
        return max(1, min(60, int(self._queued / rate) + 1))
