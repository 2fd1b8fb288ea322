"""The callbacks' delivery: workers that claim due entries from the outbox, a few per host, and retry with
exponential backoff and jitter over hours, until delivered or abandoned (logged and counted either way)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ..queue.loops import raise_if_cancelling, stop_task
from ..settings import Settings
from .client import CallbackClient, Outcome
from .outbox import Armed, Claim, Delivery, Entry, OutboxStore
from .sqlite_outbox import SqliteOutbox

logger = logging.getLogger(__name__)

BACKOFF_CAP_S = 600.0  # a receiver back after an outage hears from us within 10 min
POLL_S = 1.0  # how often an instance looks for entries come due (others' retries, leases run out)
LEASE_MARGIN_S = 10.0  # a claim's lease: one request's CALLBACK_TIMEOUT_MS and this, to record its outcome
# When an armed callback's job is first looked at by the outbox's recovery (server/callbacks/recovery.py): its own
# follower fills it the moment the job ends; recovery is for the instance that died, and need not race it.
FIRST_CHECK_S = 10.0


def backoff(attempts: int, base_s: float, rand: Callable[[], float] = random.random) -> float:
    """The wait after the `attempts`th failed attempt: base, 2x, 4x, ... up to BACKOFF_CAP_S, its second half random
    (receivers back after an outage are not hit by every retry at once; never near zero, so never a hammering)."""
    ceiling = min(BACKOFF_CAP_S, base_s * 2.0 ** min(attempts - 1, 40))
    return ceiling / 2 + rand() * ceiling / 2


def origin(url: str) -> str:
    """Scheme, host and port only: a callback URL's path and query may carry the receiver's secrets."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def open_store(settings: Settings, redis_pool: Any, clock: Callable[[], float]) -> OutboxStore:
    """Redis keys shared by the instances with REDIS_URL, else a SQLite file in DATA_DIR."""
    if settings.redis_url:
        from .redis_outbox import RedisOutbox

        return RedisOutbox(redis_pool, prefix=settings.redis_prefix, now=clock)
    return SqliteOutbox(settings.data_path, now=clock)


