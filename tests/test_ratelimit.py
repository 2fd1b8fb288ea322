"""Rate limiting: bucket arithmetic, headers, the middleware on a tiny app, identity rules, sweeping.

Store- and limiter-level behaviour runs on both stores (memory, and Redis against a real redis-server); tests that
move an injected clock are memory-only, since the Redis store keeps time by Redis `TIME`. No sleeps, except one
bounded wait for Redis to expire keys.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
from aiohttp import WSServerHandshakeError, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from server.access.apikeys import ApiKeyEntry, ApiKeys
from server.access.identity import CLIENT, Client, anonymous, check_priority
from server.access.middleware import bucket_for, ratelimit_middleware
from server.access.ratelimit import (
    Bucket,
    Decision,
    LimiterStore,
    MemoryLimiterStore,
    RateLimiter,
    Take,
    decision_headers,
    make_policy,
    raise_if_denied,
)
from server.access.ratelimit.redis import RedisLimiterStore
from server.errors import ConveyorError, QueueFull
from server.settings import Settings

T0 = 1_700_000_000.25
ALICE_KEY = "alice-key"
BOB_KEY = "bob-key"
KEYS = ApiKeys(
    [
        ApiKeyEntry("alice", hashlib.sha256(ALICE_KEY.encode()).digest(), max_priority=10, rate_limit_requests=100,
                    rate_limit_burst=200),
        ApiKeyEntry("bob", hashlib.sha256(BOB_KEY.encode()).digest(), max_priority=3),
    ]
)  # fmt: skip


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ---------------------------------------------------------------------------------------------------- tiny app


@web.middleware
async def errors_to_json(request: web.Request, handler: Any) -> web.StreamResponse:
    """What the real error middleware does, placed outside the limiter."""
    try:
        response: web.StreamResponse = await handler(request)
    except ConveyorError as exc:
        return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
    return response


def _who(request: web.Request) -> dict[str, Any]:
    client = request[CLIENT]
    return {"key": client.key, "ip": client.ip, "user": client.user}


async def submit_run(request: web.Request) -> web.Response:
    body = await request.json()
    check_priority(request[CLIENT], int(body.get("priority", 0)))
    return web.json_response(_who(request))


async def get_anything(request: web.Request) -> web.Response:
    return web.json_response(_who(request))


async def queue_full(request: web.Request) -> web.Response:
    raise QueueFull("Queue is full.", headers={"Retry-After": "2"})


async def not_found(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.close()
    return ws


Factory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
LimiterFactory = Callable[..., RateLimiter]

# For tests that move the injected clock: the Redis store does not read it.
memory_only = pytest.mark.parametrize("backend", ["memory"])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def denied() -> list[int]:
    return []


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest) -> str:
    """The test's (emptied) Redis for the redis backend; "" (no Redis) for the memory one."""
    return str(request.getfixturevalue("redis_url")) if backend == "redis" else ""


@pytest.fixture
async def make_limiter(store_url: str, clock: FakeClock) -> AsyncIterator[LimiterFactory]:
    """Factory of limiters on the parametrized store, chosen from settings as the app does; closed afterwards."""
    limiters: list[RateLimiter] = []

    def make(**overrides: Any) -> RateLimiter:
        limiter_clock = overrides.pop("clock", clock)
        limiter = RateLimiter(_settings(redis_url=store_url, **overrides), clock=limiter_clock)
        limiters.append(limiter)
        return limiter

    yield make
    for limiter in limiters:
        await limiter.close()


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, make_limiter: LimiterFactory, denied: list[int]) -> Factory:
    async def make(**overrides: Any) -> TestClient[web.Request, web.Application]:
        limiter = make_limiter(**overrides)
        limiter.on_denied = lambda: denied.append(1)  # the limiter counts its denials, whichever door drew
        settings = dataclasses.replace(Settings(), **overrides)
        app = web.Application(
            middlewares=[
                errors_to_json,
                ratelimit_middleware(limiter, KEYS, settings, on_denied=lambda: denied.append(1)),
            ]
        )
        app.router.add_post("/run", submit_run)
        for path in ("/", "/dashboard", "/health", "/metrics", "/static/app.js", "/runtimes", "/openapi.json"):
            app.router.add_get(path, get_anything)
        app.router.add_get("/queue/stats", get_anything)
        app.router.add_get("/queue/jobs/{id}", not_found)
        app.router.add_post("/queue/full", queue_full)
        app.router.add_get("/ws", websocket)
        return await aiohttp_client(app)

    return make


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _statuses(
    client: TestClient[web.Request, web.Application], n: int, path: str = "/run", **kwargs: Any
) -> list[int]:
    statuses = []
    for _ in range(n):
        if path == "/run":
            kwargs.setdefault("json", {})
            response = await client.post(path, **kwargs)
        else:
            response = await client.get(path, **kwargs)
        statuses.append(response.status)
    return statuses


