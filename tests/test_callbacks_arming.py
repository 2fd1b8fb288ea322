"""Callbacks armed at submission (issue 23): an armed entry is never delivered until filled, counts towards the bound,
is filled once whoever fills it, is removed when its submission is refused, and is filled (or dropped, its job
unknown) by the outbox's recovery when no follower saw its job end. Both stores; real receivers on loopback, real
processes holding the SQLite outbox. (Whole servers killed and restarted: test_callbacks_restart.py.)"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.callbacks import IDEMPOTENCY_HEADER, Armed, Claim, OutboxStore, SqliteOutbox
from server.callbacks.redis_outbox import RedisOutbox
from server.callbacks.sender import CALLBACKS
from server.compat.judge0.attributes import job_id_of
from server.keys import SETTINGS
from server.queue.redispool import command_pool
from tests.conftest import AppClientFactory, make_settings, scaled
from tests.test_callbacks_outbox import LOOPBACK, ROOT, Clock, entry

SLEEP = {"language": "python", "code": "import time\ntime.sleep(30)"}
Client = TestClient[web.Request, web.Application]


@dataclass
class Hook:
    """A real webhook receiver on loopback: what each request was (method, path, idempotency key, body)."""

    server: TestServer
    seen: list[tuple[str, str, str, bytes]] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [key for _, _, key, _ in self.seen]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    seen: list[tuple[str, str, str, bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, request.headers[IDEMPOTENCY_HEADER], await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Hook(server, seen)
    await server.close()


StoreFactory = Callable[[Clock], Awaitable[OutboxStore]]


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opened outboxes of the parametrized kind on one outbox (Redis: the session's real redis-server, emptied;
    each with its own pool, as instances are)."""
    made: list[tuple[OutboxStore, Any]] = []
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    async def make(clock: Clock) -> OutboxStore:
        pool = command_pool(redis_url) if redis_url else None
        opened: OutboxStore = (
            RedisOutbox(pool, prefix=make_settings().redis_prefix, now=clock)
            if pool is not None
            else SqliteOutbox(tmp_path / "data", now=clock)
        )
        await opened.open()
        made.append((opened, pool))
        return opened

    yield make
    for opened, pool in made:
        await opened.close()
        if pool is not None:
            await pool.disconnect()


def armed(key: str, url: str = "http://127.0.0.1:9/hook", created_at: float = 0.0) -> Armed:
    return Armed(key, url, "POST", "native", created_at)


async def figures(client: Client) -> dict[str, float]:
    text = await (await client.get("/metrics")).text()
    return {k: float(v) for k, v in re.findall(r"^conveyor_(callbacks_\w+) (\S+)$", text, re.M)}


async def until_figures(client: Client, **expected: float) -> None:
    """Wait until /metrics shows `expected`; a generous bound only so that a broken build fails, not hangs."""
    async with asyncio.timeout(scaled(60)):
        while True:
            seen = await figures(client)
            if all(seen.get(name) == value for name, value in expected.items()):
                return
            await asyncio.sleep(0.05)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(scaled(60)):
        while not condition():
            await asyncio.sleep(0.05)


# -- the stores -----------------------------------------------------------------------------------------------


async def test_armed_entries_count_towards_the_bound_and_are_never_claimed(store: StoreFactory) -> None:
    clock = Clock()
    outbox = await store(clock)
    assert await outbox.arm(armed("a"), capacity=3, check_at=clock.now)
    assert await outbox.arm(armed("b"), capacity=3, check_at=clock.now)
    assert await outbox.arm(armed("a"), capacity=3, check_at=clock.now)  # already armed: not a third
    assert await outbox.add(entry("c"), capacity=3)
    # Full, armed and filled together: neither an arm nor an add gets past it.
    assert not await outbox.arm(armed("d"), capacity=3, check_at=clock.now)
    assert not await outbox.add(entry("d"), capacity=3)
    assert (await outbox.count(), await outbox.count_armed()) == (1, 2)
    clock.now += 3600
    claimed = await outbox.claim(Claim(clock.now, clock.now + 60, limit=10, per_host=10, busy={}))
    assert [e.delivery.key for e in claimed] == ["c"]  # armed ones are never delivered until filled


async def test_a_fill_happens_once_whoever_fills(store: StoreFactory) -> None:
    clock = Clock()
    first, second = await store(clock), await store(clock)
    assert await first.arm(armed("job-1"), capacity=10, check_at=clock.now)
    assert await first.fill(armed("job-1"), b'{"id": "job-1"}', clock.now)
    assert not await second.fill(armed("job-1"), b'{"other": 1}', clock.now)  # filled already: nothing changes
    assert not await second.disarm("job-1")  # a refusal's disarm cannot remove a filled callback
    assert await second.arm(armed("job-1"), capacity=10, check_at=clock.now)  # kept already, filled
    assert (await first.count(), await first.count_armed()) == (1, 0)
    [claimed] = await second.claim(Claim(clock.now, clock.now + 60, limit=10, per_host=10, busy={}))
    assert (claimed.delivery.body, claimed.attempts, claimed.created_at) == (b'{"id": "job-1"}', 0, clock.now)
    await second.remove("job-1")  # delivered
    assert not await first.fill(armed("job-1"), b"{}", clock.now)  # a late fill does not bring it back
    assert (await first.count(), await first.count_armed()) == (0, 0)


