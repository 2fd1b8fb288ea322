"""One pool of Redis connections per instance: the job store, the rate limiter and the history share it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from bench import redisserver
from server.errors import BackendUnavailable
from server.queue.jobs import Job
from server.queue.redis.store import RedisStore
from server.queue.redispool import command_client, command_pool
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


def test_commands_are_packed_by_hiredis_into_the_bytes_redis_py_sends() -> None:
    pool = command_pool("redis://127.0.0.1:1/0")
    ours = pool.connection_class(**pool.connection_kwargs)
    theirs = Connection()
    for args in [
        ("EVALSHA", "abc", 3, b"x", 1.5, 0.1, 1796634651277.7854, "é", memoryview(b"mv"), 2**70),
        ("CLIENT SETNAME", "name"),  # a command of two words, split as redis-py does
        (b"CONFIG GET", b"maxmemory"),
    ]:
        assert ours.pack_command(*args) == [b"".join(bytes(chunk) for chunk in theirs.pack_command(*args))]
    # One buffer for a large argument: the C packer is the one used (redis-py's Python packer sends it in chunks;
    # a redis-py recent enough to pack with hiredis itself sends one buffer too).
    assert len(ours.pack_command("SET", "k", "x" * 10_000)) == 1
    with pytest.raises(DataError):  # what hiredis refuses, redis-py refuses with its own error
        ours.pack_command("SET", "k", None)
    with pytest.raises(UnicodeEncodeError):
        ours.pack_command("SET", "k", "\udc80")


def test_the_url_still_chooses_the_connection_class() -> None:
    assert issubclass(command_pool("unix:///tmp/conveyor-none.sock").connection_class, UnixDomainSocketConnection)
    assert issubclass(command_pool("rediss://127.0.0.1:1/0").connection_class, SSLConnection)


async def test_values_packed_in_c_come_back_from_redis_as_sent() -> None:
    with redisserver.redis_server() as url:
        client: Any = command_client(command_pool(url))
        try:
            await client.hset("h", mapping={"float": 0.1, "int": 2**62, "text": "é—😀", "bytes": b"\x00\xff"})
            assert await client.hmget("h", ["float", "int", "text"]) == ["0.1", str(2**62), "é—😀"]
            assert await client.hstrlen("h", "bytes") == 2
        finally:
            await client.aclose(close_connection_pool=True)


async def test_a_stalled_redis_ends_every_command_within_the_pool_timeout() -> None:
    """One deadline per command (the wait for a connection, the send and the reply), for plain commands, scripts and
    pipelines alike; a stalled connection is dropped, never handed out again with its late reply."""
    with redisserver.redis_server() as url:
        client: Any = command_client(command_pool(url, pool_size=2, timeout_ms=200))
        store = RedisStore(url, prefix="stall", timeout_ms=200)
        await store.start()
        try:
            await client.set("k", "before")
            with redis.Redis.from_url(url) as direct:
                direct.client_pause(3000, all=False)  # writes and scripts stall 15 timeouts; reads go on
                try:
                    with pytest.raises(redis.exceptions.TimeoutError):
                        await client.set("k", "during")
                    with pytest.raises(redis.exceptions.TimeoutError):
                        await client.eval("return redis.call('SET', KEYS[1], 'script')", 1, "k")
                    pipe = client.pipeline(transaction=True)
                    pipe.set("k", "pipeline")
                    with pytest.raises(redis.exceptions.TimeoutError):
                        await pipe.execute()
                    with pytest.raises(BackendUnavailable):
                        await store.enqueue(Job(language="python", code=""), max_queue_size=10, max_concurrent=1)
                    assert [await client.get("k") for _ in range(4)] == ["before"] * 4
                finally:
                    direct.client_unpause()
        finally:
            await store.close()
            await client.aclose(close_connection_pool=True)
