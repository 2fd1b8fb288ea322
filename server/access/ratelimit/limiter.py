"""`RateLimiter`: token buckets per client and bucket name, on the store the settings choose."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from aiohttp import web

from ...errors import BackendUnavailable
from ...settings import Settings
from ..identity import Client
from .base import Bucket, Decision, LimiterStore, Policy, make_policy
from .memory import MemoryLimiterStore

logger = logging.getLogger(__name__)


class RateLimiter:
    """Token buckets per client and bucket name ("submit": job submissions, "read": other API calls).

    API-key users are limited per user and may carry their own submit rate and burst; everyone else per address.
    The store is `RedisLimiterStore` when `settings.redis_url` is set (one limit across instances), else
    `MemoryLimiterStore`; `store=` overrides both.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: LimiterStore | None = None,
        clock: Callable[[], float] = time.time,
        sweep_interval_s: float = 60.0,
        redis_pool: Any = None,
    ) -> None:
        self.store: LimiterStore = store if store is not None else _store_for(settings, redis_pool)
        # A local store is called synchronously: no coroutine per decision (see bench/bench_ratelimit.py). A shared
        # store is a network round trip, awaited through the protocol.
        self._take_now = self.store.take_now if isinstance(self.store, MemoryLimiterStore) else None
        self._clock = clock
        self._sweep_interval_s = sweep_interval_s
        self._window_s = settings.rate_limit_window_ms / 1000.0
        self._requests = settings.rate_limit_requests
        self._submit = make_policy("submit", settings.rate_limit_requests, settings.effective_burst, self._window_s)
        read = settings.rate_limit_read_requests
        self._read = make_policy("read", read, read, self._window_s)
        failures = settings.auth_failure_limit
        self._auth = make_policy("auth", failures, failures, self._window_s)
        self._overrides: dict[tuple[int | None, int | None], Policy] = {}
        self._task: asyncio.Task[None] | None = None
        self._fail_open = settings.rate_limit_redis_failure == "open"
        # Told of every denied "submit" or "read" hit (the statistics' rate-limited count): one place, whichever
        # door drew the token. Failed authentications are the lockout's and are not counted here.
        self.on_denied: Callable[[], None] | None = None

    def policy(self, client: Client, bucket: Bucket) -> Policy:
        """The bucket shape for this client. Per-user overrides apply to the submit bucket only."""
        if bucket == "read":
            return self._read
        if bucket == "auth":
            return self._auth
        if client.rate_limit_requests is None and client.rate_limit_burst is None:
            return self._submit
        shape = (client.rate_limit_requests, client.rate_limit_burst)
        policy = self._overrides.get(shape)
        if policy is None:
            requests = client.rate_limit_requests or self._requests
            # As for the settings: a user's burst defaults to its own rate, not to the global burst.
            burst = client.rate_limit_burst or client.rate_limit_requests or self._submit.capacity
            policy = self._overrides[shape] = make_policy("submit", requests, burst, self._window_s)
        return policy

    async def hit(self, client: Client, bucket: Bucket) -> Decision:
        """Draw one token from the client's bucket. Call `check_priority` first: a 403 must not cost quota."""
        policy = self.policy(client, bucket)
        now = self._clock()
        key = f"{bucket}:{client.key}"
        if self._take_now is not None:
            return self._noted(
                bucket, Decision(policy, now, *self._take_now(key, policy.rate_per_s, policy.capacity, now))
            )
        try:
            taken = await self.store.take(key, policy.rate_per_s, policy.capacity, now)
            return self._noted(bucket, Decision(policy, now, *taken))
        except BackendUnavailable:
            if not self._fail_open:
                raise
            # RATE_LIMIT_REDIS_FAILURE=open: availability over limits while the shared store is down.
            logger.warning("rate limiter store unreachable: letting %s through unlimited", client.key)
            return Decision(policy, now, True, policy.capacity, 0.0, 0.0)

    def hit_now(self, client: Client, bucket: Bucket) -> Decision:
        """`hit` without a coroutine, for a local (in-memory) store only."""
        if self._take_now is None:
            raise TypeError("hit_now needs a MemoryLimiterStore")
        policy = self.policy(client, bucket)
        now = self._clock()
        key = f"{bucket}:{client.key}"
        return self._noted(bucket, Decision(policy, now, *self._take_now(key, policy.rate_per_s, policy.capacity, now)))

    def _noted(self, bucket: Bucket, decision: Decision) -> Decision:
        if not decision.allowed and bucket != "auth" and self.on_denied is not None:
            self.on_denied()
        return decision

    async def refund(self, client: Client, bucket: Bucket) -> Decision:
        """Give back the token of a request refused with 401/403 (those must not consume quota)."""
        policy = self.policy(client, bucket)
        now = self._clock()
        taken = await self.store.refund(f"{bucket}:{client.key}", policy.rate_per_s, policy.capacity, now)
        return Decision(policy, now, *taken)

    async def peek(self, client: Client, bucket: Bucket) -> Decision:
        """The client's bucket as the next `hit` would find it, without drawing a token (for GET /ratelimit)."""
        policy = self.policy(client, bucket)
        now = self._clock()
        try:
            taken = await self.store.peek(f"{bucket}:{client.key}", policy.rate_per_s, policy.capacity, now)
        except BackendUnavailable:
            if not self._fail_open:
                raise
            return Decision(policy, now, True, policy.capacity, 0.0, 0.0)  # what `hit` lets through meanwhile
        return Decision(policy, now, *taken)

    async def sweep(self) -> int:
        """Forget full buckets now (the periodic task does this every `sweep_interval_s`)."""
        return await self.store.sweep(self._clock())

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._sweep_forever(), name="ratelimit-sweep")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await self.store.close()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                removed = await self.sweep()
            except Exception:
                logger.exception("rate limiter sweep failed")
            else:
                logger.debug("rate limiter sweep dropped %d full buckets", removed)


LIMITER = web.AppKey("limiter", RateLimiter)


def _store_for(settings: Settings, pool: Any) -> LimiterStore:
    if settings.redis_url:
        # Imported lazily: the redis client is an optional extra, and the in-memory default needs none of it.
        from .redis import RedisLimiterStore

        return RedisLimiterStore(
            settings.redis_url,
            prefix=settings.redis_prefix,
            pool_size=settings.redis_pool_size,
            timeout_ms=settings.redis_timeout_ms,
            pool=pool,
        )
    return MemoryLimiterStore()
