"""Statistics history: queue stats sampled on an interval into a bounded ring, served to the dashboard's charts."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from itertools import islice
from typing import Any, Protocol, TypedDict

import orjson
from aiohttp import web

from ..errors import BackendUnavailable, BadRequest
from ..keys import QUEUE, SETTINGS
from ..queue import QueueBackend
from ..queue.loops import raise_if_cancelling, stop_task
from ..queue.redispool import command_client, command_pool

logger = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 5.0
# 24 hours of samples: the longest range the dashboard offers. Full, that is 3.7 MB in this process (a sample as a
# dict of floats would take 12.5 MB) or 4 MB of JSON in Redis.
CAPACITY = int(24 * 3600 / SAMPLE_INTERVAL_S)
RANGES = {"15m": 15 * 60, "1h": 3600, "24h": 24 * 3600}
# A chart is at most this many points wide; longer ranges are merged into buckets of consecutive samples.
MAX_POINTS = 720
# Consecutive samples further apart than this many intervals have a gap between them (the server was down).
GAP_INTERVALS = 2.5

# Cumulative counters and gauges of one sample, by their name in the stats payload.
_COUNTERS = {
    "processed": "totalProcessed",
    "completed": "totalCompleted",
    "failed": "totalFailed",
    "timeout": "totalTimeout",
    "cancelled": "totalCancelled",
    "rejected": "totalRejected",
    "rateLimited": "totalRateLimited",
}
_GAUGES = {"queueLength": "queueLength", "running": "runningCount"}
_PERCENTILES = {"waitP50": ("waitTime", "p50"), "waitP95": ("waitTime", "p95")} | {
    "execP50": ("executionTime", "p50"),
    "execP95": ("executionTime", "p95"),
}
# A sample's fields in storage order (the memory store keeps each sample as an array of doubles).
FIELDS = ("t", *_COUNTERS, *_GAUGES, *_PERCENTILES)
# The series a history response carries, besides `t` (epoch ms), `processed` (the cumulative count, so a client can
# take a rate from any point to its live count) and `throughput` (jobs/s).
SERIES = (*_GAUGES, *_PERCENTILES)

Sample = dict[str, float]


class HistoryResponse(TypedDict):
    range: str
    intervalMs: int
    now: int
    series: dict[str, list[float | None]]


def sample_from(stats: Mapping[str, Any], t_ms: int) -> Sample:
    """One sample at `t_ms` from a stats snapshot: counters stay cumulative, so any two samples give a rate."""
    sample: Sample = {"t": t_ms}
    for name, key in (_COUNTERS | _GAUGES).items():
        sample[name] = float(stats.get(key) or 0)
    for name, (group, q) in _PERCENTILES.items():
        sample[name] = float((stats.get(group) or {}).get(q) or 0)
    return sample


class HistoryStore(Protocol):
    """Where samples live: newest appended last, at most `capacity`, one per interval slot."""

    capacity: int

    async def append(self, sample: Sample) -> bool:
        """Store the sample unless one for its slot (or a later one) is there already; True when stored."""

    async def latest(self, count: int) -> list[Sample]:
        """The newest `count` samples, oldest first."""

    async def close(self) -> None:
        """Release connections."""


class MemoryHistory:
    """Samples of this process in a deque of arrays (about 220 bytes each): the oldest falls out at `capacity`."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._samples: deque[array[float]] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._samples)

    async def append(self, sample: Sample) -> bool:
        if self._samples and self._samples[-1][0] >= sample["t"]:
            return False
        self._samples.append(array("d", (sample[name] for name in FIELDS)))
        return True

    async def latest(self, count: int) -> list[Sample]:
        newest = list(islice(reversed(self._samples), count))
        return [dict(zip(FIELDS, values, strict=True)) for values in reversed(newest)]

    async def close(self) -> None:
        self._samples.clear()


# KEYS[1]: the list (newest first). ARGV: sample JSON, its slot time (ms), capacity. Every instance samples the
# shared queue at the same slot-aligned times; the first to arrive writes, the others find its sample and skip, so N
# instances keep one history without electing a sampler.
_APPEND = """
local head = redis.call('LINDEX', KEYS[1], 0)
if head and tonumber(cjson.decode(head).t) >= tonumber(ARGV[2]) then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[3]) - 1)
return 1
"""


class RedisHistory:
    """One history for every instance on a Redis list `<prefix>:history`, newest first, trimmed to `capacity`."""

    def __init__(
        self, url: str, *, prefix: str = "conveyor", capacity: int = CAPACITY, timeout_ms: int = 3000, pool: Any = None
    ) -> None:
        self.capacity = capacity
        # The instance's pool when given (its owner closes it), so REDIS_POOL_SIZE and REDIS_TIMEOUT_MS hold here too.
        self._owns_pool = pool is None
        if pool is None:
            pool = command_pool(url, pool_size=2, timeout_ms=timeout_ms)
        # Typed loosely, as the queue's client: redis-py's stubs union sync/async returns.
        self._redis: Any = command_client(pool)
        self.key = f"{prefix}:history"
        self._append = self._redis.register_script(_APPEND)

    async def append(self, sample: Sample) -> bool:
        args: list[str | float] = [orjson.dumps(sample).decode(), sample["t"], self.capacity]
        with self._unavailable():
            return bool(await self._append(keys=[self.key], args=args))

    async def latest(self, count: int) -> list[Sample]:
        with self._unavailable():
            raw = await self._redis.lrange(self.key, 0, max(0, count - 1))
        return [orjson.loads(item) for item in reversed(raw)]

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        from redis.exceptions import RedisError

        try:
            yield
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"The statistics history cannot be reached ({exc}); try again.") from None

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=self._owns_pool)


