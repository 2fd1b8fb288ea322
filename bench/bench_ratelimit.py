"""Rate limiter benchmark: decisions/s on 10,000 distinct keys, ours against the `limits` library in the same run.

Run by hand: `python bench/bench_ratelimit.py` (or `python -m bench.bench_ratelimit`). Every path reads the wall
clock once per decision, as the real ones do (and as `limits` does internally). When `redis-server` is installed
the run also measures the Redis store, on a throwaway server this script starts on a free port.
"""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

if __package__ in (None, ""):  # run as a script: make `server` importable from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from server.access.identity import Client, anonymous
from server.access.ratelimit import MemoryLimiterStore, RateLimiter
from server.settings import Settings

N_KEYS = 10_000
N_DECISIONS = 1_000_000
ROUNDS = 3
SETTINGS = Settings()  # 10 per 60 s, burst 10: each key is hit 100 times, so most decisions are denials
# A Redis decision is a round trip, tens of microseconds: a smaller workload, the first N_REDIS_KEYS keys hit 20
# times each (half allowed), one decision in flight or REDIS_CONCURRENCY at once (requests arriving together).
N_REDIS_KEYS = 5_000
N_REDIS_DECISIONS = 100_000
REDIS_CONCURRENCY = 50


def _ips() -> list[str]:
    return [f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(N_KEYS)]


def _workload() -> list[int]:
    return [i % N_KEYS for i in range(N_DECISIONS)]


def bench_store_take_now(order: list[int]) -> int:
    store = MemoryLimiterStore()
    keys = [f"submit:ip:{ip}" for ip in _ips()]
    rate = SETTINGS.rate_limit_requests / (SETTINGS.rate_limit_window_ms / 1000)
    capacity = SETTINGS.effective_burst
    take, clock = store.take_now, time.time
    allowed = 0
    for i in order:
        allowed += take(keys[i], rate, capacity, clock())[0]
    return allowed


def bench_store_take_async(order: list[int]) -> int:
    async def run() -> int:
        store = MemoryLimiterStore()
        keys = [f"submit:ip:{ip}" for ip in _ips()]
        rate = SETTINGS.rate_limit_requests / (SETTINGS.rate_limit_window_ms / 1000)
        capacity = SETTINGS.effective_burst
        take, clock = store.take, time.time
        allowed = 0
        for i in order:
            allowed += (await take(keys[i], rate, capacity, clock()))[0]
        return allowed

    return asyncio.run(run())


def _clients() -> list[Client]:
    return [anonymous(ip) for ip in _ips()]


def bench_limiter_hit_now(order: list[int]) -> int:
    limiter = RateLimiter(SETTINGS)
    clients = _clients()
    hit = limiter.hit_now
    allowed = 0
    for i in order:
        allowed += hit(clients[i], "submit").allowed
    return allowed


def bench_limiter_hit(order: list[int]) -> int:
    async def run() -> int:
        limiter = RateLimiter(SETTINGS)
        clients = _clients()
        hit = limiter.hit
        allowed = 0
        for i in order:
            allowed += (await hit(clients[i], "submit")).allowed
        return allowed

    return asyncio.run(run())


def _bench_limits(strategy: type[MovingWindowRateLimiter] | type[FixedWindowRateLimiter], order: list[int]) -> int:
    storage = MemoryStorage()
    limiter = strategy(storage)
    item = RateLimitItemPerMinute(SETTINGS.rate_limit_requests)
    keys = [f"ip:{ip}" for ip in _ips()]
    hit = limiter.hit
    allowed = 0
    for i in order:
        allowed += hit(item, keys[i])
    return allowed


def bench_limits_moving(order: list[int]) -> int:
    return _bench_limits(MovingWindowRateLimiter, order)