async def test_armed_entries_come_due_for_a_look_in_order_and_again_later(
    store: StoreFactory,
) -> None:
    clock = Clock()
    outbox = await store(clock)
    t0 = clock.now
    for key, check_at in (("late", t0 + 20), ("early", t0 + 10), ("middle", t0 + 15)):
        await outbox.arm(armed(key), capacity=10, check_at=check_at)
    assert await outbox.armed_due(t0 + 9, limit=10) == []
    assert [a.key for a in await outbox.armed_due(t0 + 20, limit=10)] == ["early", "middle", "late"]
    assert [a.key for a in await outbox.armed_due(t0 + 20, limit=2)] == ["early", "middle"]
    await outbox.recheck("early", t0 + 100)
    assert [a.key for a in await outbox.armed_due(t0 + 20, limit=10)] == ["middle", "late"]
    assert await outbox.disarm("middle") and not await outbox.disarm("middle")
    await outbox.recheck("middle", t0)  # gone: a recheck does not bring it back
    [late] = await outbox.armed_due(t0 + 20, limit=10)
    assert late == armed("late")


# A process that arms a callback in the outbox, says so, and lives until its stdin closes.
_ARM_AND_WAIT = """
import asyncio, sys, time
from pathlib import Path
from server.callbacks import Armed, SqliteOutbox

async def main():
    store = SqliteOutbox(Path(sys.argv[1]), now=time.time)
    await store.open()
    assert await store.arm(Armed(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6])), 100, 0.0)
    await store.close()
    print("armed", flush=True)
    sys.stdin.read()

asyncio.run(main())
"""


