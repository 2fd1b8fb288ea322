"""Statistics history: bounded rings on both stores, one sample per slot across instances, columns and the endpoint."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from bench import redisserver
from server.doors.history import (
    HISTORY,
    MAX_POINTS,
    HistorySampler,
    HistoryStore,
    MemoryHistory,
    RedisHistory,
    Sample,
    columns,
    sample_from,
)
from server.errors import BackendUnavailable
from server.keys import QUEUE
from tests.conftest import AppClientFactory, free_port

STATS: dict[str, Any] = {
    "totalProcessed": 10,
    "totalCompleted": 8,
    "totalFailed": 2,
    "queueLength": 3,
    "runningCount": 2,
    "waitTime": {"p50": 1.5, "p95": 9.0},
    "executionTime": {"p50": 20.0, "p95": 40.0},
}


def sample(t_s: float, processed: float, queue_length: float = 0, **extra: float) -> Sample:
    s = sample_from({**STATS, "totalProcessed": processed, "queueLength": queue_length}, int(t_s * 1000))
    s.update(extra)
    return s


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeQueue:
    """Only what the sampler reads: stats."""

    def __init__(self) -> None:
        self.processed = 0

    async def stats(self) -> dict[str, Any]:
        return {**STATS, "totalProcessed": self.processed}


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Factory of stores of the parametrised kind; Redis ones share the test's (emptied) redis-server."""
    made: list[HistoryStore] = []

    def make(capacity: int) -> HistoryStore:
        store: HistoryStore
        if request.param == "redis":
            store = RedisHistory(request.getfixturevalue("redis_url"), prefix="histtest", capacity=capacity)
        else:
            store = MemoryHistory(capacity)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


async def test_the_ring_keeps_the_newest_capacity_samples(make_store: Any) -> None:
    store = make_store(5)
    for i in range(12):
        assert await store.append(sample(i * 5, i))
    kept = await store.latest(100)
    assert [s["processed"] for s in kept] == [7, 8, 9, 10, 11]
    assert [s["processed"] for s in await store.latest(2)] == [10, 11]
    if isinstance(store, RedisHistory):
        assert await store._redis.llen(store.key) == 5


async def test_instances_sampling_the_same_slot_store_one_sample(make_store: Any) -> None:
    # Two samplers on one store stand for two instances on one Redis (or, in memory, a repeated tick).
    store = make_store(100)
    clock = FakeClock(1_800_000_002.0)
    a = HistorySampler(FakeQueue(), store, clock=clock)  # type: ignore[arg-type]
    b = HistorySampler(FakeQueue(), store, clock=clock)  # type: ignore[arg-type]
    assert await a.sample() is True
    clock.now += 1.5  # still the same 5 s slot
    assert await b.sample() is False
    clock.now += 5
    assert await b.sample() is True
    assert [s["t"] for s in await store.latest(10)] == [1_800_000_000_000, 1_800_000_005_000]


async def test_a_second_instance_store_sees_the_first_ones_samples(make_store: Any) -> None:
    first, second = make_store(100), make_store(100)
    await first.append(sample(0, 1))
    shared = await second.latest(10)
    assert len(shared) == (1 if isinstance(first, RedisHistory) else 0)


