"""Waiters: who waits for which job to end, and the jobs finished here that a store may no longer hold."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from .jobs import Job
from .records import held_bytes

# Jobs finished here, kept for waiters whose job the store no longer holds (retention 0, a lost Redis): a few, and
# few bytes, since they are outside the store's retention budget.
FINISHED_HERE = 256
FINISHED_HERE_BYTES = 8 * 1024 * 1024


class Waiters:
    """One future per waiting call, woken by the job's terminal event (or its release here, or close()); each
    waiter reads the store again when woken, so a wake-up carries no state and a spurious one costs a read."""

    def __init__(self) -> None:
        self._futures: dict[str, list[asyncio.Future[None]]] = {}
        self._finished: OrderedDict[str, tuple[Job, int]] = OrderedDict()
        self._finished_bytes = 0

    def add(self, job_id: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.setdefault(job_id, []).append(future)
        return future

    def discard(self, job_id: str, future: asyncio.Future[None]) -> None:
        futures = self._futures.get(job_id)
        if futures is None:
            return
        if future in futures:
            futures.remove(future)
        if not futures:
            del self._futures[job_id]

    def wake(self, job_id: str) -> None:
        for future in self._futures.get(job_id, ()):
            if not future.done():
                future.set_result(None)

    def wake_all(self) -> None:
        for job_id in list(self._futures):
            self.wake(job_id)

    def finished(self, job: Job) -> None:
        """Keep a job finished here (bounded by FINISHED_HERE jobs and FINISHED_HERE_BYTES)."""
        size = held_bytes(job)
        old = self._finished.pop(job.id, None)
        if old is not None:
            self._finished_bytes -= old[1]
        self._finished[job.id] = (job, size)
        self._finished_bytes += size
        while len(self._finished) > FINISHED_HERE or self._finished_bytes > FINISHED_HERE_BYTES:
            _, (_, gone) = self._finished.popitem(last=False)
            self._finished_bytes -= gone

    def recall(self, job_id: str) -> Job | None:
        """A job finished here, if still kept."""
        kept = self._finished.get(job_id)
        return None if kept is None else kept[0]