class HistorySampler:
    """Samples the queue's stats at every slot boundary (multiples of the interval since the epoch)."""

    def __init__(
        self,
        queue: QueueBackend,
        store: HistoryStore,
        *,
        interval_s: float = SAMPLE_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.store = store
        self.interval_s = interval_s
        self._clock = clock
        self._failing = False

    def slot_ms(self, now: float) -> int:
        """The start of the interval slot `now` falls in, in epoch milliseconds."""
        interval_ms = round(self.interval_s * 1000)
        return int(now * 1000) // interval_ms * interval_ms

    async def sample(self) -> bool:
        """Take one sample now; True when this call stored it (another instance may have been first)."""
        stats = await self.queue.stats()
        return await self.store.append(sample_from(stats, self.slot_ms(self._clock())))

    async def run(self) -> None:
        while True:
            await self.tick()
            now = self._clock()
            await asyncio.sleep(self.interval_s - (now % self.interval_s) + 0.01)

    async def tick(self) -> None:
        """One sample, its failure logged: an unreachable store is one warning until it answers again (every
        instance samples, so a traceback per tick and instance would bury the log during an outage)."""
        try:
            await self.sample()
        except BackendUnavailable as exc:
            raise_if_cancelling()
            if not self._failing:
                logger.warning("statistics history: not sampled until the store answers (%s)", exc.message)
            self._failing = True
            return
        except Exception:
            raise_if_cancelling()
            logger.exception("statistics history: sampling failed")
            return
        if self._failing:
            logger.info("statistics history: sampling again")
            self._failing = False

    async def history(self, range_name: str) -> HistoryResponse:
        """The columns of one range, merged into at most MAX_POINTS buckets."""
        count = math.ceil(RANGES[range_name] / self.interval_s) + 1
        samples = await self.store.latest(count)
        now = self._clock()
        horizon = self.slot_ms(now) - RANGES[range_name] * 1000
        samples = [s for s in samples if s["t"] >= horizon]
        return {
            "range": range_name,
            "intervalMs": round(self.interval_s * 1000),
            "now": int(now * 1000),
            "series": columns(samples, self.interval_s),
        }


HISTORY = web.AppKey("history", HistorySampler)


def columns(samples: list[Sample], interval_s: float) -> dict[str, list[float | None]]:
    """Column arrays for the charts. Consecutive samples are merged `step` at a time: gauges and percentiles keep
    the bucket's highest value (a short spike must stay visible), throughput is the bucket's processed delta over its
    time span, null across a gap or a counter reset (an in-memory server restarted)."""
    step = max(1, math.ceil(len(samples) / MAX_POINTS))
    out: dict[str, list[float | None]] = {"t": [], "processed": [], "throughput": [], **{name: [] for name in SERIES}}
    previous: Sample | None = None
    for start in range(0, len(samples), step):
        bucket = samples[start : start + step]
        last = bucket[-1]
        out["t"].append(last["t"])
        out["processed"].append(last["processed"])
        for name in SERIES:
            out[name].append(max(s[name] for s in bucket))
        rate: float | None = None
        if previous is not None:
            span_s = (last["t"] - previous["t"]) / 1000
            delta = last["processed"] - previous["processed"]
            if 0 < span_s <= GAP_INTERVALS * interval_s * step and delta >= 0:
                rate = round(delta / span_s, 3)
        out["throughput"].append(rate)
        previous = last
    return out


def create_store(redis_url: str, prefix: str, *, pool: Any = None) -> HistoryStore:
    if redis_url:
        return RedisHistory(redis_url, prefix=prefix, pool=pool)
    return MemoryHistory()


async def get_history(request: web.Request) -> web.Response:
    """GET /queue/history?range=15m|1h|24h: the dashboard's chart series."""
    range_name = request.query.get("range", "15m")
    if range_name not in RANGES:
        raise BadRequest(f"range must be one of {', '.join(RANGES)}.", field="range", valid=list(RANGES))
    body = await request.app[HISTORY].history(range_name)
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def setup_history(app: web.Application, *, redis_pool: Any = None) -> None:
    """Sample the queue's stats while the app runs and serve them. Call after the queue's cleanup context is added."""

    async def sampler_ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        store = create_store(settings.redis_url, settings.redis_prefix, pool=redis_pool)
        sampler = HistorySampler(app[QUEUE], store)
        app[HISTORY] = sampler
        task = asyncio.create_task(sampler.run(), name="conveyor-history")
        try:
            yield
        finally:
            await stop_task(task)
            await sampler.store.close()

    app.cleanup_ctx.append(sampler_ctx)
    app.router.add_get("/queue/history", get_history)
