"""One pool of Redis connections per instance: the job store, the rate limiter and the history share it."""

from __future__ import annotations

import asyncio

import pytest
import redis

from bench import redisserver
from tests.conftest import AppClientFactory

pytestmark = pytest.mark.redis


async def test_an_instance_holds_its_pool_size_and_no_more(app_client: AppClientFactory) -> None:
    with redisserver.redis_server() as url:
        client = await app_client(redis_url=url, redis_pool_size=4)
        for _ in range(3):  # bursts past the pool: limiter, store and history all want connections at once
            await asyncio.gather(
                *(client.get("/ratelimit") for _ in range(30)),
                *(client.get("/queue/status") for _ in range(30)),
                *(client.get("/queue/history") for _ in range(10)),
            )
        with redis.Redis.from_url(url) as direct:
            held = len(direct.client_list()) - 1  # not this one
        # REDIS_POOL_SIZE for commands, plus the job store's two blocking readers (events, wake-ups).
        assert held <= 4 + 2, f"{held} connections"
