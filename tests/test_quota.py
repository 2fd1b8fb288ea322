"""GET /ratelimit: the caller's buckets as the next request finds them, on both stores, costing no token."""

from __future__ import annotations

import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from bench import redisserver
from server.access.ratelimit import LimiterStore, MemoryLimiterStore
from server.access.ratelimit.redis import RedisLimiterStore
from server.errors import BackendUnavailable
from tests.conftest import AppClientFactory

NOW = 1_800_000_000.0


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LimiterStore]:
    made: LimiterStore
    if request.param == "redis":
        made = RedisLimiterStore(request.getfixturevalue("redis_url"), prefix="quotatest")
    else:
        made = MemoryLimiterStore()
    yield made
    await made.close()


async def test_peek_answers_as_take_would_and_changes_nothing(store: LimiterStore) -> None:
    rate, capacity = 3 / 60, 3  # 3 per minute: nothing refills noticeably during the test, on either clock
    assert await store.peek("submit:a", rate, capacity, NOW) == (True, 3, 0.0, 0.0)
    for left in (2, 1, 0):
        allowed, remaining, _, _ = await store.take("submit:a", rate, capacity, NOW)
        assert (allowed, remaining) == (True, left)
        for _ in range(3):  # peeking repeatedly costs nothing
            peeked = await store.peek("submit:a", rate, capacity, NOW)
            assert peeked[:2] == (left > 0, left)
    allowed, _, until_full, until_token = await store.peek("submit:a", rate, capacity, NOW)
    assert not allowed and until_full > 40 and 0 < until_token <= 20
    assert (await store.take("submit:a", rate, capacity, NOW))[0] is False
    assert (await store.peek("submit:b", rate, capacity, NOW))[:2] == (True, 3)  # other keys untouched


async def test_endpoint_shows_what_is_left_and_costs_nothing(app_client: AppClientFactory) -> None:
    client = await app_client(rate_limit_requests=2, rate_limit_read_requests=50)
    body = await (await client.get("/ratelimit")).json()
    assert body["submit"] == {
        "limit": 2,
        "remaining": 2,
        "resetAfter": 0,
        "retryAfter": 0,
        "policy": '"submit";q=2;w=60',
    }
    assert body["read"]["limit"] == 50 and body["read"]["remaining"] == 50
    resp = await client.post("/run?wait=false", json={"language": "bash", "code": "true"})
    assert resp.headers["X-RateLimit-Remaining"] == "1"
    for _ in range(3):
        body = await (await client.get("/ratelimit")).json()
        assert body["submit"]["remaining"] == 1 and body["submit"]["retryAfter"] == 0
    await client.post("/run?wait=false", json={"language": "bash", "code": "true"})
    body = await (await client.get("/ratelimit")).json()
    assert body["submit"]["remaining"] == 0 and body["submit"]["retryAfter"] >= 1
    denied = await client.post("/run?wait=false", json={"language": "bash", "code": "true"})
    assert denied.status == 429
    # The same wait, give or take the second that may have ticked between the two calls.
    assert int(denied.headers["Retry-After"]) in (body["submit"]["retryAfter"], body["submit"]["retryAfter"] - 1)


async def test_an_api_key_user_sees_their_own_bucket(app_client: AppClientFactory, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    digest = hashlib.sha256(b"cvy_quota-user").hexdigest()
    keys.write_text(f'[[keys]]\nname = "q"\nsha256 = "{digest}"\nrate_limit_requests = 100\n')
    client = await app_client(api_keys_file=str(keys))
    mine = await (await client.get("/ratelimit", headers={"Authorization": "Bearer cvy_quota-user"})).json()
    anon = await (await client.get("/ratelimit")).json()
    assert (mine["submit"]["limit"], anon["submit"]["limit"]) == (100, 1000)
    bad = await client.get("/ratelimit", headers={"Authorization": "Bearer cvy_wrong"})
    assert bad.status == 401


async def test_peek_during_a_redis_outage_is_unavailable_not_a_crash() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = RedisLimiterStore(f"redis://127.0.0.1:{port}/0", prefix="quotatest", timeout_ms=500)
    try:
        with pytest.raises(BackendUnavailable) as info:
            await store.peek("submit:a", 1.0, 3, NOW)
        assert info.value.status == 503 and info.value.body()["retryAfter"] == 5
    finally:
        await store.close()


@pytest.mark.redis
async def test_endpoint_during_a_redis_outage(app_client: AppClientFactory) -> None:
    """With RATE_LIMIT_REDIS_FAILURE=open requests pass while Redis is down; GET /ratelimit says so (full buckets,
    as the pass itself reports), where it answered 500. Closed, it is the 503 every limited request gets."""
    with redisserver.redis_server() as url:
        client = await app_client(redis_url=url, rate_limit_redis_failure="open", redis_timeout_ms=500)
        assert (await client.get("/ratelimit")).status == 200
        with redis.Redis.from_url(url) as direct, contextlib.suppress(redis.ConnectionError):
            direct.shutdown(nosave=True)
        response = await client.get("/ratelimit")
        assert response.status == 200, await response.text()
        body = await response.json()
        assert body["submit"]["remaining"] == body["submit"]["limit"] and body["submit"]["retryAfter"] == 0
