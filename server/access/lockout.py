"""Lockout: failed authentications draw from a per-address bucket; past it, key checks are refused with 429."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from ..errors import TooManyRequests
from ..settings import Settings
from .identity import anonymous
from .ratelimit.limiter import RateLimiter

logger = logging.getLogger(__name__)

# Addresses remembered as locked out (per instance); the oldest are forgotten first past this.
MAX_LOCKED = 10_000


class AuthLockout:
    """Guessing keys costs: every failed authentication (REST or WebSocket) takes a token from the address's "auth"
    bucket (shared by all instances with Redis). When it is empty the address is locked out: every key it presents
    is refused with 429 *before* being checked, so the right key cannot be told from a wrong one by the answer.
    The lockout is logged once per window per address.
    """

    def __init__(
        self, limiter: RateLimiter, settings: Settings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limiter = limiter
        self._clock = clock
        self._window_s = settings.rate_limit_window_ms / 1000.0
        self._limit = settings.auth_failure_limit
        # address -> (locked until, last logged at), on this instance's clock
        self._locked: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._locked)

    def check(self, ip: str) -> None:
        """Raise TooManyRequests while `ip` is locked out. Call before looking at a presented key."""
        entry = self._locked.get(ip)
        if entry is None:
            return
        remaining = entry[0] - self._clock()
        if remaining > 0:
            raise self._refusal(remaining)

    async def failed(self, ip: str) -> TooManyRequests | None:
        """Count one failed authentication; the 429 to answer instead of the 401 once the bucket is empty."""
        decision = await self._limiter.hit(anonymous(ip), "auth")
        if decision.allowed:
            return None
        now = self._clock()
        retry = decision.retry_after_s
        previous = self._locked.pop(ip, None)
        logged_at = previous[1] if previous is not None else None
        if logged_at is None or now - logged_at >= self._window_s:
            logger.warning(
                "%s: more than %d failed authentications in %.0f s; refusing its keys for %d s",
                ip,
                self._limit,
                self._window_s,
                retry,
            )
            logged_at = now
        self._locked[ip] = (now + retry, logged_at)
        while len(self._locked) > MAX_LOCKED:
            self._locked.popitem(last=False)
        return self._refusal(retry)

    def _refusal(self, seconds: float) -> TooManyRequests:
        retry = max(1, int(seconds + 0.999))
        return TooManyRequests(
            f"Too many failed authentications from this address. Try again in {retry} seconds.",
            headers={"Retry-After": str(retry)},
            retryAfter=retry,
        )
