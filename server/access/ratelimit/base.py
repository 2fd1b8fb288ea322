"""The rate limiter's contract: bucket stores behind `LimiterStore`, policies, decisions and their headers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

from ...errors import TooManyRequests

# "auth" counts failed authentications per address (server/access/lockout.py).
Bucket = Literal["submit", "read", "auth"]

# (allowed, tokens_left, seconds_until_full, seconds_until_next_token). A plain tuple, not a NamedTuple: building
# one is 40x cheaper and this is the limiter's hot path. Both durations are relative, so a store may answer from
# its own clock and the caller's `now` plus these durations still gives correct headers.
Take = tuple[bool, int, float, float]

# Float slack for "exactly one token left": repeated additions of the refill interval must not turn the 10th of
# 10 simultaneous requests into a 429. A microsecond early is harmless.
EPS = 1e-6


class LimiterStore(Protocol):
    """Where bucket state lives. Each call is one atomic step, so a Redis store can run it as one Lua script.

    A bucket is described by one number, the time at which it is full again; a key with no state is a full bucket.
    `now` is the caller's clock in epoch seconds (a shared store may use its own clock instead, e.g. Redis TIME).
    """

    async def take(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        """Take one token if there is one. Denied calls change nothing."""

    async def refund(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        """Give one token back (a request refused for a reason that must not cost quota); `allowed` is True."""

    async def peek(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        """What `take` would answer now, changing nothing (`allowed`: whether a token is there)."""

    async def sweep(self, now: float) -> int:
        """Forget buckets that are full again; return how many. A store with key expiry may return 0."""

    async def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True, slots=True)
class Policy:
    """One bucket's shape: `capacity` tokens, refilled at `rate_per_s`; `header` is its RateLimit-Policy item."""

    name: str
    rate_per_s: float
    capacity: int
    header: str


# Not frozen: a frozen dataclass costs ~5x more to build, and one is built per request. The integer header values
# are properties, computed only when headers are built (a WebSocket submission needs none of them).
@dataclass(slots=True)
class Decision:
    """The outcome of one hit: the store's answer plus what the response headers need."""

    policy: Policy
    now: float
    allowed: bool
    remaining: int
    until_full_s: float
    until_token_s: float  # 0 when allowed

    @property
    def limit(self) -> int:
        return self.policy.capacity

    @property
    def reset_epoch(self) -> int:
        """Unix seconds when the bucket is full again."""
        return math.ceil(self.now + self.until_full_s)

    @property
    def reset_after_s(self) -> int:
        """Seconds until the bucket is full again (RateLimit `t`)."""
        return math.ceil(self.until_full_s - EPS) if self.until_full_s > 0.0 else 0

    @property
    def retry_after_s(self) -> int:
        """0 when allowed, else whole seconds (>= 1) until the next token."""
        return 0 if self.allowed else max(1, math.ceil(self.until_token_s - EPS))


def make_policy(name: str, requests: int, burst: int, window_s: float) -> Policy:
    """`requests` tokens per `window_s`, bucket size `burst`.

    The IETF policy advertises q = the bucket size and w = the time to refill it from empty. With the defaults that
    is exactly q=10;w=60, and with any burst it keeps `r <= q` and `t <= w` true.
    """
    rate_per_s = requests / window_s
    fill_s = max(1, math.ceil(burst / rate_per_s - EPS))
    return Policy(name=name, rate_per_s=rate_per_s, capacity=burst, header=f'"{name}";q={burst};w={fill_s}')


def decision_headers(d: Decision, bucket: str) -> dict[str, str]:
    """X-RateLimit-* plus the IETF RateLimit / RateLimit-Policy fields (draft 11); Retry-After on a denial."""
    headers = {
        "X-RateLimit-Limit": str(d.limit),
        "X-RateLimit-Remaining": str(d.remaining),
        "X-RateLimit-Reset": str(d.reset_epoch),
        "RateLimit-Policy": d.policy.header,
        "RateLimit": f'"{bucket}";r={d.remaining};t={d.reset_after_s}',
    }
    if not d.allowed:
        headers["Retry-After"] = str(d.retry_after_s)
    return headers


def raise_if_denied(decision: Decision, bucket: str) -> None:
    """Raise TooManyRequests (429 with headers and `retryAfter`) unless the decision allowed the request."""
    if decision.allowed:
        return
    seconds = decision.retry_after_s
    unit = "second" if seconds == 1 else "seconds"
    raise TooManyRequests(
        f"Rate limit exceeded. Try again in {seconds} {unit}.",
        headers=decision_headers(decision, bucket),
        retryAfter=seconds,
    )
