"""The in-process bucket store: a dict of `key -> time full again`, with a synchronous fast path."""

from __future__ import annotations

from .base import EPS, Take


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
        if slack >= -EPS:
            backlog += interval
            self._full_at[key] = t + backlog
            return True, int(capacity - backlog * rate_per_s + EPS), backlog, 0.0
        return False, 0, backlog, -slack

    def peek_now(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        """The synchronous form of `peek`."""
        full_at = self._full_at.get(key)
        if full_at is None or self._origin is None:
            return True, capacity, 0.0, 0.0
        interval = 1.0 / rate_per_s
        backlog = max(0.0, full_at - (now - self._origin))
        slack = (capacity - 1) * interval - backlog
        if slack >= -EPS:
            return True, int(capacity - backlog * rate_per_s + EPS), backlog, 0.0
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
        return True, int(capacity - backlog * rate_per_s + EPS), backlog, 0.0

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

    async def peek(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        return self.peek_now(key, rate_per_s, capacity, now)

    async def sweep(self, now: float) -> int:
        return self.sweep_now(now)

    async def close(self) -> None:
        self._full_at.clear()
