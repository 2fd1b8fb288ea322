"""The outbox's recovery: armed callbacks whose job ended where no follower saw it (the instance that accepted it died
or restarted; on Redis another instance ran or reclaimed the job) are filled from the job store, by any instance."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

from ..queue.jobs import Job
from ..queue.loops import raise_if_cancelling, stop_task
from .outbox import Armed
from .sender import CallbackSender, origin

logger = logging.getLogger(__name__)

# What a callback carries, by the format's name: the finished job as one door shows it (`native`, `judge0`).
BodyOf = Callable[[Job], bytes]
Lookup = Callable[[str], Awaitable[Job | None]]

PASS_S = 5.0  # how often an instance looks at armed callbacks come due
PASS_LIMIT = 200  # armed callbacks one pass looks at, at most: one job store read each
RECHECK_S = 10.0  # an armed callback whose job is still queued or running is looked at again this much later
# An armed callback is written before its job is queued: a job unknown this soon may still be on its way to the store.
UNKNOWN_GRACE_S = 60.0


class Recovery:
    """Looks at armed callbacks come due (PASS_LIMIT each PASS_S, the longest waiting first): fills those whose job
    is finished, looks again later at those still queued or running, drops (logged, counted in the sender's
    `orphaned`) those whose job the store does not know. Filling is idempotent: with the job's own follower, or
    another instance, racing this one, the callback is filled, and delivered, once."""

    def __init__(
        self,
        sender: CallbackSender,
        *,
        lookup: Lookup,
        bodies: Mapping[str, BodyOf],
        clock: Callable[[], float] = time.time,
        pass_s: float = PASS_S,
    ) -> None:
        self._sender = sender
        self._lookup = lookup
        self._bodies = bodies
        self._clock = clock
        self._pass_s = pass_s
        self._failing = False

    async def run(self) -> None:
        """A pass now (start-up), then one every `pass_s`, until cancelled."""
        while True:
            try:
                await self.recover()
                if self._failing:
                    logger.warning("callback outbox: recovering armed callbacks again")
                self._failing = False
            except Exception:
                raise_if_cancelling()
                if not self._failing:  # once per outage
                    logger.exception(
                        "callback outbox: cannot recover armed callbacks; trying again every %.1f s", self._pass_s
                    )
                self._failing = True
            await asyncio.sleep(self._pass_s)

    async def recover(self) -> int:
        """One pass; returns the callbacks it filled."""
        store, now = self._sender.store, self._clock()
        filled = 0
        for armed in await store.armed_due(now, PASS_LIMIT):
            job = await self._lookup(armed.job_id)
            if job is None:
                await self._unknown(armed, now)
            elif not job.status.finished:
                await store.recheck(armed.key, now + RECHECK_S)
            elif await self._fill(armed, job):
                filled += 1
        return filled

    async def _fill(self, armed: Armed, job: Job) -> bool:
        body_of = self._bodies.get(armed.body_format)
        if body_of is None:
            await self._drop(armed, f"no callback body named {armed.body_format!r} on this server")
            return False
        try:
            body = body_of(job)
        except Exception:
            logger.exception("callback for job %s: its body could not be built; tried again later", armed.job_id)
            await self._sender.store.recheck(armed.key, self._clock() + RECHECK_S)
            return False
        if not await self._sender.fill(armed, body):
            return False  # filled by its follower, or another instance, since the read: the same callback
        logger.info("callback for job %s recovered: its job ended %s", armed.job_id, job.status.value)
        return True

    async def _unknown(self, armed: Armed, now: float) -> None:
        if now - armed.created_at < UNKNOWN_GRACE_S:
            await self._sender.store.recheck(armed.key, now + RECHECK_S)
            return
        await self._drop(armed, "the job store does not know its job (expired past retention, or lost with the store)")

    async def _drop(self, armed: Armed, why: str) -> None:
        if await self._sender.disarm(armed.key):  # one instance drops it, and says so, once
            self._sender.orphaned += 1
            logger.error("callback for job %s to %s dropped: %s", armed.job_id, origin(armed.url), why)


@asynccontextmanager
async def recovering(sender: CallbackSender, *, lookup: Lookup, bodies: Mapping[str, BodyOf]) -> AsyncIterator[None]:
    """Recovery for an app's lifetime (cleanup_ctx), after the sender and the job store have started."""
    task = asyncio.create_task(Recovery(sender, lookup=lookup, bodies=bodies).run())
    try:
        yield
    finally:
        await stop_task(task)
