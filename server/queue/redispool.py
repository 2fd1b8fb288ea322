"""The instance's Redis connections for commands: one bounded pool, shared by the job store, the rate limiter and
the statistics history, so `REDIS_POOL_SIZE` is what an instance holds (the store's blocking reads add two)."""

from __future__ import annotations

import asyncio
import functools
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
    the pool, or a stalled Redis, becomes a 503, not a hang) when sent through `command_client`, which holds each
    command to one deadline. No retries inside redis-py: a retried script after a lost reply could apply twice;
    callers retry what is idempotent. Replies are decoded (the limiter's are numbers).
    """
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    timeout_s = timeout_ms / 1000.0
    # No socket_timeout: redis-py would put each send under asyncio.wait_for (a Task per command) and each read
    # under a timeout of its own, 30 of an enqueue's ~110 us of CPU (profiled); `command_client` gives the whole
    # command, the wait for a connection included, one deadline instead. The pool's own wait stays bounded too,
    # for a client made without it.
    pool = _bounded_classes()[0].from_url(
        url,
        max_connections=pool_size,
        timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )
    pool.deadline_s = timeout_s
    packing_in_c(pool)
    return pool


def command_client(pool: Any) -> Any:
    """A client of `pool` (a `command_pool`) whose every command, script call and pipeline ends within the pool's
    timeout: past it, the connection is dropped (no reply can arrive late on it) and redis-py's TimeoutError raised."""
    return _bounded_classes()[1](connection_pool=pool)


@functools.cache
def _bounded_classes() -> tuple[type[Any], type[Any]]:
    """The pool and client classes of `command_pool` and `command_client`, made on first use (the redis client is
    an optional extra)."""
    import redis.asyncio as aioredis
    from redis.asyncio.client import Pipeline
    from redis.exceptions import TimeoutError as RedisTimeout

    class BoundedPool(aioredis.BlockingConnectionPool):
        deadline_s: float = 3.0

    def late(deadline_s: float) -> Exception:  # redis-py's TimeoutError, a RedisError: every caller's 503
        return RedisTimeout(f"Redis did not answer within {deadline_s * 1000:.0f} ms")

    # The deadline's timeout inlined in each method, not in a helper coroutine: one frame fewer per command.
    class BoundedPipeline(Pipeline):
        async def execute(self, raise_on_error: bool = True) -> Any:
            pool: Any = self.connection_pool
            deadline_s = pool.deadline_s
            try:
                async with asyncio.timeout(deadline_s):
                    return await super().execute(raise_on_error)
            except TimeoutError:
                raise late(deadline_s) from None

    class BoundedRedis(aioredis.Redis):
        async def execute_command(self, *args: Any, **options: Any) -> Any:
            pool: Any = self.connection_pool
            deadline_s = pool.deadline_s
            try:
                async with asyncio.timeout(deadline_s):
                    return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
            except TimeoutError:
                raise late(deadline_s) from None

        def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Any:
            return BoundedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)

    return BoundedPool, BoundedRedis


def packing_in_c(pool: Any) -> None:
    """Make `pool`'s connections pack commands with hiredis (C) rather than redis-py's asyncio packer (Python): a
    job's ENQUEUE carries some 60 arguments and a batched FINISH hundreds, and packing them in Python took 15-39 %
    of an instance's CPU (profiled; docs/benchmarks.md). The bytes sent are the same; an argument hiredis refuses
    falls back to redis-py, which raises its own error. The connection class stays the one the URL chose (TCP, TLS,
    Unix socket)."""
    try:
        import hiredis
    except ImportError:  # the redis extra installs it; without it, redis-py's packer is slower but the same
        return
    base = pool.connection_class
    if issubclass(base, _CPacking):
        return
    pool.connection_class = _C_PACKING.get(base) or _C_PACKING.setdefault(
        base, type(f"CPacking{base.__name__}", (_CPacking, base), {"_pack": staticmethod(hiredis.pack_command)})
    )


class _CPacking:
    """Mixed in before a redis-py asyncio connection class (see `packing_in_c`)."""

    _pack: Callable[[tuple[Any, ...]], bytes]

    def pack_command(self, *args: Any) -> list[bytes]:
        # As redis-py does: a first argument with spaces ("CLIENT SETNAME") is several words of the command.
        head = args[0]
        if isinstance(head, str):
            args = (*head.encode().split(), *args[1:])
        elif b" " in head:
            args = (*head.split(), *args[1:])
        try:
            return [self._pack(args)]
        except (TypeError, UnicodeError):  # None, a bool, a lone surrogate: redis-py says what it wants instead
            packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
            return packed


_C_PACKING: dict[type[Any], type[Any]] = {}