class CallbackSender:
    """Delivers callbacks at least once: each is in the outbox (store), armed, from its job's submission, filled at
    its end, until a receiver answered 2xx or it is abandoned. CALLBACK_WORKERS requests at once,
    CALLBACK_HOST_CONCURRENCY of them to one host.

    Counters are this instance's; `pending` (filled) and `armed` are the outbox's (shared by every instance on Redis),
    as last read.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: OutboxStore | None = None,
        redis_pool: Any = None,
        backoff_s: float = 1.0,
        poll_s: float = POLL_S,
        lease_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._own_pool = None
        if store is None and settings.redis_url and redis_pool is None:
            from ..queue.redispool import instance_pool

            redis_pool = self._own_pool = instance_pool(settings)
        self._store = store if store is not None else open_store(settings, redis_pool, clock)
        self._client = CallbackClient(settings)
        self._clock = clock
        self._capacity = settings.callback_queue_size
        self._retries = settings.callback_retries
        self._horizon_s = float(settings.callback_retry_horizon_s)
        self._workers = settings.callback_workers
        self._per_host = settings.callback_host_concurrency
        self._backoff_s = backoff_s
        self._poll_s = poll_s
        self._lease_s = lease_s if lease_s is not None else settings.callback_timeout_ms / 1000.0 + LEASE_MARGIN_S
        self._wakeup = asyncio.Event()
        self._wake_at: float | None = None
        self._busy: Counter[str] = Counter()
        self._in_flight: set[asyncio.Task[None]] = set()
        # Callers of `deliver` waiting for an outcome: at most one per entry, and entries are bounded.
        self._waiters: dict[str, asyncio.Future[bool]] = {}
        self._dispatcher: asyncio.Task[None] | None = None
        self._failing = False
        self.delivered = 0
        self.retried = 0
        self.abandoned = 0
        self.dropped = 0
        self.orphaned = 0  # armed callbacks whose job the job store no longer knew (recovery.py)
        self.pending = 0
        self.armed = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def store(self) -> OutboxStore:
        return self._store

    @property
    def full(self) -> bool:
        """Whether the outbox held CALLBACK_QUEUE_SIZE entries, armed and filled, when last read."""
        return self.pending + self.armed >= self._capacity

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        await self._store.open()
        await self._client.start()
        await self.refresh()
        if self.pending or self.armed:
            logger.info(
                "callback outbox: %d callbacks to deliver, %d armed (their jobs not finished)", self.pending, self.armed
            )
        self._dispatcher = asyncio.create_task(self._dispatch())

    async def close(self) -> None:
        if self._dispatcher is not None:
            await stop_task(self._dispatcher)
        # An attempt cut short stays claimed: retried at the next start (embedded) or after its lease (Redis).
        await asyncio.gather(*(stop_task(task) for task in tuple(self._in_flight)))
        for waiter in self._waiters.values():
            waiter.cancel()
        self._waiters.clear()
        try:
            left = await self._store.count()
            if left:
                logger.info("callback outbox: %d callbacks stay in the outbox for the next start", left)
        except Exception:
            logger.exception("callback outbox: cannot count what is left")
        await self._store.close()
        await self._client.close()
        if self._own_pool is not None:
            await self._own_pool.disconnect()

    async def refresh(self) -> int:
        """Read the outbox's sizes now (for /metrics); returns the filled entries'."""
        self.pending = await self._store.count()
        self.armed = await self._store.count_armed()
        return self.pending

    async def arm(self, armed: Armed) -> bool:
        """Keep `armed` in the outbox until its job ends; False when the outbox is full (the submission is refused)."""
        if not await self._store.arm(armed, self._capacity, self._clock() + FIRST_CHECK_S):
            self.pending = await self._store.count()  # the 503's figures, as the store has them
            return False
        self.armed += 1
        return True

    async def fill(self, armed: Armed, body: bytes) -> bool:
        """The job ended: its callback is due now. False when it was not armed (filled by another instance already,
        delivered, or dropped): nothing changes."""
        if not await self._store.fill(armed, body, self._clock()):
            return False
        self.armed = max(0, self.armed - 1)
        self.pending += 1
        self._wakeup.set()
        return True

    async def disarm(self, key: str) -> bool:
        """Forget an armed callback (its submission was refused)."""
        if not await self._store.disarm(key):
            return False
        self.armed = max(0, self.armed - 1)
        return True

    async def enqueue(self, delivery: Delivery) -> bool:
        """Keep `delivery` in the outbox, due now; False (logged, counted) when the outbox is full."""
        if not await self._store.add(Entry(delivery, self._clock()), self._capacity):
            self.dropped += 1
            logger.error(
                "callback for job %s to %s dropped: the outbox holds CALLBACK_QUEUE_SIZE=%d callbacks already",
                delivery.job_id,
                origin(delivery.url),
                self._capacity,
            )
            self._settle(delivery.key, False)
            return False
        self.pending += 1
        self._wakeup.set()
        return True

    async def deliver(self, delivery: Delivery) -> bool:
        """Enqueue `delivery` and wait for its outcome here: True once delivered, False when dropped or abandoned.
        (On Redis another instance may take it; then only the receiver knows.)"""
        waiter = self._waiters.setdefault(delivery.key, asyncio.get_running_loop().create_future())
        if not await self.enqueue(delivery):
            return False
        return await waiter

    def _settle(self, key: str, delivered: bool) -> None:
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(delivered)

    async def _dispatch(self) -> None:
        while True:
            self._wakeup.clear()  # before the claim: an add while it runs wakes the next round
            try:
                await self._claim_due()
                await self.refresh()
                if self._failing:
                    logger.warning("callback outbox: claiming again")
                self._failing = False
            except Exception:
                raise_if_cancelling()
                if not self._failing:  # once per outage, not once a second
                    logger.exception(
                        "callback outbox: cannot claim due callbacks; trying again every %.1f s", self._poll_s
                    )
                self._failing = True
            timeout = self._poll_s
            if self._wake_at is not None:
                timeout = min(timeout, max(0.0, self._wake_at - self._clock()))
                if timeout <= 0:
                    self._wake_at = None
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    async def _claim_due(self) -> None:
        free = self._workers - len(self._in_flight)
        if free <= 0:
            return
        now = self._clock()
        claim = Claim(now, now + self._lease_s, free, self._per_host, dict(self._busy))
        for entry in await self._store.claim(claim):
            host = entry.delivery.host
            self._busy[host] += 1
            task = asyncio.create_task(self._try(entry))
            self._in_flight.add(task)
            task.add_done_callback(partial(self._finished, host=host))

    def _finished(self, task: asyncio.Task[None], host: str) -> None:
        self._in_flight.discard(task)
        self._busy[host] -= 1
        if self._busy[host] <= 0:
            del self._busy[host]
        self._wakeup.set()

    async def _try(self, entry: Entry) -> None:
        d = entry.delivery
        try:
            outcome = await self._client.attempt(d)
            await self._record(entry, outcome)
        except Exception:
            raise_if_cancelling()
            # Its claim stands: another attempt after the lease (at-least-once, not at-most-once).
            logger.exception("callback for job %s: its outcome was not recorded; tried again later", d.job_id)

    async def _record(self, entry: Entry, outcome: Outcome) -> None:
        d, attempts, now = entry.delivery, entry.attempts + 1, self._clock()
        if outcome.error is None:
            await self._store.remove(d.key)
            self.delivered += 1
            logger.info("callback for job %s delivered to %s (attempt %d)", d.job_id, origin(d.url), attempts)
            self._settle(d.key, True)
            return
        delay = backoff(attempts, self._backoff_s)
        if not outcome.retry:
            reason = "not worth retrying"
        elif attempts > self._retries:
            reason = f"CALLBACK_RETRIES={self._retries} retries made"
        elif now + delay - entry.created_at > self._horizon_s:
            reason = f"CALLBACK_RETRY_HORIZON_S={self._horizon_s:.0f} s over"
        else:
            await self._store.reschedule(d.key, now + delay, attempts)
            self.retried += 1
            self._wake_at = min(self._wake_at or now + delay, now + delay)
            logger.info(
                "callback for job %s to %s: %s; attempt %d in %.1f s",
                *(d.job_id, origin(d.url), outcome.error, attempts + 1, delay),
            )
            return
        await self._store.remove(d.key)
        self.abandoned += 1
        logger.error(
            "callback for job %s to %s abandoned after %d attempts over %.0f s (%s): %s",
            *(d.job_id, origin(d.url), attempts, now - entry.created_at, reason, outcome.error),
        )
        self._settle(d.key, False)


CALLBACKS = web.AppKey("callbacks", CallbackSender)


@asynccontextmanager
async def callback_sender(settings: Settings, *, redis_pool: Any = None) -> AsyncIterator[CallbackSender]:
    """The sender for an app's lifetime (cleanup_ctx)."""
    sender = CallbackSender(settings, redis_pool=redis_pool)
    await sender.start()
    try:
        yield sender
    finally:
        await sender.close()