def bench_limits_fixed(order: list[int]) -> int:
    return _bench_limits(FixedWindowRateLimiter, order)


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway redis-server, or None when it (or the redis client) is not installed: the Redis rows are optional."""
    try:
        from bench.redisserver import available
        from bench.redisserver import redis_server as start
    except ImportError:
        yield None
        return
    if not available():
        yield None
        return
    with start() as url:
        yield url


def _flush(url: str) -> None:
    from bench.redisserver import flush

    flush(url)


def bench_redis_store_take(url: str) -> Callable[[list[int]], int]:
    def run_all(order: list[int]) -> int:
        from server.access.ratelimit.redis import RedisLimiterStore

        async def run() -> int:
            store = RedisLimiterStore(url)
            keys = [f"submit:ip:{ip}" for ip in _ips()]
            rate = SETTINGS.rate_limit_requests / (SETTINGS.rate_limit_window_ms / 1000)
            capacity = SETTINGS.effective_burst
            take, clock = store.take, time.time
            allowed = 0
            try:
                for i in order:
                    allowed += (await take(keys[i], rate, capacity, clock()))[0]
            finally:
                await store.close()
            return allowed

        _flush(url)
        return asyncio.run(run())

    return run_all


def bench_redis_limiter_hit_concurrent(url: str) -> Callable[[list[int]], int]:
    def run_all(order: list[int]) -> int:
        async def run() -> int:
            limiter = RateLimiter(Settings(redis_url=url))
            clients = _clients()

            async def worker(part: list[int]) -> int:
                hit = limiter.hit
                allowed = 0
                for i in part:
                    allowed += (await hit(clients[i], "submit")).allowed
                return allowed

            try:
                parts = [order[n::REDIS_CONCURRENCY] for n in range(REDIS_CONCURRENCY)]
                return sum(await asyncio.gather(*(worker(part) for part in parts)))
            finally:
                await limiter.close()

        _flush(url)
        return asyncio.run(run())

    return run_all


def measure(fn: Callable[[list[int]], int], order: list[int]) -> tuple[float, int]:
    """Best of ROUNDS, in decisions/s; a fresh limiter each round so every round sees the same workload."""
    best = 0.0
    allowed = 0
    for _ in range(ROUNDS):
        gc.collect()
        start = time.perf_counter()
        allowed = fn(order)
        best = max(best, len(order) / (time.perf_counter() - start))
    return best, allowed


def sweep_ms(n_keys: int) -> float:
    """How long the periodic sweep holds the event loop when `n_keys` buckets are all full again."""
    store = MemoryLimiterStore()
    for i in range(n_keys):
        store.take_now(f"submit:ip:{i}", 1 / 6, 10, 1000.0)
    start = time.perf_counter()
    removed = store.sweep_now(1060.0)
    elapsed = time.perf_counter() - start
    assert removed == n_keys and len(store) == 0
    return elapsed * 1000


def main() -> None:
    order = _workload()
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores")
    print(f"{N_DECISIONS:,} decisions over {N_KEYS:,} keys, limit {SETTINGS.rate_limit_requests}/min, best of {ROUNDS}")
    cases: list[tuple[str, Callable[[list[int]], int]]] = [
        ("MemoryLimiterStore.take_now (sync fast path)", bench_store_take_now),
        ("await MemoryLimiterStore.take", bench_store_take_async),
        ("RateLimiter.hit_now (sync, Decision)", bench_limiter_hit_now),
        ("await RateLimiter.hit (Decision)", bench_limiter_hit),
        ("limits MovingWindowRateLimiter + MemoryStorage", bench_limits_moving),
        ("limits FixedWindowRateLimiter + MemoryStorage", bench_limits_fixed),
    ]
    results: dict[str, float] = {}
    for name, fn in cases:
        rate, allowed = measure(fn, order)
        results[name] = rate
        print(f"  {name:<48} {rate:>12,.0f} decisions/s   ({allowed:,} allowed)")
    moving = results["limits MovingWindowRateLimiter + MemoryStorage"]
    print("ratio to limits MovingWindowRateLimiter:")
    for name, rate in list(results.items())[:4]:
        print(f"  {name:<48} {rate / moving:>6.1f}x")
    print(f"sweep of 100,000 full buckets: {sweep_ms(100_000):.1f} ms")
    with redis_server() as url:
        if url is None:
            print("Redis store: skipped (no redis-server or redis-py)")
            return
        redis_order = [i % N_REDIS_KEYS for i in range(N_REDIS_DECISIONS)]
        print(
            f"Redis store (local redis-server, one Lua script per decision): {N_REDIS_DECISIONS:,} decisions over"
            f" {N_REDIS_KEYS:,} keys, best of {ROUNDS}"
        )
        redis_cases: list[tuple[str, Callable[[list[int]], int]]] = [
            ("await RedisLimiterStore.take (1 in flight)", bench_redis_store_take(url)),
            (
                f"await RateLimiter.hit on Redis ({REDIS_CONCURRENCY} in flight)",
                bench_redis_limiter_hit_concurrent(url),
            ),
        ]
        for name, fn in redis_cases:
            rate, allowed = measure(fn, redis_order)
            print(f"  {name:<48} {rate:>12,.0f} decisions/s   ({allowed:,} allowed)")


if __name__ == "__main__":
    main()