async def test_unreachable_redis_is_a_503_not_a_traceback() -> None:
    store = RedisHistory(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(BackendUnavailable):
            await store.latest(10)
        with pytest.raises(BackendUnavailable):
            await store.append(sample(0, 0))
    finally:
        await store.close()


def test_throughput_is_the_counter_delta_over_time() -> None:
    samples = [sample(0, 0), sample(5, 10), sample(10, 40), sample(15, 40)]
    cols = columns(samples, 5.0)
    assert cols["t"] == [0, 5000, 10000, 15000]
    assert cols["processed"] == [0, 10, 40, 40]
    assert cols["throughput"] == [None, 2.0, 6.0, 0.0]
    assert cols["queueLength"] == [0, 0, 0, 0]
    assert cols["waitP95"] == [9.0] * 4


def test_gaps_and_counter_resets_break_the_throughput_line() -> None:
    # A 60 s hole (the server was down) and a restarted in-memory server whose counter began again at 0.
    samples = [sample(0, 0), sample(5, 5), sample(65, 9), sample(70, 2), sample(75, 7)]
    assert columns(samples, 5.0)["throughput"] == [None, 1.0, None, None, 1.0]


def test_long_ranges_are_merged_keeping_peaks() -> None:
    n = MAX_POINTS * 3
    samples = [sample(i * 5, i * 2, queue_length=50 if i == 1000 else 1) for i in range(n)]
    cols = columns(samples, 5.0)
    assert len(cols["t"]) == MAX_POINTS
    assert max(v for v in cols["queueLength"] if v is not None) == 50  # the one-sample spike survives
    assert set(cols["throughput"][1:]) == {0.4}  # 2 jobs per 5 s, whatever the bucket size


async def test_history_endpoint_serves_the_ranges(app_client: AppClientFactory) -> None:
    client = await app_client()
    sampler = client.app[HISTORY]
    clock = FakeClock()
    sampler._clock = clock
    queue = FakeQueue()
    sampler.queue = queue  # type: ignore[assignment]
    await sampler.store.close()  # drop the sample the running app took at start-up, on the real clock
    for _ in range(200):
        clock.now += 5
        queue.processed += 10
        await sampler.sample()
    resp = await client.get("/queue/history", params={"range": "15m"})
    assert resp.status == 200
    body = await resp.json()
    assert (body["range"], body["intervalMs"], body["now"]) == ("15m", 5000, int(clock.now * 1000))
    assert len(body["series"]["t"]) == 181  # every 5 s over the last 15 minutes, both ends included
    assert body["series"]["throughput"][1:] == [2.0] * 180
    assert set(body["series"]) == {
        "t",
        "processed",
        "throughput",
        "queueLength",
        "running",
        "waitP50",
        "waitP95",
        "execP50",
        "execP95",
    }
    body = await (await client.get("/queue/history", params={"range": "1h"})).json()
    assert len(body["series"]["t"]) == 200
    assert "X-RateLimit-Remaining" in resp.headers  # a read call, limited like the other /queue routes


async def test_history_endpoint_refuses_unknown_ranges(app_client: AppClientFactory) -> None:
    client = await app_client()
    resp = await client.get("/queue/history", params={"range": "1y"})
    assert resp.status == 400
    body = await resp.json()
    assert body["field"] == "range" and body["valid"] == ["15m", "1h", "24h"]


async def test_the_running_app_has_a_sample_at_once(app_client: AppClientFactory) -> None:
    client = await app_client()
    for _ in range(100):  # the sampler's task takes its first sample as soon as it runs
        body = await (await client.get("/queue/history")).json()
        if body["series"]["t"]:
            break
        await asyncio.sleep(0.05)
    assert len(body["series"]["t"]) == 1


@pytest.mark.redis
async def test_a_stalled_redis_is_one_warning_within_the_instance_timeout(
    app_client: AppClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The history's Redis commands end within REDIS_TIMEOUT_MS (they waited a hard-coded 5 s), and an outage is
    logged once, without a traceback, however many samples it costs."""
    caplog.set_level(logging.INFO, logger="server.doors.history")
    with redisserver.redis_server() as url:
        client = await app_client(redis_url=url, redis_timeout_ms=300)
        sampler = client.app[HISTORY]
        ours = HistorySampler(client.app[QUEUE], sampler.store)  # the app's own ticks on a clock of their own
        with redis.Redis.from_url(url) as direct:
            direct.client_pause(4000, all=False)  # writes (and scripts) stall 4 s; reads go on
            try:
                with pytest.raises(BackendUnavailable):
                    await sampler.sample()
                caplog.clear()
                for _ in range(3):
                    await ours.tick()
            finally:
                direct.client_unpause()
        await ours.tick()
    records = [r for r in caplog.records if r.name == "server.doors.history"]
    # Ours, and the app's own sampler if its clock ticked meanwhile: one warning each at most, never a traceback.
    assert all(r.exc_info is None and r.levelname in ("WARNING", "INFO") for r in records), records
    assert 1 <= sum(r.levelname == "WARNING" for r in records) <= 2, records
    assert any("sampling again" in r.getMessage() for r in records if r.levelname == "INFO"), records
