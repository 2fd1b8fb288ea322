"""The embedded store: a heap of waiting jobs, records and event logs in this process, retention of finished ones."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from ..errors import Conflict, InputBacklog, NotFound, QueueFull
from . import transitions
from .allocator import Trimmer
from .base import ControlHandler, InstanceRecord
from .events import Event, EventEmitter
from .jobs import ExecutionResult, Job, JobStatus, now_ms
from .loops import settle
from .retention import Record, Retention
from .stats import QueueStats

logger = logging.getLogger(__name__)

RETENTION_SWEEP_SECONDS = 5.0


class MemoryStore:
    """A `Store` in one process.

    Waiting jobs sit in a heap keyed (-priority, arrival): higher priority first, FIFO within one priority for any
    priority (Python integers), O(log n) enqueue and claim. Cancelled entries are removed lazily. Finished jobs are
    retained by count, age and bytes; zero for any of them keeps nothing.
    """

    keeps_queue = False

    def __init__(
        self,
        *,
        retention_seconds: float = 3600.0,
        retention_count: int = 10_000,
        retention_bytes: int = 256 * 1024 * 1024,
        events: EventEmitter | None = None,
        clock: Callable[[], float] = time.monotonic,
        trimmer: Trimmer | None = None,
    ) -> None:
        self.events = events if events is not None else EventEmitter()
        self.instance = f"memory:{os.getpid()}"
        self.on_control: ControlHandler | None = None
        self._clock = clock
        self._trimmer = trimmer if trimmer is not None else Trimmer()
        self._retention = Retention(
            seconds=retention_seconds,
            count=retention_count,
            max_bytes=retention_bytes,
            clock=clock,
            trimmer=self._trimmer,
        )
        # The finished records by id (the retention's own mapping): read on every enqueue, without a call.
        self._kept = self._retention.records
        self._retired = False  # a job finished since the last retention sweep
        self._stats = QueueStats(clock=clock)
        # Entries name their job by id: a tuple of ints and a string is one the garbage collector stops tracking,
        # so 100,000 waiting jobs cost a full collection 100,000 objects fewer to walk (one in five of theirs).
        self._heap: list[tuple[int, int, str]] = []
        self._arrival = itertools.count()
        self._queued = 0  # live (not cancelled) entries in the heap
        self._active: dict[str, Record] = {}  # queued and running, by id
        self._running = 0
        # News of work (an enqueue, a finish) since the claim loop last looked, and the loop's wait for it if it
        # waits: a flag, not an asyncio.Event, so the enqueue and finish of every job set it without a call.
        self._work = False
        self._work_waiter: asyncio.Future[None] | None = None
        # The worker's own ear for that news, when it claims from this store by itself (`SettlesAtOnce`): told at
        # once, in place of the claim loop.
        self.on_work: Callable[[], None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._started_at = now_ms()
        self._beat: tuple[int, float] | None = None  # slots, time of the last heartbeat

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="conveyor-retention")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with suppress(asyncio.CancelledError):
                await self._sweeper
        await self._trimmer.close()

    async def abandon_queued(self, reason: str) -> None:
        for record in [r for r in self._active.values() if r.job.status is JobStatus.QUEUED]:
            self._cancel_queued(record, reason)

    async def drain(self, timeout: float) -> None:
        return None  # events are emitted synchronously

    # -- jobs ------------------------------------------------------------------------------------------------

    async def enqueue(self, job: Job, *, max_queue_size: int, max_concurrent: int) -> Job:
        if job.id in self._active or job.id in self._kept:
            return job
        # As on Redis: the waiting room plus the slots free right now (a job that will start at once never waits).
        free = max_concurrent - self._running
        if self._queued >= max_queue_size + (free if free > 0 else 0):
            self._stats.on_rejected()
            retry = self._stats.retry_after()
            raise QueueFull(
                f"The queue holds {self._queued} jobs, its maximum. Try again in {retry} seconds.",
                headers={"Retry-After": str(retry)},
                retryAfter=retry,
            )
        event = transitions.enqueue(job)
        job.seq = event["seq"] = seq = job.seq + 1
        # The first event of a job is rebuilt from it when read (Record): a waiting job holds no copy.
        self._active[job.id] = Record(job, None if seq == 1 else [event])
        self._line_up(job)
        self._stats.on_queued()
        self.events.emit(event)
        self._wake()
        return job

    def _line_up(self, job: Job) -> None:
        """Put a queued job (registered in `_active`) in line, behind those of its priority."""
        heapq.heappush(self._heap, (-job.priority, next(self._arrival), job.id))
        self._queued += 1

    def _waiting(self, job_id: str) -> Record | None:
        """The record of a job still in line (a heap entry's may have been cancelled since)."""
        record = self._active.get(job_id)
        return record if record is not None and record.job.status is JobStatus.QUEUED else None

    async def claim(self, count: int, *, lease_ms: int, max_concurrent: int) -> list[tuple[Job, str | None]]:
        return self.claim_now(count, lease_ms=lease_ms, max_concurrent=max_concurrent)

    def claim_now(self, count: int, *, lease_ms: int, max_concurrent: int) -> list[tuple[Job, str | None]]:
        """`claim`, done before it returns (`SettlesAtOnce`)."""
        claimed: list[tuple[Job, str | None]] = []
        heap, emit, started = self._heap, self.events.emit, self._stats.on_started
        active = self._active
        while count > 0 and self._running < max_concurrent and self._queued:
            record = active.get(heapq.heappop(heap)[2])
            if record is None or record.job.status is not JobStatus.QUEUED:
                continue  # cancelled while it waited
            job = record.job
            count -= 1
            self._queued -= 1
            self._running += 1
            event = transitions.claim(job, time.time() * 1000.0)
            started(job)
            job.seq = event["seq"] = job.seq + 1
            record.lifecycle(event)
            emit(event)
            claimed.append((job, record.stop))
        return claimed

    async def renew(self, job_ids: list[str], *, lease_ms: int) -> dict[str, str]:
        stops = {}
        for job_id in job_ids:
            record = self._active.get(job_id)
            if record is not None and record.stop is not None:
                stops[job_id] = record.stop
        return stops

    async def reclaim(self, *, retry: bool, lease_ms: int) -> list[str]:
        return []  # jobs die with this process: nothing can hold a lease here and be gone

    async def wait_for_work(self, timeout: float) -> None:
        if not self._work:
            loop = asyncio.get_running_loop()
            waiter = self._work_waiter = loop.create_future()
            timer = loop.call_later(timeout, settle, waiter)  # a timer, not asyncio.timeout: cheaper, once per job
            try:
                await waiter
            finally:
                timer.cancel()
                self._work_waiter = None
        self._work = False

    def _wake(self) -> None:
        """There is work: the worker's hook hears it now; else the claim loop looks for it now if it waits, else
        next time it would."""
        if self.on_work is not None:
            self.on_work()
            return
        self._work = True
        waiter = self._work_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def finish(self, job: Job, status: JobStatus, result: ExecutionResult) -> bool:
        return self.finish_now(job, status, result)

    def finish_now(self, job: Job, status: JobStatus, result: ExecutionResult) -> bool:
        """`finish`, done before it returns (`SettlesAtOnce`)."""
        record = self._active.get(job.id)
        if record is None or job.status is not JobStatus.RUNNING:
            return job.status.finished  # already finished: a retry is a success
        self._running -= 1
        self._retire(record, transitions.finish(job, status, result, time.time() * 1000.0))
        self._wake()
        return True

    async def cancel(self, job_id: str, reason: str) -> tuple[str, Job | None]:
        record = self._active.get(job_id)
        if record is None:
            finished = self._retention.get(job_id)
            return ("missing", None) if finished is None else (finished.job.status.value, finished.job)
        status = record.job.status.value
        if record.job.status is JobStatus.QUEUED:
            self._cancel_queued(record, reason)
        return status, record.job

    async def request_stop(self, job_id: str, reason: str) -> tuple[str, Job | None]:
        record = self._active.get(job_id)
        if record is None or record.job.status is not JobStatus.RUNNING:
            return await self.cancel(job_id, reason)
        if record.stop is None:
            record.stop = reason
        if self.on_control is not None:
            self.on_control("_stop", job_id, reason)
        return "running", record.job

    def _cancel_queued(self, record: Record, reason: str) -> None:
        event = transitions.cancel(record.job, reason, now_ms())
        self._queued -= 1
        # Lazy removal: compact once dead entries dominate, so the heap stays O(live).
        if len(self._heap) > 64 and len(self._heap) > 2 * self._queued:
            self._heap = [entry for entry in self._heap if self._waiting(entry[2]) is not None]
            heapq.heapify(self._heap)
        self._retire(record, event)

    def _retire(self, record: Record, event: Event) -> None:
        """Keep a finished job (its state and terminal event already decided) and announce its end."""
        job = record.job
        self._active.pop(job.id, None)
        now = self._clock()  # one reading for the stats, the record and its eviction
        self._stats.on_finished(job, now)
        job.seq = event["seq"] = job.seq + 1
        record.lifecycle(event)
        self.events.emit(event)
        record.seal(now)
        self._retired = True
        self._retention.keep(record)
        self._retention.evict(now)

    # -- events, input ---------------------------------------------------------------------------------------

    def _emit(self, record: Record, event: Event) -> None:
        event["seq"] = record.job.next_seq()
        record.append(event)
        self.events.emit(event)

    async def append_event(self, job: Job, event: Event) -> None:
        self.append_event_now(job, event)

    def append_event_now(self, job: Job, event: Event) -> None:
        """`append_event`, done before it returns (`SettlesAtOnce`)."""
        record = self._active.get(job.id)
        if record is not None:
            self._emit(record, event)

    async def read_events(self, job_id: str, since: int) -> list[Event]:
        record = self._active.get(job_id) or self._retention.get(job_id)
        if record is None:
            return []
        return [dict(e) for e in record.events() if e["seq"] > since]

    async def push_stdin(self, job_id: str, data: bytes | None, budget: int) -> None:
        record = self._active.get(job_id)
        job = record.job if record is not None else await self.get(job_id)
        if job is None:
            raise NotFound(f"No job with id {job_id!r}.")
        # A queued job's input waits in the same budget: the editor may type before the job starts.
        if record is None or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING) or not job.interactive:
            raise Conflict(f"Job {job.id} is {job.status.value} and does not accept input.", status=job.status.value)
        size = len(data or b"")
        if record.input_bytes + size > budget:
            raise InputBacklog(
                f"Job {job_id} has {record.input_bytes} bytes of input it has not read yet; at most {budget} may "
                "wait. Send more once the program reads.",
                maxBytes=budget,
                pendingBytes=record.input_bytes,
            )
        if record.input is None:
            record.input = deque()
        record.input.append(data)
        record.input_bytes += size
        if self.on_control is not None:
            self.on_control("_stdin", job_id, None)

    async def take_stdin(self, job_id: str) -> list[bytes | None]:
        record = self._active.get(job_id)
        if record is None or record.input is None:
            return []
        items = list(record.input)
        record.input.clear()
        return items

    async def ack_stdin(self, job_id: str, size: int) -> None:
        record = self._active.get(job_id)
        if record is not None:
            record.input_bytes = max(0, record.input_bytes - size)

    # -- reads -----------------------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        record = self._active.get(job_id) or self._retention.get(job_id)
        return None if record is None else record.job

    async def positions(self, job_ids: list[str]) -> dict[str, int | None]:
        """1-based places in line: one sort of the live entries answers every id (O(n log n) once per call)."""
        wanted = {job_id for job_id in job_ids if (r := self._active.get(job_id)) and r.job.status is JobStatus.QUEUED}
        places: dict[str, int | None] = dict.fromkeys(job_ids)
        if wanted:
            live = sorted(entry for entry in self._heap if self._waiting(entry[2]) is not None)
            for rank, (_, _, job_id) in enumerate(live, 1):
                if job_id in wanted:
                    places[job_id] = rank
        return places

    async def recent(self, limit: int, *, whole: bool = True) -> list[Job]:
        active = sorted((r.job for r in self._active.values()), key=lambda j: j.created_at)
        finished = [r.job for r in self._retention.newest(limit)][::-1]
        return (finished + active)[-limit:]

    async def listing(self, finished: int) -> list[Job]:
        done = [r.job for r in self._retention.newest(finished)]
        return [*(r.job for r in self._active.values()), *done]

    async def heartbeat(self, *, slots: int, ttl_ms: int) -> None:
        self._beat = (slots, now_ms())

    async def instances(self) -> list[InstanceRecord]:
        if self._beat is None:
            return []
        slots, beat = self._beat
        running = [job_id for job_id, r in self._active.items() if r.job.status is JobStatus.RUNNING]
        return [
            {
                "name": self.instance,
                "slots": slots,
                "running": running,
                "startedAt": self._started_at,
                "lastHeartbeat": beat,
                "here": True,
            }
        ]

    async def stats(self, *, max_concurrent: int, max_queue_size: int) -> dict[str, Any]:
        return self._stats.snapshot(
            queue_length=self._queued,
            running=self._running,
            max_concurrent=max_concurrent,
            max_queue_size=max_queue_size,
        )

    def note_rate_limited(self) -> None:
        self._stats.on_rate_limited()

    # -- retention -------------------------------------------------------------------------------------------

    def _evict(self) -> None:
        self._retention.evict()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_SWEEP_SECONDS)
            try:
                self._evict()
                # Quiet since the last sweep: hand back what evictions freed (while jobs flow, they reuse it).
                self._trimmer.maybe_trim(idle=not self._retired)
                self._retired = False
            except Exception:
                logger.exception("retention sweep failed")