# ---------------------------------------------------------------------------------------------------- middleware


async def test_fifteen_rapid_submissions_ten_accepted_five_429(make_client: Factory, denied: list[int]) -> None:
    client = await make_client()
    assert await _statuses(client, 10) == [200] * 10
    for _ in range(5):
        response = await client.post("/run", json={})
        assert response.status == 429
        assert await response.json() == {
            "error": "Too many requests",
            "message": "Rate limit exceeded. Try again in 6 seconds.",
            "retryAfter": 6,
        }
        assert response.headers["Retry-After"] == "6"
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert response.headers["RateLimit"] == '"submit";r=0;t=60'
    assert len(denied) == 5


async def test_headers_on_success(make_client: Factory, clock: FakeClock) -> None:
    client = await make_client()
    await _statuses(client, 2)
    response = await client.post("/run", json={})
    assert response.status == 200
    headers = response.headers
    assert headers["X-RateLimit-Limit"] == "10"
    assert headers["X-RateLimit-Remaining"] == "7"
    assert headers["X-RateLimit-Reset"] == str(math.ceil(T0 + 18))
    assert headers["RateLimit-Policy"] == '"submit";q=10;w=60'
    assert headers["RateLimit"] == '"submit";r=7;t=18'
    assert "Retry-After" not in headers


@memory_only
async def test_bucket_refills_with_time(make_client: Factory, clock: FakeClock) -> None:
    client = await make_client()
    assert await _statuses(client, 11) == [200] * 10 + [429]
    clock.advance(5.9)
    response = await client.post("/run", json={})
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"
    assert (await response.json())["message"] == "Rate limit exceeded. Try again in 1 second."
    clock.advance(0.1)
    assert await _statuses(client, 2) == [200, 429]
    clock.advance(60)
    assert await _statuses(client, 11) == [200] * 10 + [429]


async def test_read_bucket_is_separate(make_client: Factory) -> None:
    client = await make_client(rate_limit_read_requests=3)
    assert await _statuses(client, 11) == [200] * 10 + [429]
    response = await client.get("/queue/stats")
    assert response.status == 200
    assert response.headers["RateLimit-Policy"] == '"read";q=3;w=60'
    assert response.headers["RateLimit"] == '"read";r=2;t=20'
    assert await _statuses(client, 1, "/runtimes") == [200]
    assert await _statuses(client, 1, "/openapi.json") == [200]
    assert await _statuses(client, 1, "/queue/stats") == [429]
    assert await _statuses(client, 1, "/run") == [429]


async def test_pages_static_health_are_not_limited(make_client: Factory) -> None:
    client = await make_client(rate_limit_requests=1, rate_limit_read_requests=1)
    for path in ("/", "/dashboard", "/static/app.js", "/health"):
        for _ in range(5):
            response = await client.get(path)
            assert response.status == 200
            assert "X-RateLimit-Limit" not in response.headers
            assert (await response.json())["key"] == "ip:127.0.0.1"  # identified all the same


