"""Rate limiting: token buckets per client (address or API-key user), standard headers and the aiohttp middleware."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, MutableMapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Literal, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .apikeys import ApiKeys, authenticate
from .errors import ConveyorError, TooManyRequests
from .identity import Client
from .keys import CLIENT
from .settings import Settings

logger = logging.getLogger(__name__)

Bucket = Literal["submit", "read"]

# (allowed, tokens_left, seconds_until_full, seconds_until_next_token). A plain tuple, not a NamedTuple: building
# one is 40x cheaper and this is the limiter's hot path.
Take = tuple[bool, int, float, float]

# Float slack for "exactly one token left": repeated additions of the refill interval must not turn the 10th of
# 10 simultaneous requests into a 429. A microsecond early is harmless.
_EPS = 1e-6
_READ_PATHS = frozenset({"/queue", "/runtimes", "/openapi.json", "/ws"})
_QUOTA_FREE_STATUSES = frozenset({401, 403})


class LimiterStore(Protocol):
    """Where bucket state lives. Each call is one atomic step, so a Redis store can run it as one Lua script.

    A bucket is described by one number, the time at which it is full again; a key with no state is a full bucket.
    `now` is the caller's clock in epoch seconds (a shared store may use its own clock instead, e.g. Redis TIME).
    """

    async def take(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        """Take one token if there is one. Denied calls change nothing."""

    async def refund(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        """Give one token back (a request refused for a reason that must not cost quota); `allowed` is True."""

    async def sweep(self, now: float) -> int:
        """Forget buckets that are full again; return how many. A store with key expiry may return 0."""

    async def close(self) -> None:
        """Release connections."""


class MemoryLimiterStore:
    """Buckets in a dict of `key -> time full again`, in one process. Also usable synchronously (`take_now`)."""

    def __init__(self) -> None:
        self._full_at: dict[str, float] = {}
        # Times are kept relative to the first `now` seen: near 1.7e9 a float step is 2.4e-7 s, which adds up over
        # a burst; near 0 it is negligible. The subtraction is exact (Sterbenz) for nearby values.
        self._origin: float | None = None

    def __len__(self) -> int:
        return len(self._full_at)

    def take_now(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        """The synchronous fast path of `take`."""
        origin = self._origin
        if origin is None:
            origin = self._origin = now
        t = now - origin
        interval = 1.0 / rate_per_s
        backlog = self._full_at.get(key, t) - t  # seconds of refill owed before the bucket is full
        if backlog < 0.0:
            backlog = 0.0
        slack = (capacity - 1) * interval - backlog
        if slack >= -_EPS:
            backlog += interval
            self._full_at[key] = t + backlog
            return True, int(capacity - backlog * rate_per_s + _EPS), backlog, 0.0
        return False, 0, backlog, -slack

    def refund_now(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        """The synchronous form of `refund`."""
        full_at = self._full_at.get(key)
        if full_at is None or self._origin is None:
            return True, capacity, 0.0, 0.0
        t = now - self._origin
        backlog = full_at - 1.0 / rate_per_s - t
        if backlog <= 0.0:
            del self._full_at[key]
            return True, capacity, 0.0, 0.0
        self._full_at[key] = t + backlog
        return True, int(capacity - backlog * rate_per_s + _EPS), backlog, 0.0

    def sweep_now(self, now: float) -> int:
        """Drop full buckets. Rebuilds the dict, because a dict never shrinks its table when keys are deleted."""
        if self._origin is None:
            return 0
        t = now - self._origin
        before = len(self._full_at)
        self._full_at = {key: full_at for key, full_at in self._full_at.items() if full_at > t}
        if not self._full_at:
            self._origin = None
        return before - len(self._full_at)

    async def take(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        return self.take_now(key, rate_per_s, capacity, now)

    async def refund(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        return self.refund_now(key, rate_per_s, capacity, now)

    async def sweep(self, now: float) -> int:
        return self.sweep_now(now)

    async def close(self) -> None:
        self._full_at.clear()


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
        return math.ceil(self.until_full_s - _EPS) if self.until_full_s > 0.0 else 0

    @property
    def retry_after_s(self) -> int:
        """0 when allowed, else whole seconds (>= 1) until the next token."""
        return 0 if self.allowed else max(1, math.ceil(self.until_token_s - _EPS))


def make_policy(name: str, requests: int, burst: int, window_s: float) -> Policy:
    """`requests` tokens per `window_s`, bucket size `burst`.

    The IETF policy advertises q = the bucket size and w = the time to refill it from empty. With the defaults that
    is exactly q=10;w=60, and with any burst it keeps `r <= q` and `t <= w` true.
    """
    rate_per_s = requests / window_s
    fill_s = max(1, math.ceil(burst / rate_per_s - _EPS))
    return Policy(name=name, rate_per_s=rate_per_s, capacity=burst, header=f'"{name}";q={burst};w={fill_s}')


class RateLimiter:
    """Token buckets per client and bucket name ("submit": job submissions, "read": other API calls).

    API-key users are limited per user and may carry their own submit rate and burst; everyone else per address.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: LimiterStore | None = None,
        clock: Callable[[], float] = time.time,
        sweep_interval_s: float = 60.0,
    ) -> None:
        self.store: LimiterStore = store if store is not None else MemoryLimiterStore()
        # A local store is called synchronously: no coroutine per decision (see bench/bench_ratelimit.py).
        self._take_now = self.store.take_now if isinstance(self.store, MemoryLimiterStore) else None
        self._clock = clock
        self._sweep_interval_s = sweep_interval_s
        self._window_s = settings.rate_limit_window_ms / 1000.0
        self._requests = settings.rate_limit_requests
        self._submit = make_policy("submit", settings.rate_limit_requests, settings.effective_burst, self._window_s)
        read = settings.rate_limit_read_requests
        self._read = make_policy("read", read, read, self._window_s)
        self._overrides: dict[tuple[int | None, int | None], Policy] = {}
        self._task: asyncio.Task[None] | None = None

    def policy(self, client: Client, bucket: Bucket) -> Policy:
        """The bucket shape for this client. Per-user overrides apply to the submit bucket only."""
        if bucket == "read":
            return self._read
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
            return Decision(policy, now, *self._take_now(key, policy.rate_per_s, policy.capacity, now))
        return Decision(policy, now, *await self.store.take(key, policy.rate_per_s, policy.capacity, now))

    def hit_now(self, client: Client, bucket: Bucket) -> Decision:
        """`hit` without a coroutine, for a local (in-memory) store only."""
        if self._take_now is None:
            raise TypeError("hit_now needs a MemoryLimiterStore")
        policy = self.policy(client, bucket)
        now = self._clock()
        key = f"{bucket}:{client.key}"
        return Decision(policy, now, *self._take_now(key, policy.rate_per_s, policy.capacity, now))

    async def refund(self, client: Client, bucket: Bucket) -> Decision:
        """Give back the token of a request refused with 401/403 (those must not consume quota)."""
        policy = self.policy(client, bucket)
        now = self._clock()
        taken = await self.store.refund(f"{bucket}:{client.key}", policy.rate_per_s, policy.capacity, now)
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


