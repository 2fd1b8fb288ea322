"""The callback outbox on both stores (SQLite, Redis): bounded and idempotent adds, leased claims another instance
takes over, a per-host limit a slow receiver cannot get past, retries until a receiver comes back, abandonment past
the horizon, and its figures in /metrics. Receivers are real aiohttp servers on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.callbacks import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    CallbackSender,
    Claim,
    Delivery,
    Entry,
    OutboxStore,
    SqliteOutbox,
)
from server.callbacks.redis_outbox import RedisOutbox
from server.errors import SettingsError
from server.queue.redispool import command_pool
from server.settings import Settings
from tests.conftest import AppClientFactory, free_port, make_settings, scaled

LOOPBACK = ("127.0.0.0/8",)
ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Receiver:
    """A real webhook receiver: the idempotency keys of the requests it answered 2xx; while `hold` is set, each
    request waits for it to clear (a slow receiver)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.keys: list[str] = []
        self.bodies: list[tuple[bytes, dict[str, str]]] = []
        self.started = 0
        self.hold: asyncio.Event | None = None
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host=host, port=port)

    async def _handle(self, request: web.Request) -> web.Response:
        self.started += 1
        body = await request.read()
        if self.hold is not None:
            await self.hold.wait()
        self.keys.append(request.headers[IDEMPOTENCY_HEADER])
        self.bodies.append((body, dict(request.headers)))
        return web.Response(status=204)

    def url(self, path: str = "/hook") -> str:
        return f"http://{self.host}:{self.server.port}{path}"


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def make(host: str = "127.0.0.1", port: int | None = None) -> Receiver:
        receiver = Receiver(host, port)
        await receiver.server.start_server()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        if receiver.hold is not None:
            receiver.hold.set()
        await receiver.server.close()


@pytest.fixture(params=["sqlite", "redis"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings whose outbox is the parametrized store (Redis: the session's real redis-server, emptied)."""
    redis = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    return make_settings(
        redis_url=redis,
        data_dir=str(tmp_path / "data"),
        callback_allowed_networks=LOOPBACK,
        callback_retries=1000,
    )


StoreFactory = Callable[[Clock], Awaitable[OutboxStore]]


@pytest.fixture
async def store_factory(store_settings: Settings) -> AsyncIterator[StoreFactory]:
    """Opened stores of the parametrized kind on one outbox: on Redis each with its own pool, as instances are; the
    SQLite file is one process's, so every call gives the same store."""
    made: list[tuple[OutboxStore, Any]] = []

    async def make(clock: Clock) -> OutboxStore:
        pool = None
        store: OutboxStore
        if made and not store_settings.redis_url:
            return made[0][0]
        if store_settings.redis_url:
            pool = command_pool(store_settings.redis_url)
            store = RedisOutbox(pool, prefix=store_settings.redis_prefix, now=clock)
        else:
            store = SqliteOutbox(store_settings.data_path, now=clock)
        await store.open()
        made.append((store, pool))
        return store

    yield make
    for store, pool in made:
        await store.close()
        if pool is not None:
            await pool.disconnect()


SenderFactory = Callable[..., Awaitable[CallbackSender]]


@pytest.fixture
async def sender_factory(store_settings: Settings) -> AsyncIterator[SenderFactory]:
    """Started senders ("instances") on the parametrized store, with quick backoff; each on its own data."""
    made: list[CallbackSender] = []

    async def make(clock: Callable[[], float] | None = None, **overrides: Any) -> CallbackSender:
        settings = dataclasses.replace(store_settings, **overrides)
        extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
        sender = CallbackSender(settings, backoff_s=0.05, poll_s=0.05, **extra)
        await sender.start()
        made.append(sender)
        return sender

    yield make
    for sender in made:
        await sender.close()


def entry(key: str, url: str = "http://127.0.0.1:9/hook", created_at: float = 0.0) -> Entry:
    return Entry(Delivery(key, url, orjson.dumps({"id": key})), created_at)


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Wait until `condition()` holds; a generous bound only so that a broken build fails instead of hanging."""
    async with asyncio.timeout(scaled(timeout)):
        while not condition():
            await asyncio.sleep(0.01)


# -- the stores -----------------------------------------------------------------------------------------------


async def test_an_add_is_bounded_and_idempotent(store_factory: StoreFactory) -> None:
    store = await store_factory(Clock())
    assert [await store.add(entry(str(i)), capacity=3) for i in range(4)] == [True, True, True, False]
    assert await store.add(entry("1"), capacity=3)  # already kept: the same callback, not a fourth
    assert await store.count() == 3


async def test_a_claim_is_leased_then_taken_over_by_another_instance(store_factory: StoreFactory) -> None:
    clock = Clock()
    first, second = await store_factory(clock), await store_factory(clock)
    await first.add(entry("job-1"), capacity=10)
    t0 = clock.now
    [claimed] = await first.claim(Claim(t0, t0 + 60, limit=5, per_host=2, busy={}))
    assert claimed.delivery.key == "job-1" and claimed.attempts == 0
    # Leased: nobody else gets it while the lease runs, however often they look.
    assert await second.claim(Claim(t0 + 59, t0 + 119, limit=5, per_host=2, busy={})) == []
    # The first instance died without a word: once the lease is over, another takes it over.
    [taken] = await second.claim(Claim(t0 + 61, t0 + 121, limit=5, per_host=2, busy={}))
    assert taken.delivery == claimed.delivery
    await second.reschedule("job-1", t0 + 100, attempts=1)
    assert await first.claim(Claim(t0 + 99, t0 + 159, limit=5, per_host=2, busy={})) == []
    [again] = await first.claim(Claim(t0 + 100, t0 + 160, limit=5, per_host=2, busy={}))
    assert again.attempts == 1
    await first.remove("job-1")
    assert await second.count() == 0
    await second.reschedule("job-1", t0, attempts=2)  # a late outcome does not bring it back
    assert await second.count() == 0


async def test_a_claim_takes_at_most_so_many_per_host(store_factory: StoreFactory) -> None:
    clock = Clock()
    store = await store_factory(clock)
    for i, host in enumerate(["slow.test", "slow.test", "slow.test", "other.test"]):
        await store.add(entry(f"k{i}", f"http://{host}/hook"), capacity=10)
        clock.now += 1
    now = clock.now
    claimed = await store.claim(Claim(now, now + 60, limit=10, per_host=2, busy={}))
    assert [e.delivery.key for e in claimed] == ["k0", "k1", "k3"]  # k2 waits: its host has two under way
    for e in claimed:
        await store.remove(e.delivery.key)
    # Requests under way count too: two to slow.test, and k2 still waits; one, and it goes.
    assert await store.claim(Claim(now, now + 60, limit=10, per_host=2, busy={"slow.test": 2})) == []
    [k2] = await store.claim(Claim(now, now + 60, limit=10, per_host=2, busy={"slow.test": 1}))
    assert k2.delivery.key == "k2"


# A process that claims the one entry of an outbox for an hour, then dies without a word.
_CLAIM_AND_DIE = """
import asyncio, os, sys
from server.callbacks import Claim, SqliteOutbox

async def main():
    store = SqliteOutbox(__import__("pathlib").Path(sys.argv[1]), now=lambda: 1_000_000.0)
    await store.open()
    assert await store.claim(Claim(1_000_000.0, 1_003_600.0, limit=5, per_host=2, busy={}))
    os._exit(0)

asyncio.run(main())
"""


async def test_the_sqlite_outbox_frees_the_claims_of_a_dead_process(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteOutbox(tmp_path, now=clock)
    await store.open()
    await store.add(entry("job-1"), capacity=10)
    dead = subprocess.run([sys.executable, "-c", _CLAIM_AND_DIE, str(tmp_path)], cwd=ROOT, timeout=60, check=False)
    assert dead.returncode == 0
    # A server sharing the directory sees the claim, still leased for an hour...
    assert await store.claim(Claim(clock.now, clock.now + 60, limit=5, per_host=2, busy={})) == []
    await store.close()
    # ...and the next one to open it frees what a dead process held.
    reopened = SqliteOutbox(tmp_path, now=clock)
    await reopened.open()
    [claimed] = await reopened.claim(Claim(clock.now, clock.now + 60, limit=5, per_host=2, busy={}))
    assert claimed.delivery.key == "job-1"
    await reopened.close()


def test_an_unusable_data_dir_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SettingsError, match=r"^DATA_DIR='.*file/sub' is not usable: "):
        asyncio.run(SqliteOutbox(tmp_path / "file" / "sub", now=Clock()).open())


# -- delivery -------------------------------------------------------------------------------------------------


async def test_a_receiver_down_then_up_gets_each_callback_once(
    sender_factory: SenderFactory, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    port = free_port()  # nothing listens there yet: every attempt is refused
    sender = await sender_factory()
    keys = [f"job-{i}" for i in range(20)]
    for key in keys:
        assert await sender.enqueue(Delivery(key, f"http://127.0.0.1:{port}/hook", b"{}"))
    await until(lambda: sender.retried >= 3 * len(keys))  # each has failed three times
    assert sender.delivered == 0 and sender.abandoned == 0
    receiver = await receivers(port=port)
    await until(lambda: sender.delivered == len(keys))
    assert Counter(receiver.keys) == Counter(keys)  # every one, each exactly once
    assert await sender.refresh() == 0 and sender.abandoned == 0


async def test_a_slow_host_does_not_hold_back_another_hosts_callback(
    sender_factory: SenderFactory, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    # Four workers, two per host, as in the issue: six callbacks to a receiver that answers nothing until told.
    sender = await sender_factory(callback_workers=4, callback_host_concurrency=2, callback_timeout_ms=60_000)
    slow = await receivers("127.0.0.1")
    slow.hold = asyncio.Event()
    fast = await receivers("127.0.0.2")
    for i in range(6):
        await sender.enqueue(Delivery(f"slow-{i}", slow.url(), b"{}"))
    await until(lambda: slow.started == 2)
    await sender.enqueue(Delivery("fast", fast.url(), b"{}"))
    await until(lambda: fast.keys == ["fast"])
    # The other host's callback arrived while every one of the slow host's was still unanswered, and the slow host
    # never had more than its two.
    assert slow.keys == [] and slow.started == 2 and sender.delivered <= 1
    slow.hold.set()
    await until(lambda: sender.delivered == 7)
    assert sorted(slow.keys) == [f"slow-{i}" for i in range(6)]


async def test_on_redis_an_instance_that_dies_holding_a_claim_is_taken_over(
    redis_url: str, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    # (Without Redis the outbox is one process's: its claims are freed when it starts again, tested above.)
    receiver = await receivers()
    settings = make_settings(redis_url=redis_url, callback_allowed_networks=LOOPBACK)
    pool = command_pool(redis_url)
    try:
        dead = RedisOutbox(pool, prefix=settings.redis_prefix, now=time.time)
        await dead.add(Entry(Delivery("job-1", receiver.url(), b"{}"), time.time()), capacity=10)
        now = time.time()
        assert await dead.claim(Claim(now, now + 0.5, limit=1, per_host=2, busy={}))  # then it died
    finally:
        await pool.disconnect()
    survivor = CallbackSender(settings, poll_s=0.05)
    await survivor.start()
    try:
        await until(lambda: survivor.delivered == 1)
    finally:
        await survivor.close()
    assert receiver.keys == ["job-1"]


async def test_the_idempotency_key_is_the_signed_bodys_job_id(
    sender_factory: SenderFactory, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    receiver = await receivers()
    sender = await sender_factory(callback_secret="s3cret")
    body = orjson.dumps({"id": "job-7", "status": "completed"})
    assert await sender.deliver(Delivery("job-7", receiver.url(), body))
    [(got, headers)] = receiver.bodies
    expected = "sha256=" + hmac.new(b"s3cret", got, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
    assert headers[IDEMPOTENCY_HEADER] == orjson.loads(got)["id"] == "job-7"


async def test_a_callback_is_abandoned_past_the_horizon_with_a_clear_log(
    sender_factory: SenderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    sender = await sender_factory(clock=clock, callback_retry_horizon_s=3600)
    port = free_port()
    await sender.enqueue(Delivery("job-9", f"http://127.0.0.1:{port}/hook?token=secret", b"{}"))
    await until(lambda: sender.retried == 1)  # refused, and due again 0.05 s later on a clock that stands still
    assert sender.abandoned == 0
    clock.now += 3601
    await until(lambda: sender.abandoned == 1)
    [line] = [r.getMessage() for r in caplog.records if "abandoned" in r.getMessage()]
    assert line.startswith(f"callback for job job-9 to http://127.0.0.1:{port} abandoned after 2 attempts")
    assert "CALLBACK_RETRY_HORIZON_S=3600 s over" in line and "cannot connect" in line
    assert "token=secret" not in line and await sender.refresh() == 0


# -- through the app ------------------------------------------------------------------------------------------


async def test_a_full_outbox_refuses_submissions_with_a_callback_and_shows_in_metrics(
    app_client: AppClientFactory,
) -> None:
    client = await app_client(callback_queue_size=1, callback_allowed_networks=LOOPBACK, callback_retries=1000)
    hook = f"http://127.0.0.1:{free_port()}/hook"  # down: the callback stays in the outbox
    run = {"language": "python", "code": "print(1)"}
    first = await client.post("/run", json={**run, "callbackUrl": hook})
    assert first.status == 200
    figures: dict[str, float] = {}
    async with asyncio.timeout(scaled(30)):
        while (
            figures.get("conveyor_callbacks_pending", 0) < 1 or figures.get("conveyor_callbacks_retried_total", 0) < 1
        ):
            text = await (await client.get("/metrics")).text()
            figures = {k: float(v) for k, v in re.findall(r"^(conveyor_callbacks_\w+) (\S+)$", text, re.M)}
    assert figures["conveyor_callbacks_delivered_total"] == 0 and figures["conveyor_callbacks_abandoned_total"] == 0
    refused = await client.post("/run", json={**run, "callbackUrl": hook})
    assert refused.status == 503 and refused.headers["Retry-After"] == "60"
    assert "CALLBACK_QUEUE_SIZE=1" in (await refused.json())["message"]
    assert (await client.post("/run", json=run)).status == 200  # without a callback, nothing changed