async def test_error_responses_carry_the_headers(make_client: Factory) -> None:
    client = await make_client()
    response = await client.get("/queue/jobs/x")
    assert response.status == 404
    assert response.headers["X-RateLimit-Remaining"] == "119"
    response = await client.post("/queue/full")
    assert response.status == 503
    assert response.headers["Retry-After"] == "2"  # the handler's own header wins
    assert response.headers["X-RateLimit-Remaining"] == "118"


async def test_websocket_connect_draws_from_read_bucket(make_client: Factory) -> None:
    client = await make_client(rate_limit_read_requests=1)
    ws = await client.ws_connect("/ws")
    await ws.close()
    with pytest.raises(WSServerHandshakeError) as exc:
        await client.ws_connect("/ws")
    assert exc.value.status == 429


async def test_spoofed_x_forwarded_for_changes_nothing(make_client: Factory) -> None:
    client = await make_client()
    for i in range(10):
        spoof = {"X-Forwarded-For": f"198.51.100.{i}", "Forwarded": f"for=192.0.2.{i}"}
        response = await client.post("/run", json={}, headers=spoof)
        assert response.status == 200
        assert (await response.json())["key"] == "ip:127.0.0.1"
    assert await _statuses(client, 1, headers={"X-Forwarded-For": "203.0.113.99"}) == [429]


async def test_trusted_proxy_right_most_untrusted_hop(make_client: Factory) -> None:
    client = await make_client(trusted_proxies=("127.0.0.0/8", "10.0.0.0/8"))
    # The left-most entries are whatever the caller claimed; the right-most untrusted hop is the client.
    for i in range(10):
        headers = {"X-Forwarded-For": f"6.6.6.{i}, 198.51.100.1, 10.0.0.5"}
        response = await client.post("/run", json={}, headers=headers)
        assert response.status == 200
        assert (await response.json())["ip"] == "198.51.100.1"
    assert await _statuses(client, 1, headers={"X-Forwarded-For": "1.1.1.1, 198.51.100.1"}) == [429]
    assert await _statuses(client, 1, headers={"X-Forwarded-For": "198.51.100.2"}) == [200]
    assert await _statuses(client, 1) == [200]  # the proxy's own address is a bucket of its own


async def test_ipv6_clients_share_their_56(make_client: Factory) -> None:
    client = await make_client(trusted_proxies=("127.0.0.1",))
    for i in range(10):
        response = await client.post("/run", json={}, headers={"X-Forwarded-For": f"2001:db8:0:{i:x}::{i + 1}"})
        assert response.status == 200
        assert (await response.json())["key"] == "ip:2001:db8::/56"
    assert await _statuses(client, 1, headers={"X-Forwarded-For": "2001:db8:0:ff::1"}) == [429]
    assert await _statuses(client, 1, headers={"X-Forwarded-For": "2001:db8:0:100::1"}) == [200]


async def test_unknown_or_malformed_key_is_401_without_consuming_quota(make_client: Factory) -> None:
    client = await make_client(rate_limit_requests=2)
    for headers in (_bearer("wrong"), {"Authorization": "Basic eDp5"}, {"Authorization": "Bearer"}) * 3:
        response = await client.post("/run", json={}, headers=headers)
        assert response.status == 401
        assert (await response.json())["error"] == "Unauthorized"
        assert "WWW-Authenticate" in response.headers
    response = await client.get("/", headers=_bearer("wrong"))
    assert response.status == 401  # never silently anonymous, pages included
    assert await _statuses(client, 3) == [200, 200, 429]


@memory_only  # 200 requests over HTTP take long enough for Redis TIME to refill a token at 100/min
async def test_users_are_limited_per_user_with_overrides(make_client: Factory) -> None:
    client = await make_client(trusted_proxies=("127.0.0.1",))
    for i in range(200):
        headers = {**_bearer(ALICE_KEY), "X-Forwarded-For": f"198.51.100.{i % 50}"}
        response = await client.post("/run", json={}, headers=headers)
        assert response.status == 200, i
    assert response.headers["X-RateLimit-Limit"] == "200"
    assert response.headers["RateLimit-Policy"] == '"submit";q=200;w=120'
    assert response.headers["RateLimit"] == '"submit";r=0;t=120'
    assert (await response.json())["key"] == "user:alice"
    response = await client.post("/run", json={}, headers=_bearer(ALICE_KEY))
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"  # 100 per minute: one token every 0.6 s
    # Same address, other identities: their own buckets, with the default policy for bob.
    assert await _statuses(client, 11, headers=_bearer(BOB_KEY)) == [200] * 10 + [429]
    assert await _statuses(client, 1, headers={"X-Forwarded-For": "198.51.100.1"}) == [200]


async def test_priority_above_maximum_is_403_without_consuming_quota(make_client: Factory) -> None:
    client = await make_client(rate_limit_requests=2)
    for _ in range(3):
        response = await client.post("/run", json={"priority": 1})
        assert response.status == 403
        body = await response.json()
        assert body["error"] == "Forbidden"
        assert body["maxPriority"] == 0
        assert response.headers["X-RateLimit-Remaining"] == "2"
    response = await client.post("/run", json={"priority": 4}, headers=_bearer(BOB_KEY))
    assert response.status == 403
    assert "maximum for this API key is 3" in (await response.json())["message"]
    assert await _statuses(client, 1, json={"priority": 3}, headers=_bearer(BOB_KEY)) == [200]
    assert await _statuses(client, 3) == [200, 200, 429]


@pytest.mark.parametrize("backend", [pytest.param("redis", marks=pytest.mark.redis)])
async def test_two_instances_share_one_limit_over_http(make_client: Factory, denied: list[int]) -> None:
    # Two apps with their own limiters on one Redis: 10 submissions in total for one client, not 10 each.
    first, second = await make_client(), await make_client()
    statuses = [(await (first if i % 2 else second).post("/run", json={})).status for i in range(15)]
    assert statuses == [200] * 10 + [429] * 5
    response = await first.post("/run", json={})
    assert response.headers["Retry-After"] == "6"
    assert response.headers["RateLimit"] == '"submit";r=0;t=60'
    assert len(denied) == 6


# ---------------------------------------------------------------------------------------------------- limiter


def _settings(**overrides: Any) -> Settings:
    return dataclasses.replace(Settings(), **overrides)