def bucket_for(method: str, path: str) -> Bucket | None:
    """Which bucket a request draws from; None for pages, static files, /health and /metrics."""
    if path == "/run":
        return "submit" if method == "POST" else None
    if path in _READ_PATHS or path.startswith("/queue/"):
        return "read"
    return None


def ratelimit_middleware(
    limiter: RateLimiter,
    keys: ApiKeys,
    settings: Settings,
    *,
    on_denied: Callable[[], None] | None = None,
) -> Middleware:
    """Identify every caller into `request[CLIENT]`, limit the API routes and add the headers to their responses.

    Place it inside the error-to-JSON middleware: it raises Unauthorized / TooManyRequests. `on_denied` counts 429s.
    """

    @web.middleware
    async def ratelimit(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Before any bucket: a bad key is a 401 that costs no quota.
        client = authenticate(request, keys, settings)
        request[CLIENT] = client
        bucket = bucket_for(request.method, request.path)
        if bucket is None:
            return await handler(request)
        decision = await limiter.hit(client, bucket)
        if not decision.allowed:
            if on_denied is not None:
                on_denied()
            raise_if_denied(decision, bucket)
        try:
            response = await handler(request)
        except (ConveyorError, web.HTTPException) as exc:
            if exc.status in _QUOTA_FREE_STATUSES:
                decision = await limiter.refund(client, bucket)
            _merge(exc.headers, decision_headers(decision, bucket))
            raise
        # A prepared response (a WebSocket, a stream) has sent its headers already.
        if not response.prepared:
            _merge(response.headers, decision_headers(decision, bucket))
        return response

    return ratelimit


def _merge(target: MutableMapping[str, str], headers: Mapping[str, str]) -> None:
    # The handler's own headers win (a 503's Retry-After is about the queue, not the bucket).
    present = {name.lower() for name in target}
    for name, value in headers.items():
        if name.lower() not in present:
            target[name] = value
