"""Concurrent enqueues to the Redis store share pipelines; each call keeps its own answer, in the order called."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

from server.errors import QueueFull
from server.queue.jobs import Job
from server.queue.redis.autopipeline import MAX_BATCH
from server.queue.redis.store import RedisStore

pytestmark = pytest.mark.redis


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url, prefix="autopipeline")
    await store.start()
    yield store
    await store.close()


async def _enqueue(store: RedisStore, job: Job) -> Job | QueueFull:
    try:
        return await store.enqueue(job, max_queue_size=25, max_concurrent=0)
    except QueueFull as refused:
        return refused


async def test_concurrent_enqueues_are_each_answered_and_queued_in_the_order_called(store: RedisStore) -> None:
    jobs = [Job(language="python", code=str(i)) for i in range(40)]
    answers = await asyncio.gather(*(_enqueue(store, job) for job in jobs))
    # The first 25 calls fill the queue (they reach Redis in the order made); the rest are each refused.
    assert answers[:25] == jobs[:25]
    assert all(isinstance(answer, QueueFull) for answer in answers[25:])
    places = await store.positions([job.id for job in jobs])
    assert [places[job.id] for job in jobs] == [*range(1, 26), *[None] * 15]


async def test_a_lost_script_cache_is_loaded_again(store: RedisStore, redis_url: str) -> None:
    await _enqueue(store, Job(language="python", code="before"))
    with redis.Redis.from_url(redis_url) as direct:
        direct.script_flush()  # as a restarted Redis has it
    jobs = [Job(language="python", code=str(i)) for i in range(10)]
    assert await asyncio.gather(*(_enqueue(store, job) for job in jobs)) == jobs
    places = await store.positions([job.id for job in jobs])
    assert [places[job.id] for job in jobs] == list(range(2, 12))


async def test_a_caller_that_gives_up_leaves_the_others_answered(store: RedisStore) -> None:
    jobs = [Job(language="python", code=str(i)) for i in range(10)]
    calls = [asyncio.create_task(_enqueue(store, job)) for job in jobs]
    await asyncio.sleep(0)  # every call waiting on its answer
    calls[3].cancel()
    answers = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(answers[3], asyncio.CancelledError)
    assert [a for i, a in enumerate(answers) if i != 3] == [j for i, j in enumerate(jobs) if i != 3]


async def test_a_burst_past_one_pipeline_goes_in_the_next(store: RedisStore) -> None:
    jobs = [Job(language="python", code=str(i)) for i in range(MAX_BATCH + 44)]
    answers = await asyncio.gather(*(store.enqueue(job, max_queue_size=1000, max_concurrent=0) for job in jobs))
    assert answers == jobs
    places = await store.positions([job.id for job in jobs])
    assert [places[job.id] for job in jobs] == list(range(1, len(jobs) + 1))
