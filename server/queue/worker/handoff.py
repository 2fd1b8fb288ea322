"""Finish and claim in one call: a worker's results go to a store that can (Redis) in batches, and the slots they
free take the next queued jobs in the same call, so a busy worker makes no claim round trips of its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ..base import Store
from ..jobs import ExecutionResult, Job, JobStatus

logger = logging.getLogger(__name__)

# A job's finish as the worker hands it over: the job, its final status and its result.
Finished = tuple[Job, JobStatus, ExecutionResult]
Claimed = list[tuple[Job, str | None]]
FINISH_BACKOFF_S = (0.05, 0.2, 0.5, 1.0, 2.0)
# About seven minutes of retries: longer than any Redis restart worth waiting for.
FINISH_ATTEMPTS = 200
# Finishes in one call at most: a script call holds Redis for its whole run, and each finish may evict records.
MAX_BATCH = 64


@runtime_checkable
class ClaimsOnFinish(Protocol):
    """A store whose finish can also claim (the Redis store; the embedded one claims from memory, for free)."""

    async def finish_and_claim(
        self, finished: list[Finished], *, claim: int, lease_ms: int, max_concurrent: int
    ) -> tuple[list[bool], Claimed]:
        """Finish every job (each: applied or not, as `Store.finish`), then claim up to `claim` queued jobs."""


class FinishBatcher:
    """Sends finishes to the store, together when several are ready at once (a batch of jobs claimed together and
    finished together, or finishes that arrive while one call is in flight), one call in flight at a time.

    Each call asks for as many jobs as `reserve(n)` grants for a batch of `n` (the slots those `n` free plus the
    ones already free; 0 when the worker is closing), hands what it claimed to `start`, then calls `unreserve` with
    the same count: the worker counts the slots promised to a call in flight, so no two calls claim the same slot.
    """

    def __init__(
        self,
        store: ClaimsOnFinish,
        *,
        reserve: Callable[[int], int],
        unreserve: Callable[[int], None],
        start: Callable[[Claimed], None],
        lease_ms: int,
        max_concurrent: int,
    ) -> None:
        self._store = store
        self._reserve = reserve
        self._unreserve = unreserve
        self._start = start
        self._lease_ms = lease_ms
        self._max_concurrent = max_concurrent
        self._pending: list[tuple[Finished, asyncio.Future[bool]]] = []
        self._sender: asyncio.Task[None] | None = None
        # The last call claimed fewer jobs than it asked for: the queue was empty (or the cluster full) then.
        self.drained = False

    async def finish(self, job: Job, status: JobStatus, result: ExecutionResult) -> bool:
        """Store one job's final state (with whatever else is ready); raises what the store raised."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(((job, status, result), future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name="conveyor-finish")
        return await future

    async def _send(self) -> None:
        await asyncio.sleep(0)  # the other runs that ended in this turn of the loop join the batch
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            claim = self._reserve(len(batch))
            try:
                done, claimed = await self._store.finish_and_claim(
                    [item for item, _ in batch],
                    claim=claim,
                    lease_ms=self._lease_ms,
                    max_concurrent=self._max_concurrent,
                )
            except Exception as exc:  # the callers retry (FINISH is idempotent for the lease holder)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self._unreserve(claim)
            self.drained = len(claimed) < claim
            self._start(claimed)
            for (_, future), applied in zip(batch, done, strict=True):
                if not future.done():
                    future.set_result(applied)


async def store_result(
    store: Store, batcher: FinishBatcher | None, job: Job, status: JobStatus, result: ExecutionResult
) -> bool:
    """FINISH, retried while the store is unreachable (it is idempotent for the lease holder); the worker renews
    the lease meanwhile, since the job stays registered there until this returns. False if it gave up."""
    attempt = 0
    while True:
        try:
            if batcher is not None and attempt == 0:
                stored = await batcher.finish(job, status, result)
            else:  # retries claim nothing: jobs claimed by a call whose reply was lost wait for their lease
                stored = await store.finish(job, status, result)
            if not stored:
                logger.warning("job %s: lease lost before its result was stored", job.id)
            return True
        except Exception as exc:
            delay = FINISH_BACKOFF_S[min(attempt, len(FINISH_BACKOFF_S) - 1)]
            attempt += 1
            if attempt > FINISH_ATTEMPTS:
                logger.error("job %s: result not stored after %d attempts (%s)", job.id, attempt, exc)
                return False
            logger.warning("job %s: storing the result failed (%s); retrying in %.2f s", job.id, exc, delay)
            await asyncio.sleep(delay)
