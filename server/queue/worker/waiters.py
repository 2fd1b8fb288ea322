"""Waiters: who waits for which job to end, and the jobs finished here that a store may no longer hold."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from ...errors import NotFound, ShuttingDown
from ..events import Event
from ..jobs import Job
from ..loops import settle
from ..records import held_bytes

# A waiter re-reads the store this often even without news: a missed or trimmed terminal event costs this much.
WAIT_RECHECK_S = 2.0

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

    async def wait(
        self, job_id: str, read: Callable[[str], Awaitable[Job | None]], abandoned: Callable[[], bool]
    ) -> Job:
        """The job once finished, read with `read` at every wake-up and every WAIT_RECHECK_S; NotFound when neither
        the store nor this instance has it, ShuttingDown when `abandoned()` (closing, and not running here)."""
        while True:
            future = self.add(job_id)
            try:
                job = await read(job_id)  # registered first: a terminal event in between is not missed
                if job is None:
                    job = self.recall(job_id)
                    if job is None:
                        raise NotFound(f"No job with id {job_id!r} (it may have been lost with the job store).")
                if job.status.finished:
                    return job
                if future.done():
                    continue  # news arrived while we read: read again
                if abandoned():
                    raise ShuttingDown(
                        f"The server is shutting down; job {job_id} is {job.status.value}. Fetch it later from "
                        f"/queue/job/{job_id}.",
                        retryAfter=5,
                        jobId=job_id,
                    )
                # A timer that settles the future, not asyncio.timeout (cheaper, once per job): a wake-up carries
                # no state, so the recheck is one more wake-up.
                timer = asyncio.get_running_loop().call_later(WAIT_RECHECK_S, settle, future)
                try:
                    await future
                finally:
                    timer.cancel()
            finally:
                self.discard(job_id, future)

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

    def on_terminal(self, event: Event) -> None:
        """A listener of terminal events: the job's waiters read the store again."""
        for future in self._futures.get(event["jobId"], ()):
            if not future.done():
                future.set_result(None)

    def wake_all(self) -> None:
        for job_id in list(self._futures):
            self.wake(job_id)

    def finished(self, job: Job) -> None:
        """Keep a job finished here (bounded by FINISHED_HERE jobs and FINISHED_HERE_BYTES)."""
        size = held_bytes(job)
        finished = self._finished
        if job.id in finished:  # finished again (a retry): counted once
            self._finished_bytes -= finished.pop(job.id)[1]
        finished[job.id] = (job, size)
        self._finished_bytes += size
        while len(finished) > FINISHED_HERE or self._finished_bytes > FINISHED_HERE_BYTES:
            self._finished_bytes -= finished.popitem(last=False)[1][1]

    def recall(self, job_id: str) -> Job | None:
        """A job finished here, if still kept."""
        kept = self._finished.get(job_id)
        return None if kept is None else kept[0]
