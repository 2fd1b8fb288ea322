"""The instance's Redis connections for commands: one bounded pool, shared by the job store, the rate limiter and
the statistics history, so `REDIS_POOL_SIZE` is what an instance holds (the store's blocking reads add two)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from aiohttp import web

from ..settings import Settings


def instance_pool(settings: Settings) -> Any:
    """The instance's pool as the settings size it, or None without REDIS_URL."""
    if not settings.redis_url:
        return None
    return command_pool(settings.redis_url, pool_size=settings.redis_pool_size, timeout_ms=settings.redis_timeout_ms)


def closing_pool(pool: Any) -> Callable[[web.Application], AbstractAsyncContextManager[None]]:
    """A cleanup context that disconnects `pool` (if any) when the app stops."""

    @asynccontextmanager
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if pool is not None:
                await pool.disconnect()

    return ctx


def command_pool(url: str, *, pool_size: int = 64, timeout_ms: int = 3000) -> Any:
    """A bounded pool: every command and every wait for a free connection ends within the timeout (a burst past
    the pool, or a stalled Redis, becomes a 503, not a hang). No retries inside redis-py: a retried script after a
    lost reply could apply twice; callers retry what is idempotent. Replies are decoded (the limiter's are numbers).
    """
    import redis.asyncio as aioredis  # the redis client is an optional extra
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    timeout_s = timeout_ms / 1000.0
    return aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )
