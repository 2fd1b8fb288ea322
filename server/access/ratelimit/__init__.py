"""Rate limiting: token buckets per client (address or API-key user) and their standard headers; the aiohttp
middleware that draws from them is server.access.middleware.

Buckets live in a `LimiterStore`: `MemoryLimiterStore` in one process (default), or `RedisLimiterStore` when
`REDIS_URL` is set, so that several instances share one limit. The Redis store is imported lazily from
`server.access.ratelimit.redis`: the redis client is an optional extra.
"""

from __future__ import annotations

from .base import Bucket, Decision, LimiterStore, Policy, Take, decision_headers, make_policy, raise_if_denied
from .limiter import RateLimiter
from .memory import MemoryLimiterStore

__all__ = [
    "Bucket",
    "Decision",
    "LimiterStore",
    "MemoryLimiterStore",
    "Policy",
    "RateLimiter",
    "Take",
    "decision_headers",
    "make_policy",
    "raise_if_denied",
]
