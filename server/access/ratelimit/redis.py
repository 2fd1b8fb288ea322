"""The Redis bucket store: one limit shared by every instance, each step one Lua script timed by Redis `TIME`."""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from ...errors import BackendUnavailable
from ...queue.redispool import command_client, command_pool
from .base import Take

# Shared head of both scripts. KEYS[1] is the bucket, holding the time at which it is full again; ARGV[1] is the
# refill interval in microseconds, ARGV[2] the capacity. Times are Redis's own (no skew between instances) and in
# microseconds since 1.7e9 s: near 1e14 a double steps by 1/64 us where epoch microseconds would step by 1/4 us,
# so a burst of `capacity` intervals added one by one still ends where it should (the memory store rebases for
# the same reason). The value is written as a Lua number, which Redis stores in round-trip precision.
_PRELUDE = """
local interval, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local full_at = tonumber(redis.call('GET', KEYS[1]) or now)
local backlog = math.max(full_at - now, 0)
local function store(new_backlog)
  -- The key lives exactly as long as the bucket is not full: an absent key is a full bucket, so nothing to sweep.
  redis.call('SET', KEYS[1], now + new_backlog, 'PX', math.max(1, math.ceil(new_backlog / 1000)))
  return math.max(0, math.floor(capacity - new_backlog / interval + 1e-6))
end
"""

# Returns {allowed (1/0), tokens left, us until full, us until the next token}; durations rounded up to whole us.
# GCRA, as in MemoryLimiterStore.take_now: at least one token while the backlog leaves room for one more interval.
TAKE = (
    _PRELUDE
    + """
local slack = (capacity - 1) * interval - backlog
if slack >= -1 then  -- the memory store's EPS: one microsecond of float slack
  backlog = backlog + interval
  return {1, store(backlog), math.ceil(backlog), 0}
end
return {0, 0, math.ceil(backlog), math.ceil(-slack)}
"""
)

# Gives one interval back; the bucket is never more than full (the key is deleted instead).
REFUND = (
    _PRELUDE
    + """
backlog = backlog - interval
if backlog <= 0 then
  redis.call('DEL', KEYS[1])
  return {1, capacity, 0, 0}
end
return {1, store(backlog), math.ceil(backlog), 0}
"""
)

# Reads only: what TAKE would answer now (`store` is defined by the prelude and not called).
PEEK = (
    _PRELUDE
    + """
local slack = (capacity - 1) * interval - backlog
if slack >= -1 then
  return {1, math.max(0, math.floor(capacity - backlog / interval + 1e-6)), math.ceil(backlog), 0}
end
return {0, 0, math.ceil(backlog), math.ceil(-slack)}
"""
)


class RedisLimiterStore:
    """A `LimiterStore` on Redis: buckets under `<prefix>:ratelimit:<bucket>:<client key>`, shared by instances.

    Each `take` / `refund` is one script call (one round trip, atomic). The caller's `now` is not used: Redis
    `TIME` decides, and the returned durations are relative, so headers computed from the caller's clock still
    hold. Keys expire when their bucket is full again, so `sweep` has nothing to do.
    """

    def __init__(
        self, url: str, *, prefix: str = "conveyor", pool_size: int = 64, timeout_ms: int = 3000, pool: Any = None
    ) -> None:
        # Typed loosely: redis-py's stubs union sync/async and bytes/str returns for every command. No blocking
        # commands here, so the instance's bounded pool (or one of our own) serves every request; an outage or a
        # burst past it is a BackendUnavailable (503, or a pass with RATE_LIMIT_REDIS_FAILURE=open) in the timeout.
        self._owns_pool = pool is None
        if pool is None:
            pool = command_pool(url, pool_size=pool_size, timeout_ms=timeout_ms)
        self._redis: Any = command_client(pool)
        self._prefix = f"{prefix}:ratelimit:"
        self._take = self._redis.register_script(TAKE)
        self._refund = self._redis.register_script(REFUND)
        self._peek = self._redis.register_script(PEEK)

    def key(self, key: str) -> str:
        """The Redis key of a bucket."""
        return self._prefix + key

    async def take(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        try:
            reply = await self._take(keys=[self._prefix + key], args=[1e6 / rate_per_s, capacity])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        allowed, left, full_us, next_us = reply
        return bool(allowed), int(left), full_us / 1e6, next_us / 1e6

    async def refund(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        try:
            _, left, full_us, _ = await self._refund(keys=[self._prefix + key], args=[1e6 / rate_per_s, capacity])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        return True, int(left), full_us / 1e6, 0.0

    async def peek(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        try:
            reply = await self._peek(keys=[self._prefix + key], args=[1e6 / rate_per_s, capacity])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        allowed, left, full_us, next_us = reply
        return bool(allowed), int(left), full_us / 1e6, next_us / 1e6

    async def sweep(self, now: float) -> int:
        return 0  # keys expire by themselves (PX on every write)

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=self._owns_pool)


def _unavailable(exc: Exception) -> BackendUnavailable:
    return BackendUnavailable(f"The rate limiter's store is unreachable ({exc}); try again shortly.", retryAfter=5)
