"""The embedded store: a heap of waiting jobs, records and event logs in this process, retention of finished ones."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import orjson

from ..errors import Conflict, InputBacklog, NotFound, QueueFull
from . import transitions
from .allocator import Trimmer
from .base import ControlHandler, InstanceRecord
from .events import Event, EventEmitter
from .jobs import ExecutionResult, Job, JobStatus, now_ms
from .records import held_bytes
from .stats import QueueStats

logger = logging.getLogger(__name__)

RETENTION_SWEEP_SECONDS = 5.0


class _Record:
    """A job and what the store keeps beside it: its event log, pending input, a stop request."""

    __slots__ = ("input", "input_bytes", "job", "log", "log_blob", "size", "stop", "stored_at")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.log: list[Event] = []
        self.log_blob = b""  # once finished: the log as one object, so evicting it gives the memory back
        self.input: deque[bytes | None] = deque()
        self.input_bytes = 0
        self.stop: str | None = None
        self.size = 0
        self.stored_at = 0.0


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
        self._retention_seconds = retention_seconds
        self._retention_count = retention_count
        self._retention_bytes = retention_bytes
        self._clock = clock
        self._trimmer = trimmer if trimmer is not None else Trimmer()
        self._retired = False  # a job finished since the last retention sweep
        self._stats = QueueStats(clock=clock)
        self._heap: list[tuple[int, int, Job]] = []
        self._arrival = itertools.count()
        self._queued = 0  # live (not cancelled) entries in the heap
        self._active: dict[str, _Record] = {}  # queued and running, by id
        self._running = 0
        self._finished: OrderedDict[str, _Record] = OrderedDict()
        self._finished_bytes = 0
        # Each owner's finished jobs (oldest first) and their bytes: past a bound the largest holder gives way.
        self._owned: dict[str, OrderedDict[str, _Record]] = {}
        self._owned_bytes: dict[str, int] = {}
        self._work = asyncio.Event()
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
        if job.id in self._active or job.id in self._finished:
            return job
        # As on Redis: the waiting room plus the slots free right now (a job that will start at once never waits).
        if self._queued >= max_queue_size + max(0, max_concurrent - self._running):
            self._stats.on_rejected()
            retry = self._stats.retry_after()
            raise QueueFull(
                f"The queue holds {self._queued} jobs, its maximum. Try again in {retry} seconds.",
                headers={"Retry-After": str(retry)},
                retryAfter=retry,
            )
        event = transitions.enqueue(job)
        record = _Record(job)
        self._active[job.id] = record
        heapq.heappush(self._heap, (-job.priority, next(self._arrival), job))
        self._queued += 1
        self._stats.on_queued()
        self._emit(record, event)
        self._work.set()
        return job

    async def claim(self, count: int, *, lease_ms: int, max_concurrent: int) -> list[tuple[Job, str | None]]:
        claimed: list[tuple[Job, str | None]] = []
        while len(claimed) < count and self._running < max_concurrent and self._queued:
            _, _, job = heapq.heappop(self._heap)
            if job.status is not JobStatus.QUEUED:
                continue
            self._queued -= 1
            self._running += 1
            event = transitions.claim(job, now_ms())
            self._stats.on_started(job)
            record = self._active[job.id]
            self._emit(record, event)
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
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._work.wait()
        self._work.clear()

    async def finish(self, job: Job, status: JobStatus, result: ExecutionResult) -> bool:
        record = self._active.get(job.id)
        if record is None or job.status is not JobStatus.RUNNING:
            return job.status.finished  # already finished: a retry is a success
        self._running -= 1
        self._retire(record, transitions.finish(job, status, result, now_ms()))
        self._work.set()
        return True

    async def cancel(self, job_id: str, reason: str) -> tuple[str, Job | None]:
        record = self._active.get(job_id)
        if record is None:
            finished = self._finished.get(job_id)
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

    def _cancel_queued(self, record: _Record, reason: str) -> None:
        event = transitions.cancel(record.job, reason, now_ms())
        self._queued -= 1
        # Lazy removal: compact once dead entries dominate, so the heap stays O(live).
        if len(self._heap) > 64 and len(self._heap) > 2 * self._queued:
            self._heap = [entry for entry in self._heap if entry[2].status is JobStatus.QUEUED]
            heapq.heapify(self._heap)
        self._retire(record, event)

    def _retire(self, record: _Record, event: Event) -> None:
        """Keep a finished job (its state and terminal event already decided) and announce its end."""
        job = record.job
        self._active.pop(job.id, None)
        self._stats.on_finished(job)
        self._emit(record, event)
        # One bytes object per finished log instead of many small dicts and strings: freed in one piece, and the
        # allocator gives it back (measured in bench/bench_faults.py: RSS after evicting 2,000 1 MiB results).
        record.log_blob = b"\n".join(orjson.dumps(e) for e in record.log)
        record.log = []
        record.input.clear()
        # Counted as it is held (a character of output may take 4 bytes here), not as characters.
        record.size = held_bytes(job) + sys.getsizeof(record.log_blob)
        record.stored_at = self._clock()
        self._retired = True
        self._finished[job.id] = record
        self._finished_bytes += record.size
        self._owned.setdefault(job.owner, OrderedDict())[job.id] = record
        self._owned_bytes[job.owner] = self._owned_bytes.get(job.owner, 0) + record.size
        self._evict()

    # -- events, input ---------------------------------------------------------------------------------------

    def _emit(self, record: _Record, event: Event) -> None:
        event["seq"] = record.job.next_seq()
        record.log.append(event)
        self.events.emit(event)

    async def append_event(self, job: Job, event: Event) -> None:
        record = self._active.get(job.id)
        if record is not None:
            self._emit(record, event)

    async def read_events(self, job_id: str, since: int) -> list[Event]:
        record = self._active.get(job_id) or self._finished.get(job_id)
        if record is None:
            return []
        events = record.log if record.log else [orjson.loads(line) for line in record.log_blob.split(b"\n") if line]
        return [dict(e) for e in events if e["seq"] > since]

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
        record.input.append(data)
        record.input_bytes += size
        if self.on_control is not None:
            self.on_control("_stdin", job_id, None)

    async def take_stdin(self, job_id: str) -> list[bytes | None]:
        record = self._active.get(job_id)
        if record is None:
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
        record = self._active.get(job_id) or self._finished.get(job_id)
        return None if record is None else record.job

    async def positions(self, job_ids: list[str]) -> dict[str, int | None]:
        """1-based places in line: one sort of the live entries answers every id (O(n log n) once per call)."""
        wanted = {job_id for job_id in job_ids if (r := self._active.get(job_id)) and r.job.status is JobStatus.QUEUED}
        places: dict[str, int | None] = dict.fromkeys(job_ids)
        if wanted:
            live = sorted((p, a, j.id) for p, a, j in self._heap if j.status is JobStatus.QUEUED)
            for rank, (_, _, job_id) in enumerate(live, 1):
                if job_id in wanted:
                    places[job_id] = rank
        return places

    async def recent(self, limit: int, *, whole: bool = True) -> list[Job]:
        active = sorted((r.job for r in self._active.values()), key=lambda j: j.created_at)
        finished = [r.job for r in itertools.islice(reversed(self._finished.values()), limit)][::-1]
        return (finished + active)[-limit:]

    async def listing(self, finished: int) -> list[Job]:
        done = [r.job for r in itertools.islice(reversed(self._finished.values()), finished)]
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
        """Past its age a job goes, oldest first. Past the count or byte bound the owner holding the most (jobs, or
        bytes) gives up its own oldest: one client's flood evicts its own jobs, not everyone else's."""
        finished = self._finished
        horizon = self._clock() - self._retention_seconds
        while finished:
            record = next(iter(finished.values()))
            if record.stored_at <= horizon:
                victim = record
            elif self._finished_bytes > self._retention_bytes:
                victim = self._oldest_of(max(self._owned_bytes, key=self._owned_bytes.__getitem__))
            elif len(finished) > self._retention_count:
                victim = self._oldest_of(max(self._owned, key=lambda owner: len(self._owned[owner])))
            else:
                break
            self._forget(victim)
        self._trimmer.maybe_trim()

    def _oldest_of(self, owner: str) -> _Record:
        return next(iter(self._owned[owner].values()))

    def _forget(self, record: _Record) -> None:
        job = record.job
        del self._finished[job.id]
        self._finished_bytes -= record.size
        owned = self._owned[job.owner]
        del owned[job.id]
        self._trimmer.freed(record.size)
        left = self._owned_bytes.pop(job.owner) - record.size
        if owned:
            self._owned_bytes[job.owner] = left
        else:
            del self._owned[job.owner]

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
