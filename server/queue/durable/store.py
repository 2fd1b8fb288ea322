"""The durable embedded store: the memory store, every change journaled, evicted results read back from disk."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import orjson

from ..events import Event
from ..jobs import ExecutionResult, Job, JobStatus, now_ms
from ..memory import MemoryStore
from ..records import held_bytes
from ..retention import Record
from .journal import Journal
from .rows import Recovered

logger = logging.getLogger(__name__)


class DurableStore(MemoryStore):
    """A `MemoryStore` whose jobs survive the process: queued ones run after a restart, running ones end
    `failed` / `worker_lost`, finished ones answer within retention (from memory while it holds them, then from
    the journal). Memory keeps what JOB_RETENTION_COUNT and JOB_RETENTION_MAX_MB allow; the journal keeps every
    finished job for JOB_RETENTION_SECONDS within DATA_MAX_MB."""

    keeps_queue = True

    def __init__(self, journal: Journal, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.journal = journal

    async def start(self) -> None:
        retention = self._retention
        recovered = await asyncio.to_thread(self.journal.open, retention.count, retention.max_bytes)
        self.journal.start()
        await self._restore(recovered)
        await super().start()

    async def close(self) -> None:
        await super().close()
        await self.journal.close()

    async def abandon_queued(self, reason: str) -> None:
        return None  # they wait in the journal and run after the restart

    # -- the changes the journal follows ---------------------------------------------------------------------

    async def enqueue(self, job: Job, *, max_queue_size: int, max_concurrent: int) -> Job:
        known = job.id in self._active or job.id in self._retention
        job = await super().enqueue(job, max_queue_size=max_queue_size, max_concurrent=max_concurrent)
        if not known:
            # Answered once written: an accepted job (a 202, a `queued`) survives a crash from then on.
            batch = self.journal.queued(job)
            if batch is not None and not await self.journal.written(batch):
                logger.warning("job %s accepted before the job journal could write it (the disk is behind)", job.id)
        return job

    def claim_now(self, count: int, *, lease_ms: int, max_concurrent: int) -> list[tuple[Job, str | None]]:
        claimed = super().claim_now(count, lease_ms=lease_ms, max_concurrent=max_concurrent)
        for job, _ in claimed:
            self.journal.running(job)
        return claimed

    def finish_now(self, job: Job, status: JobStatus, result: ExecutionResult) -> bool:
        # The record outlives its eviction from memory: its event log goes to the journal either way.
        record = self._active.get(job.id)
        ending = record is not None and job.status is JobStatus.RUNNING
        done = super().finish_now(job, status, result)
        if ending and record is not None:
            self.journal.finished(job, record.log_blob)
        return done

    async def cancel(self, job_id: str, reason: str) -> tuple[str, Job | None]:
        record = self._active.get(job_id)
        status, job = await super().cancel(job_id, reason)
        if status == JobStatus.QUEUED.value and record is not None:
            self.journal.finished(record.job, record.log_blob)
        elif status == "missing" and (stored := await self.journal.read(job_id)) is not None:
            return stored[0].status.value, stored[0]
        return status, job

    def append_event_now(self, job: Job, event: Event) -> None:
        super().append_event_now(job, event)
        self.journal.emitted(job)

    # -- reads past memory -----------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        job = await super().get(job_id)
        if job is None and (stored := await self.journal.read(job_id)) is not None:
            job = stored[0]
        return job

    async def read_events(self, job_id: str, since: int) -> list[Event]:
        if job_id in self._active or job_id in self._retention:
            return await super().read_events(job_id, since)
        stored = await self.journal.read(job_id)
        if stored is None:
            return []
        events = (orjson.loads(line) for line in stored[1].split(b"\n") if line)
        return [event for event in events if event["seq"] > since]

    # -- recovery --------------------------------------------------------------------------------------------

    async def _restore(self, recovered: Recovered) -> None:
        """Finished jobs back in memory (as retention allows), queued ones back in line in their order, and
        running ones ended: their process died with the server, so they fail with reason worker_lost (their
        terminal event numbered above any seq they were given)."""
        now = now_ms()
        for job, log in recovered.finished:
            self._keep(job, log, age_s=max(0.0, now - (job.finished_at or now)) / 1000.0)
        for job in recovered.queued:
            job.status = JobStatus.QUEUED
            self._active[job.id] = Record(job)  # its log: the queued event, seq 1
            self._line_up(job)
            self._stats.on_queued()
        for job in recovered.lost:
            job.status = JobStatus.RUNNING
            self._active[job.id] = Record(job)
            self._running += 1
            logger.warning("job %s lost its worker (the server stopped while it ran)", job.id)
            await self.finish(job, JobStatus.FAILED, ExecutionResult(reason="worker_lost"))
        self._evict()
        if recovered.queued or recovered.lost or recovered.finished:
            logger.info(
                "job journal %s: %d queued jobs back in line, %d lost with the last run, %d finished ones back",
                self.journal.path,
                len(recovered.queued),
                len(recovered.lost),
                len(recovered.finished),
            )
        if recovered.queued:
            self._wake()

    def _keep(self, job: Job, log: bytes, *, age_s: float) -> None:
        record = Record(job, [])
        record.log_blob = log
        record.size = held_bytes(job) + sys.getsizeof(log)
        record.stored_at = self._clock() - age_s
        self._retention.keep(record)