async def test_burst_setting_sets_capacity(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(rate_limit_requests=10, rate_limit_burst=3)
    client = anonymous("203.0.113.7")
    results = [await limiter.hit(client, "submit") for _ in range(4)]
    assert [d.allowed for d in results] == [True, True, True, False]
    assert results[0].policy.header == '"submit";q=3;w=18'
    assert (results[0].limit, results[0].retry_after_s) == (3, 0)
    assert (results[2].remaining, results[2].reset_after_s) == (0, 18)
    assert results[3].retry_after_s == 6


async def test_exact_capacity_at_epoch_scale_time() -> None:
    # Near 1.7e9 a float step is 2.4e-7 s; 200 simultaneous requests must still give exactly 200.
    clock = FakeClock(1_799_999_999.123)
    limiter = RateLimiter(_settings(rate_limit_requests=7, rate_limit_burst=200, rate_limit_window_ms=1), clock=clock)
    client = anonymous("203.0.113.7")
    allowed = [(await limiter.hit(client, "submit")).allowed for _ in range(201)]
    assert allowed == [True] * 200 + [False]


async def test_exact_capacity_with_a_fractional_interval(make_limiter: LimiterFactory) -> None:
    # 7 per minute: 8.571428... s per token, added up 200 times, must still allow exactly 200.
    limiter = make_limiter(rate_limit_requests=7, rate_limit_burst=200)
    client = anonymous("203.0.113.7")
    allowed = [(await limiter.hit(client, "submit")).allowed for _ in range(201)]
    assert allowed == [True] * 200 + [False]


async def test_steady_rate_over_a_long_run(clock: FakeClock) -> None:
    limiter = RateLimiter(_settings(), clock=clock)
    client = anonymous("203.0.113.7")
    allowed = 0
    for _ in range(6000):  # one attempt every 0.1 s for 10 minutes
        allowed += (await limiter.hit(client, "submit")).allowed
        clock.advance(0.1)
    # The full bucket, then one token per 6 s over the 599.9 s between the first and the last attempt.
    assert allowed == 10 + 99


async def test_user_override_with_only_one_field(clock: FakeClock) -> None:
    limiter = RateLimiter(_settings(rate_limit_burst=50), clock=clock)
    rate_only = Client(key="user:a", ip="x", user="a", rate_limit_requests=20)
    burst_only = Client(key="user:b", ip="x", user="b", rate_limit_burst=5)
    assert limiter.policy(rate_only, "submit").capacity == 20  # a user's burst follows its own rate
    assert limiter.policy(rate_only, "submit").header == '"submit";q=20;w=60'
    assert limiter.policy(burst_only, "submit").header == '"submit";q=5;w=30'
    assert limiter.policy(rate_only, "read") is limiter.policy(anonymous("x"), "read")


async def test_refund(make_limiter: LimiterFactory, backend: str, store_url: str) -> None:
    limiter = make_limiter()
    client = anonymous("203.0.113.7")
    await limiter.hit(client, "submit")
    second = await limiter.hit(client, "submit")
    assert second.remaining == 8
    refunded = await limiter.refund(client, "submit")
    assert (refunded.remaining, refunded.reset_after_s) == (9, 6)
    full = await limiter.refund(client, "submit")
    assert (full.remaining, full.reset_after_s) == (10, 0)
    assert (await limiter.refund(client, "submit")).remaining == 10  # never above capacity
    if backend == "memory":
        assert isinstance(limiter.store, MemoryLimiterStore)
        assert len(limiter.store) == 0
    else:
        assert _keys(store_url) == []  # a full bucket is no key at all


class RemoteStore:
    """A store that is not the local one: RateLimiter must go through the async protocol."""

    def __init__(self) -> None:
        self.inner = MemoryLimiterStore()
        self.calls = 0
        self.closed = False

    async def take(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        self.calls += 1
        return await self.inner.take(key, rate_per_s, capacity, now)

    async def refund(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        return await self.inner.refund(key, rate_per_s, capacity, now)

    async def peek(self, key: str, rate_per_s: float, capacity: int, now: float) -> Take:
        return await self.inner.peek(key, rate_per_s, capacity, now)

    async def sweep(self, now: float) -> int:
        return await self.inner.sweep(now)

    async def close(self) -> None:
        self.closed = True


async def test_non_local_store_goes_through_the_protocol(clock: FakeClock) -> None:
    store = RemoteStore()
    limiter = RateLimiter(_settings(), store=store, clock=clock)
    client = anonymous("203.0.113.7")
    assert [(await limiter.hit(client, "submit")).allowed for _ in range(11)] == [True] * 10 + [False]
    assert store.calls == 11
    with pytest.raises(TypeError):
        limiter.hit_now(client, "submit")
    await limiter.close()
    assert store.closed


async def test_hit_now_matches_hit(clock: FakeClock) -> None:
    a = RateLimiter(_settings(), clock=clock)
    b = RateLimiter(_settings(), clock=clock)
    client = anonymous("203.0.113.7")
    for _ in range(12):
        assert a.hit_now(client, "submit") == await b.hit(client, "submit")


async def test_sweep_forgets_100k_clients(clock: FakeClock) -> None:
    limiter = RateLimiter(_settings(), clock=clock)
    store = limiter.store
    assert isinstance(store, MemoryLimiterStore)
    for i in range(100_000):
        limiter.hit_now(anonymous(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"), "submit")
    await limiter.hit(anonymous("203.0.113.7"), "submit")
    await limiter.hit(anonymous("203.0.113.7"), "submit")
    assert len(store) == 100_001
    clock.advance(5.9)  # nobody is full yet
    assert await limiter.sweep() == 0
    clock.advance(0.2)  # one token back for everyone: single-hit buckets are full, the 2-hit one is not
    assert await limiter.sweep() == 100_000
    assert len(store) == 1
    clock.advance(6)
    assert await limiter.sweep() == 1
    assert len(store) == 0
    # Nothing left behind; a returning client starts from a full bucket.
    assert (await limiter.hit(anonymous("10.0.0.1"), "submit")).remaining == 9


async def test_periodic_sweep_task(clock: FakeClock) -> None:
    limiter = RateLimiter(_settings(), clock=clock, sweep_interval_s=0)
    await limiter.hit(anonymous("203.0.113.7"), "submit")
    clock.advance(60)
    await limiter.start()
    for _ in range(10):
        await asyncio.sleep(0)
    assert isinstance(limiter.store, MemoryLimiterStore)
    assert len(limiter.store) == 0
    await limiter.close()
    await limiter.close()  # idempotent


async def test_sweep_task_survives_store_errors(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    store = RemoteStore()

    async def broken(now: float) -> int:
        raise RuntimeError("boom")

    store.sweep = broken  # type: ignore[method-assign]
    limiter = RateLimiter(_settings(), store=store, clock=clock, sweep_interval_s=0)
    await limiter.start()
    for _ in range(5):
        await asyncio.sleep(0)
    assert "rate limiter sweep failed" in caplog.text
    await limiter.close()


# ---------------------------------------------------------------------------------------------------- stores


@pytest.fixture
async def store(backend: str, store_url: str) -> AsyncIterator[LimiterStore]:
    made: LimiterStore = RedisLimiterStore(store_url, prefix="t") if backend == "redis" else MemoryLimiterStore()
    yield made
    await made.close()


def _near(seconds: float) -> Any:
    """A duration as the memory store computes it, within what a Redis round trip or two lets time move."""
    return pytest.approx(seconds, abs=0.05)


async def test_store_take_and_refund(store: LimiterStore) -> None:
    rate = 1 / 6
    assert [await store.take("k", rate, 2, T0) for _ in range(3)] == [
        (True, 1, _near(6.0), 0.0),
        (True, 0, _near(12.0), 0.0),
        (False, 0, _near(12.0), _near(6.0)),  # denied: nothing changes
    ]
    assert await store.take("k", rate, 2, T0) == (False, 0, _near(12.0), _near(6.0))
    assert await store.take("other", rate, 2, T0) == (True, 1, _near(6.0), 0.0)
    assert await store.refund("k", rate, 2, T0) == (True, 1, _near(6.0), 0.0)
    assert await store.refund("k", rate, 2, T0) == (True, 2, 0.0, 0.0)
    assert await store.refund("k", rate, 2, T0) == (True, 2, 0.0, 0.0)  # never above capacity
    assert await store.refund("never-seen", rate, 2, T0) == (True, 2, 0.0, 0.0)
    assert await store.sweep(T0) == 0  # the memory store's buckets are not full yet; Redis has nothing to sweep


def _keys(url: str, pattern: str = "*") -> list[str]:
    with redis.Redis.from_url(url, decode_responses=True) as r:
        return sorted(r.keys(pattern))


def _pttls(url: str, keys: list[str]) -> list[int]:
    with redis.Redis.from_url(url, decode_responses=True) as r:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
        return list(pipe.execute())


@pytest.mark.redis
async def test_settings_choose_the_store(redis_url: str) -> None:
    local = RateLimiter(_settings())
    shared = RateLimiter(_settings(redis_url=redis_url, redis_prefix="eu"))
    try:
        assert isinstance(local.store, MemoryLimiterStore)
        assert isinstance(shared.store, RedisLimiterStore)
        with pytest.raises(TypeError):
            shared.hit_now(anonymous("203.0.113.7"), "submit")  # the sync fast path is the memory store's alone
        await shared.hit(anonymous("203.0.113.7"), "submit")
        assert _keys(redis_url) == ["eu:ratelimit:submit:ip:203.0.113.7"]
        assert await shared.sweep() == 0
    finally:
        await local.close()
        await shared.close()


@pytest.mark.redis
async def test_two_instances_share_one_limit(redis_url: str) -> None:
    # The instances' clocks disagree by an hour; Redis TIME decides, so that changes nothing.
    a = RateLimiter(_settings(redis_url=redis_url), clock=FakeClock(T0))
    b = RateLimiter(_settings(redis_url=redis_url), clock=FakeClock(T0 + 3600))
    client = anonymous("203.0.113.7")
    try:
        decisions = [await (a if i % 2 else b).hit(client, "submit") for i in range(15)]
        assert [d.allowed for d in decisions] == [True] * 10 + [False] * 5
        assert [d.remaining for d in decisions[:10]] == list(range(9, -1, -1))
        assert {(d.retry_after_s, d.reset_after_s) for d in decisions[10:]} == {(6, 60)}
        # Headers come from each instance's own clock plus the shared bucket's relative durations.
        assert (decisions[-2].reset_epoch, decisions[-1].reset_epoch) == (math.ceil(T0 + 60), math.ceil(T0 + 3660))
        assert (await b.hit(anonymous("203.0.113.8"), "submit")).remaining == 9
        assert (await a.hit(client, "read")).remaining == 119
    finally:
        await a.close()
        await b.close()


@pytest.mark.redis
async def test_keys_live_until_the_bucket_is_full(redis_url: str) -> None:
    limiter = RateLimiter(_settings(redis_url=redis_url))
    client = anonymous("203.0.113.7")
    key = "conveyor:ratelimit:submit:ip:203.0.113.7"
    try:
        await limiter.hit(client, "submit")
        [ttl] = _pttls(redis_url, [key])
        assert 5_000 < ttl <= 6_000  # one token owed: 6 s
        for _ in range(9):
            await limiter.hit(client, "submit")
        [ttl] = _pttls(redis_url, [key])
        assert 59_000 < ttl <= 60_000  # empty: full again after the whole window, never later
        assert not (await limiter.hit(client, "submit")).allowed
        [after_denial] = _pttls(redis_url, [key])
        assert after_denial <= ttl  # a denial writes nothing
        await limiter.refund(client, "submit")
        [ttl] = _pttls(redis_url, [key])
        assert 53_000 < ttl <= 54_000
    finally:
        await limiter.close()


@pytest.mark.redis
async def test_a_thousand_clients_leave_nothing_behind(redis_url: str) -> None:
    # 10 per 10 s: one hit owes 1 s, so each key lives about a second.
    limiter = RateLimiter(_settings(redis_url=redis_url, rate_limit_window_ms=10_000))
    try:
        for i in range(1000):
            assert (await limiter.hit(anonymous(f"10.0.{i >> 8}.{i & 255}"), "submit")).allowed
        keys = _keys(redis_url)
        assert len(keys) == 1000
        assert all(0 < ttl <= 1000 for ttl in _pttls(redis_url, keys))
        assert await limiter.sweep() == 0
        async with asyncio.timeout(10):
            while _keys(redis_url):
                await asyncio.sleep(0.05)
        assert (await limiter.hit(anonymous("10.0.0.1"), "submit")).remaining == 9  # a full bucket again
    finally:
        await limiter.close()


# ---------------------------------------------------------------------------------------------------- helpers


def test_decision_headers_and_429() -> None:
    policy = make_policy("submit", 10, 10, 60.0)
    assert policy.header == '"submit";q=10;w=60'
    decision = Decision(policy, 1_700_000_000.5, allowed=False, remaining=0, until_full_s=59.5, until_token_s=44.2)
    assert (decision.limit, decision.reset_epoch, decision.reset_after_s, decision.retry_after_s) == (
        10,
        1_700_000_060,
        60,
        45,
    )
    assert decision_headers(decision, "submit") == {
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "1700000060",
        "RateLimit-Policy": '"submit";q=10;w=60',
        "RateLimit": '"submit";r=0;t=60',
        "Retry-After": "45",
    }
    with pytest.raises(ConveyorError) as exc:
        raise_if_denied(decision, "submit")
    assert exc.value.status == 429
    assert exc.value.body() == {
        "error": "Too many requests",
        "message": "Rate limit exceeded. Try again in 45 seconds.",
        "retryAfter": 45,
    }
    assert exc.value.headers["Retry-After"] == "45"
    raise_if_denied(dataclasses.replace(decision, allowed=True), "submit")


@pytest.mark.parametrize(
    ("method", "path", "bucket"),
    [
        ("POST", "/run", "submit"),
        ("POST", "/runs", "read"),  # and each item one submit token, drawn by the handler
        ("GET", "/runs", "read"),
        ("GET", "/run", None),
        ("GET", "/queue", "read"),
        ("GET", "/queue/stats", "read"),
        ("DELETE", "/queue/jobs/abc", "read"),
        ("GET", "/queue/jobs", "read"),
        ("POST", "/queue/jobs/cancel", "read"),
        ("POST", "/queue/job/abc/rerun", "read"),  # and one submit token, drawn by the handler
        ("GET", "/runtimes", "read"),
        ("GET", "/openapi.json", "read"),
        ("GET", "/ws", "read"),
        ("GET", "/", None),
        ("GET", "/dashboard", None),
        ("GET", "/static/app.js", None),
        ("GET", "/health", None),
        ("GET", "/metrics", "read"),
        ("GET", "/queueing", None),
        # The Piston and Judge0 compat APIs: submissions from the submit bucket, the rest from the read bucket.
        ("POST", "/api/v2/execute", "submit"),
        ("GET", "/api/v2/runtimes", "read"),
        ("GET", "/api/v2/connect", "read"),
        ("POST", "/judge0/submissions", "submit"),
        ("POST", "/judge0/submissions/batch", "read"),
        ("GET", "/judge0/submissions/abc", "read"),
        ("GET", "/judge0/languages", "read"),
        ("GET", "/judge0", None),
    ],
)
def test_bucket_for(method: str, path: str, bucket: Bucket | None) -> None:
    assert bucket_for(method, path) == bucket


def test_store_take_arithmetic() -> None:
    store = MemoryLimiterStore()
    rate = 1 / 6
    assert store.take_now("k", rate, 2, 100.0) == (True, 1, 6.0, 0.0)
    assert store.take_now("k", rate, 2, 100.0) == (True, 0, 12.0, 0.0)
    assert store.take_now("k", rate, 2, 100.0) == (False, 0, 12.0, 6.0)
    assert store.take_now("k", rate, 2, 103.0) == (False, 0, 9.0, 3.0)
    assert store.take_now("k", rate, 2, 106.0) == (True, 0, 12.0, 0.0)
    assert store.take_now("k", rate, 2, 200.0) == (True, 1, 6.0, 0.0)


@pytest.mark.parametrize(
    ("requests", "burst", "window_s", "header"),
    [
        (10, 10, 60.0, '"submit";q=10;w=60'),
        (7, 10, 60.0, '"submit";q=10;w=86'),  # w is the time to refill the whole bucket, rounded up
        (10, 10, 0.1, '"submit";q=10;w=1'),  # never below one second
        (100, 200, 60.0, '"submit";q=200;w=120'),
    ],
)
def test_policy_header(requests: int, burst: int, window_s: float, header: str) -> None:
    assert make_policy("submit", requests, burst, window_s).header == header