def arm_elsewhere(directory: Path, a: Armed) -> subprocess.Popen[str]:
    """Another process of this host arms `a` in the SQLite outbox of `directory`, and lives until told."""
    args = [a.job_id, a.url, a.method, a.body_format, str(a.created_at)]
    proc = subprocess.Popen(
        [sys.executable, "-c", _ARM_AND_WAIT, str(directory), *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "armed\n"
    return proc


async def test_the_sqlite_outbox_leaves_a_live_servers_armed_callbacks_to_it(tmp_path: Path) -> None:
    clock = Clock()
    outbox = SqliteOutbox(tmp_path, now=clock)
    await outbox.open()
    await outbox.arm(armed("mine"), capacity=10, check_at=0.0)
    other = arm_elsewhere(tmp_path, armed("theirs"))
    try:
        # Another server sharing the directory is alive: its follower fills its callback, not this one.
        assert [a.key for a in await outbox.armed_due(clock.now, limit=10)] == ["mine"]
    finally:
        other.communicate("")
    assert other.returncode == 0
    # It died with its job unfinished: the callback is this server's to look after now.
    assert sorted(a.key for a in await outbox.armed_due(clock.now, limit=10)) == ["mine", "theirs"]
    await outbox.close()


# -- through the app ------------------------------------------------------------------------------------------


async def test_armed_callbacks_count_towards_the_bound(app_client: AppClientFactory, hook: Hook) -> None:
    client = await app_client(callback_queue_size=2, max_concurrent_jobs=1, callback_allowed_networks=LOOPBACK)
    with_hook = {**SLEEP, "callbackUrl": hook.url()}
    owner = {"X-Owner-Token": "o" * 32}
    running = (await (await client.post("/run?wait=false", json=with_hook, headers=owner)).json())["jobId"]
    queued = (await (await client.post("/run?wait=false", json=with_hook, headers=owner)).json())["jobId"]
    assert (await figures(client))["callbacks_armed"] == 2  # both unfinished: nothing to deliver yet, both held
    refused = await client.post("/run?wait=false", json=with_hook)
    assert refused.status == 503 and "CALLBACK_QUEUE_SIZE=2" in (await refused.json())["message"]
    judge0 = {"source_code": "print(1)", "language_id": 71, "callback_url": hook.url("/judge0")}
    assert (await client.post("/judge0/submissions", json=judge0)).status == 503
    without = await client.post("/run?wait=false", json=SLEEP)
    assert without.status == 202  # without a callback, nothing changed
    assert (await client.delete(f"/queue/job/{(await without.json())['jobId']}")).status == 200
    # The running job ends: its follower fills its callback at once, delivered once; the queued one's stays armed.
    assert (await client.post(f"/queue/job/{running}/stop", headers=owner)).status == 200
    await until(lambda: len(hook.seen) == 1)
    [(method, _, key, body)] = hook.seen
    ended = await (await client.get(f"/queue/job/{running}")).json()
    assert (method, key, orjson.loads(body)["status"]) == ("POST", running, ended["status"])
    await until_figures(client, callbacks_armed=1, callbacks_pending=0, callbacks_delivered_total=1)
    assert (await client.post(f"/queue/job/{queued}/stop", headers=owner)).status == 200  # running by now, or not
    await until(lambda: len(hook.seen) == 2)
    assert hook.keys == [running, queued]


async def test_a_refused_submission_leaves_no_armed_callback(app_client: AppClientFactory, hook: Hook) -> None:
    client = await app_client(
        max_concurrent_jobs=1,
        max_queue_size=2,
        rate_limit_requests=10,
        submit_token_slot_seconds=10,
        job_timeout_ms=5000,
        callback_allowed_networks=LOOPBACK,
    )
    url = {"callbackUrl": hook.url()}
    eight = {"language": "python", "code": "print(input())", "tests": [{"stdin": str(i)} for i in range(8)], **url}
    accepted = [(await (await client.post("/run?wait=false", json={**SLEEP, **url})).json())["jobId"]]
    too_big = await client.post("/run?wait=false", json={**eight, "tests": [{"stdin": "1"}] * 30})
    assert too_big.status == 400  # more tokens than the bucket holds: refused after its callback was armed
    for _ in range(2):  # 4 tokens each, queued behind the sleeper
        resp = await client.post("/run?wait=false", json=eight)
        assert resp.status == 202, await resp.text()
        accepted.append((await resp.json())["jobId"])
    assert (await client.post("/run?wait=false", json=eight)).status == 429  # 4 tokens, 2 left
    full = await client.post("/run?wait=false", json={**SLEEP, **url})  # the last token; the queue holds 2
    assert full.status == 503 and (await full.json())["error"] == "Queue full"
    left = await client.app[CALLBACKS].store.armed_due(time.time() + 3600, limit=100)
    assert sorted(a.key for a in left) == sorted(accepted)  # the accepted jobs' callbacks, and only theirs
    assert (await figures(client))["callbacks_armed"] == 3


async def test_recovery_fills_a_finished_jobs_callback_and_drops_an_unknown_jobs(
    app_client: AppClientFactory, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    # The embedded store's side of a restart: callbacks armed by a server that died (another process, gone), whose
    # jobs this server's store reports finished, or does not know. (Whole servers: test_callbacks_restart.py.)
    client = await app_client(callback_allowed_networks=LOOPBACK)
    native = await (await client.post("/run", json={"language": "python", "code": "print(6 * 7)"})).json()
    judge0 = await client.post("/judge0/submissions?wait=true", json={"source_code": "print(1)", "language_id": 71})
    token = (await judge0.json())["token"]
    unknown = "0" * 32
    now = time.time()
    for a in (
        Armed(native["id"], hook.url("/native"), "POST", "native", now),
        Armed(job_id_of(token), hook.url("/judge0"), "PUT", "judge0", now),
        Armed(unknown, hook.url("/lost"), "POST", "native", now - 3600),
    ):
        dead = arm_elsewhere(client.app[SETTINGS].data_path, a)
        dead.communicate("")
        assert dead.returncode == 0
    await until_figures(client, callbacks_delivered_total=2, callbacks_orphaned_total=1, callbacks_armed=0)
    by_path = {path: (method, key, orjson.loads(body)) for method, path, key, body in hook.seen}
    assert sorted(by_path) == ["/judge0", "/native"]  # each once, and nothing for the unknown job
    method, key, body = by_path["/native"]
    assert (method, key, body["id"], body["status"], body["stdout"]) == ("POST", native["id"], key, "completed", "42\n")
    method, key, body = by_path["/judge0"]
    assert (method, key, body["token"], body["status"]["id"]) == ("PUT", job_id_of(token), token, 3)
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and unknown in r.getMessage()]
    assert line == (
        f"callback for job {unknown} to http://127.0.0.1:{hook.server.port} dropped: the job store does not know its "
        "job (expired past retention, or lost with the store)"
    )


@pytest.mark.parametrize("existing", [False, True])
async def test_the_sqlite_outbox_is_private_to_the_servers_user(tmp_path: Path, existing: bool) -> None:
    # Callback bodies are jobs' output. Without the job journal (DURABLE=0) nothing else makes DATA_DIR private:
    # under umask 022 the outbox's directory was 0755 and its database 0644, readable by every local user.
    data = tmp_path / "data"
    if existing:
        data.mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        outbox = SqliteOutbox(data, now=Clock())
        await outbox.open()
    finally:
        os.umask(old)
    try:
        await outbox.arm(armed("private"), capacity=10, check_at=0.0)
        modes = {path.name: path.stat().st_mode & 0o777 for path in data.iterdir()}
        assert data.stat().st_mode & 0o777 == 0o700
        assert modes and all(mode & 0o077 == 0 for mode in modes.values()), {k: oct(v) for k, v in modes.items()}
    finally:
        await outbox.close()
