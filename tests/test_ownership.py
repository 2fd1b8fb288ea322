"""Jobs belong to their owners: every attack of issue 10 as a test, over REST and WebSocket, on both backends."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestClient

from server.access.identity import new_owner_token
from server.app import create_app
from server.hub.hub import HUB
from server.queue.jobs import Runner
from tests.clients import call, recv, until, wait_for_status
from tests.conftest import AppClientFactory, make_settings
from tests.queues import eventually

Client = TestClient[web.Request, web.Application]
TERMINAL = {"completed", "failed", "timeout", "cancelled"}
ALICE, BOB, OPS = "cvy_alice-key-0123456789", "cvy_bob-key-0123456789", "cvy_ops-admin-key-0123456789"
SECRET_CODE = "PASSWORD = 'hunter2-CODE'\nimport time\ntime.sleep(60)"
SECRET_STDIN = "stdin-SECRET-42"
SLEEP = {"language": "python", "code": "import time\ntime.sleep(60)"}
ECHO = "print('echo', input(), flush=True)\nimport sys\nsys.stdin.read()"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(params=["memory", "redis"])
async def app_client(
    request: pytest.FixtureRequest, aiohttp_client: Any, sandbox: Runner, tmp_path: Path
) -> AppClientFactory:
    """Both backends, with three API keys: alice, bob and ops (an admin)."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    keys = tmp_path / "keys.toml"
    keys.write_text(
        "".join(
            f'[[keys]]\nname = "{name}"\nsha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\nadmin = {admin}\n'
            for name, key, admin in (("alice", ALICE, "false"), ("bob", BOB, "false"), ("ops", OPS, "true"))
        )
    )

    async def make(**overrides: Any) -> Client:
        settings = make_settings(redis_url=redis_url, api_keys_file=str(keys), worker_slots=2, **overrides)
        client: Client = await aiohttp_client(create_app(settings, runner=sandbox))
        return client

    return make


async def connect(client: Client, **kwargs: Any) -> tuple[ClientWebSocketResponse, dict[str, Any]]:
    ws: ClientWebSocketResponse = await client.ws_connect("/ws", **kwargs)
    hello = await recv(ws)
    assert hello["type"] == "hello"
    return ws, hello


def unknown_answer(job_id: str) -> dict[str, Any]:
    """What any caller gets for an id that does not exist; a refusal must be indistinguishable from it."""
    return {"error": "Not found", "message": f"No job with id {job_id!r}."}


async def ws_answer(ws: ClientWebSocketResponse, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send_json(message)
    answer = await recv(ws)
    assert answer["type"] == "error", answer
    return {k: answer[k] for k in ("error", "message")}


async def blocked_queue(client: Client) -> str:
    """Fill the only slot, so the next submission stays queued; returns the blocker's id."""
    blocker: str = (await call(client, "POST", "/run?wait=false", 202, json=SLEEP, headers=bearer(OPS)))["jobId"]
    await wait_for_status(client, blocker, {"running"}, headers=bearer(OPS))
    return blocker


# -- ids are capabilities ---------------------------------------------------------------------------------------


async def test_the_queue_topic_shows_others_handles_never_ids(app_client: AppClientFactory) -> None:
    client = await app_client()
    viewer, _ = await connect(client)
    admin, _ = await connect(client, headers=bearer(OPS))
    for ws in (viewer, admin):
        await ws.send_json({"type": "subscribe", "topic": "queue"})
        assert (await recv(ws))["type"] == "snapshot"
    body = {"language": "python", "code": "print('OUT' + 'PUT-SECRET')  # hunter2-CODE", "stdin": SECRET_STDIN}
    job = await call(client, "POST", "/run", 200, json=body, headers=bearer(ALICE))
    seen = {"viewer": await until(viewer, "completed"), "admin": await until(admin, "completed")}
    viewer_raw = orjson.dumps(seen["viewer"]).decode()
    assert job["id"] not in viewer_raw and job["id"][:12] not in viewer_raw
    for raw in (viewer_raw, orjson.dumps(seen["admin"]).decode()):
        for secret in ("hunter2-CODE", "PUT-SECRET", SECRET_STDIN):
            assert secret not in raw
    handles = {m["handle"] for m in seen["viewer"] if m["type"] in ("queued", "running", "completed")}
    assert len(handles) == 1 and all("jobId" not in m for m in seen["viewer"])
    queued = next(m for m in seen["viewer"] if m["type"] == "queued")
    assert (queued["language"], queued["priority"]) == ("python", 0)
    # Admins get ids (and the same handle); a snapshot shows the same thing to each.
    assert {m.get("jobId") for m in seen["admin"] if m["type"] == "completed"} == {job["id"]}
    assert {m["handle"] for m in seen["admin"] if m["type"] == "completed"} == handles
    # The shared snapshot is rebuilt at most once per stats interval (newer events follow it as its tail): let one
    # pass, so that the job is in the snapshot itself however fast it ran (a warm sandbox runs it in ~20 ms).
    await asyncio.sleep(2 * make_settings().stats_interval_ms / 1000)
    for ws, key in ((viewer, None), (admin, OPS)):
        await ws.send_json({"type": "subscribe", "topic": "queue"})
        snapshot = await until(ws, "snapshot")
        row = next(j for j in snapshot[-1]["jobs"] if j["handle"] in handles)
        assert row["status"] == "completed" and ("id" in row) == (key is not None)
        assert (job["id"] in orjson.dumps(snapshot).decode()) == (key is not None)


async def test_a_key_owned_job_is_invisible_to_everyone_else(app_client: AppClientFactory) -> None:
    client = await app_client(max_concurrent_jobs=1)
    await blocked_queue(client)
    body = {"language": "python", "code": SECRET_CODE, "stdin": SECRET_STDIN}
    job_id = (await call(client, "POST", "/run?wait=false", 202, json=body, headers=bearer(ALICE)))["jobId"]
    unknown = "0123456789abcdef0123456789abcdef"
    for headers in ({}, bearer(BOB), {"X-Owner-Token": new_owner_token()}):
        for target in (job_id, unknown):
            expected = unknown_answer(target)
            for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/stop")):
                error = await call(client, method, f"/queue/job/{target}{path}", 404, headers=headers)
                assert error == expected
        ws, _ = await connect(client, headers=headers)
        for kind in ("subscribe", "stop", "eof"):
            assert await ws_answer(ws, {"type": kind, "jobId": job_id}) == unknown_answer(job_id)
        assert await ws_answer(ws, {"type": "stdin", "jobId": job_id, "data": "x"}) == unknown_answer(job_id)
        assert await ws_answer(ws, {"type": "subscribe", "jobId": job_id, "since": 0}) == unknown_answer(job_id)
        await ws.close()
    # Undisturbed, and its owner and the admins see all of it.
    job = await call(client, "GET", f"/queue/job/{job_id}", 200, headers=bearer(ALICE))
    assert (job["status"], job["code"], job["stdin"]) == ("queued", SECRET_CODE, SECRET_STDIN)
    full = await call(client, "GET", f"/queue/job/{job_id}", 200, headers=bearer(OPS))
    assert (full["code"], full["stdin"]) == (SECRET_CODE, SECRET_STDIN)
    assert await call(client, "DELETE", f"/queue/job/{job_id}", 200, headers=bearer(ALICE)) == {
        "id": job_id,
        "status": "cancelled",
    }


async def test_an_anonymous_job_is_read_by_its_id_and_driven_only_by_its_owner(app_client: AppClientFactory) -> None:
    # Two browsers of one classroom behind one NAT: the same address, different owners.
    client = await app_client()
    owner, hello = await connect(client)
    neighbour, _ = await connect(client)
    await owner.send_json({"type": "run", "language": "python", "code": ECHO, "interactive": True})
    job_id = (await recv(owner))["jobId"]
    await until(owner, "running")
    # The neighbour learnt the id: it may watch (the id is the capability to read)...
    await neighbour.send_json({"type": "subscribe", "jobId": job_id})
    assert (await until(neighbour, "subscribed"))[-1]["status"] == "running"
    # ...but not feed, close or stop it, over the WebSocket or REST.
    for message in ({"type": "stdin", "jobId": job_id, "data": "evil\n"}, {"type": "eof", "jobId": job_id}):
        assert await ws_answer(neighbour, message) == unknown_answer(job_id)
    assert await ws_answer(neighbour, {"type": "stop", "jobId": job_id}) == unknown_answer(job_id)
    for headers in ({}, {"X-Owner-Token": new_owner_token()}):
        assert await call(client, "POST", f"/queue/job/{job_id}/stop", 404, headers=headers) == unknown_answer(job_id)
    # The owner's program never saw any of it.
    await owner.send_json({"type": "stdin", "jobId": job_id, "data": "mine\n"})
    await owner.send_json({"type": "eof", "jobId": job_id})
    rest = await until(owner, TERMINAL)
    assert rest[-1]["type"] == "completed"
    assert "".join(m.get("data", "") for m in rest) == "echo mine\n"
    # The owner token from `hello` stops its jobs over REST.
    await owner.send_json({"type": "run", "language": "python", "code": "input()", "interactive": True})
    second = (await recv(owner))["jobId"]
    await until(owner, "running")
    stopped = await call(
        client, "POST", f"/queue/job/{second}/stop", 200, headers={"X-Owner-Token": hello["ownerToken"]}
    )
    assert stopped == {"id": second, "status": "cancelled", "reason": "stopped"}


async def test_rest_stop_for_the_owner_and_admins_only(app_client: AppClientFactory) -> None:
    client = await app_client()
    token = new_owner_token()
    mine = (await call(client, "POST", "/run?wait=false", 202, json=SLEEP, headers={"X-Owner-Token": token}))["jobId"]
    await wait_for_status(client, mine, {"running"})
    await call(client, "POST", f"/queue/job/{mine}/stop", 404, headers={"X-Owner-Token": new_owner_token()})
    await call(client, "POST", f"/queue/job/{mine}/stop", 404, headers=bearer(BOB))
    await call(client, "POST", f"/queue/job/{mine}/stop", 400, headers={"X-Owner-Token": "short"})
    assert (await call(client, "GET", f"/queue/job/{mine}", 200))["status"] == "running"
    stopped = await call(client, "POST", f"/queue/job/{mine}/stop", 200, headers={"X-Owner-Token": token})
    assert stopped == {"id": mine, "status": "cancelled", "reason": "stopped"}
    conflict = await call(client, "POST", f"/queue/job/{mine}/stop", 409, headers={"X-Owner-Token": token})
    assert conflict["error"] == "Conflict"
    bobs = (await call(client, "POST", "/run?wait=false", 202, json=SLEEP, headers=bearer(BOB)))["jobId"]
    await wait_for_status(client, bobs, {"running"}, headers=bearer(BOB))
    await call(client, "POST", f"/queue/job/{bobs}/stop", 404, headers=bearer(ALICE))
    assert (await call(client, "POST", f"/queue/job/{bobs}/stop", 200, headers=bearer(OPS)))["status"] == "cancelled"


async def test_a_reloaded_page_takes_back_its_running_job(
    app_client: AppClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.hub.hub.ORPHAN_GRACE_S", 3600)  # the reload is within it however slow it is
    client = await app_client()
    hub = client.app[HUB]
    cookie = {"Cookie": f"conveyor_owner={new_owner_token()}"}
    page, hello = await connect(client, headers=cookie)
    assert "ownerToken" not in hello  # the cookie is HttpOnly: page scripts never see the token
    await page.send_json({"type": "run", "language": "python", "code": ECHO, "interactive": True})
    job_id = (await recv(page))["jobId"]
    await until(page, "running")
    await page.close()
    await eventually(lambda: job_id in hub._orphans)  # the grace's timer is set: the job is an orphan
    grace = hub._orphans[job_id]
    stranger, _ = await connect(client)
    await stranger.send_json({"type": "subscribe", "jobId": job_id, "since": 0})
    await until(stranger, "subscribed")
    assert not grace.cancelled()  # a stranger watching does not take it
    reloaded, _ = await connect(client, headers=cookie)
    await reloaded.send_json({"type": "subscribe", "jobId": job_id, "since": 0})
    await until(reloaded, "subscribed")
    # The reloaded page took it back: the timer is cancelled, so the job outlives the grace (no sleep past a short
    # grace, which a loaded machine could spend on the reload itself).
    assert grace.cancelled() and job_id not in hub._orphans
    assert await ws_answer(stranger, {"type": "stdin", "jobId": job_id, "data": "x\n"}) == unknown_answer(job_id)
    await reloaded.send_json({"type": "stdin", "jobId": job_id, "data": "again\n"})
    await reloaded.send_json({"type": "eof", "jobId": job_id})
    rest = await until(reloaded, TERMINAL)
    assert rest[-1]["type"] == "completed" and "echo again\n" in "".join(m.get("data", "") for m in rest)


# -- authentication abuse ---------------------------------------------------------------------------------------


async def test_key_guessing_over_rest_is_locked_out_per_address(
    app_client: AppClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await app_client(auth_failure_limit=3)
    caplog.set_level(logging.WARNING, logger="server.access.lockout")
    for i in range(3):
        await call(client, "GET", "/queue/status", 401, headers=bearer(f"cvy_guess-{i}"))
    for i in range(20):
        resp = await client.get("/queue/status", headers=bearer(f"cvy_guess-more-{i}"))
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    # The right key is refused too while locked out: the answer says nothing about which key is right.
    error = await call(client, "GET", "/queue/status", 429, headers=bearer(ALICE))
    assert error["retryAfter"] >= 1 and "failed authentications" in error["message"]
    # Anonymous use from the address goes on, and the lockout was logged once.
    await call(client, "GET", "/queue/status", 200)
    assert len([r for r in caplog.records if "failed authentications" in r.getMessage()]) == 1


async def test_key_guessing_over_the_websocket_shares_the_lockout(app_client: AppClientFactory) -> None:
    client = await app_client(auth_failure_limit=3, ws_message_burst=1000)
    ws, _ = await connect(client)
    answers = []
    for i in range(200):
        await ws.send_json({"type": "auth", "key": f"cvy_guess-{i}"})
        answers.append((await recv(ws))["error"])
    assert answers[:3] == ["Unauthorized"] * 3 and set(answers[3:]) == {"Too many requests"}
    await ws.send_json({"type": "auth", "key": ALICE})
    refused = await recv(ws)
    assert refused["error"] == "Too many requests" and refused["retryAfter"] >= 1
    # One bucket per address, REST and WebSocket alike.
    await call(client, "GET", "/queue/status", 429, headers=bearer(ALICE))


# -- budgets ----------------------------------------------------------------------------------------------------


async def test_each_socket_has_a_message_budget(app_client: AppClientFactory) -> None:
    client = await app_client(ws_messages_per_second=1, ws_message_burst=5)
    ws, _ = await connect(client)
    for _ in range(6):
        await ws.send_json({"type": "ping"})
    answers = [await recv(ws) for _ in range(6)]
    assert [a["type"] for a in answers] == ["pong"] * 5 + ["error"]
    assert answers[-1]["error"] == "Too many requests" and "per second" in answers[-1]["message"]
    # Told, and still sending: the socket is closed.
    for _ in range(20):
        await ws.send_json({"type": "ping"})
    async with asyncio.timeout(20):
        while (msg := await ws.receive()).type == WSMsgType.TEXT:
            assert orjson.loads(msg.data)["type"] != "pong"
    assert ws.close_code == 1008
    # Others are not affected.
    other, _ = await connect(client)
    await other.send_json({"type": "ping"})
    assert (await recv(other))["type"] == "pong"


async def test_resubscribing_sockets_share_one_snapshot(app_client: AppClientFactory) -> None:
    client = await app_client(ws_message_burst=1000, stats_interval_ms=60_000)
    hub = client.app[HUB]
    await call(client, "POST", "/run", 200, json={"language": "bash", "code": "echo one"})
    sockets = [(await connect(client))[0] for _ in range(8)]
    for _ in range(25):
        for ws in sockets:
            await ws.send_json({"type": "subscribe", "topic": "queue"})
    for ws in sockets:
        snapshots = 0
        while snapshots < 25:
            snapshots += (await recv(ws))["type"] == "snapshot"
    assert hub.snapshot_builds == 1
    # A change reaches later subscribers although the snapshot is not rebuilt within the interval: the messages
    # since it was built follow it.
    job = await call(client, "POST", "/run", 200, json={"language": "bash", "code": "echo two"})
    late, _ = await connect(client, headers=bearer(OPS))
    await late.send_json({"type": "subscribe", "topic": "queue"})
    messages = await until(late, "completed")
    assert messages[0]["type"] == "snapshot" and messages[-1]["jobId"] == job["id"]
    assert hub.snapshot_builds == 1


async def test_signing_in_changes_what_the_socket_may_see(app_client: AppClientFactory) -> None:
    client = await app_client()
    hub = client.app[HUB]
    done = await call(client, "POST", "/run", 200, json={"language": "bash", "code": "echo"}, headers=bearer(ALICE))
    ws, _ = await connect(client, headers=bearer(ALICE))
    await ws.send_json({"type": "subscribe", "topic": "queue"})
    assert "id" not in (await until(ws, "snapshot"))[-1]["jobs"][0]
    await ws.send_json({"type": "subscribe", "jobId": done["id"]})
    await until(ws, "subscribed")
    # Becoming an admin re-sends the topic with ids; becoming bob drops alice's job from what the socket watches.
    await ws.send_json({"type": "auth", "key": OPS})
    answers = await until(ws, "auth")
    snapshot = next(m for m in reversed(answers) if m["type"] == "snapshot")  # stats may follow it
    assert [j["id"] for j in snapshot["jobs"]] == [done["id"]] and answers[-1]["admin"] is True
    await ws.send_json({"type": "auth", "key": BOB})
    answers = await until(ws, "auth")
    snapshot = next(m for m in reversed(answers) if m["type"] == "snapshot")
    assert "id" not in snapshot["jobs"][0] and "handle" in snapshot["jobs"][0]
    (conn,) = hub.connections
    assert conn.client.user == "bob" and done["id"] not in conn.jobs


async def test_per_socket_and_snapshot_records_are_bounded(
    app_client: AppClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.doors.websocket.MAX_SUBMITTED", 2)
    monkeypatch.setattr("server.hub.hub.SNAPSHOT_TAIL", 2)
    client = await app_client(stats_interval_ms=60_000)
    hub = client.app[HUB]
    watcher, _ = await connect(client)
    await watcher.send_json({"type": "subscribe", "topic": "queue"})
    await until(watcher, "snapshot")
    ws, _ = await connect(client)
    for i in range(3):
        await ws.send_json({"type": "run", "language": "bash", "code": f"echo {i}", "requestId": str(i)})
        await until(ws, "completed")
    assert sorted(len(conn.submitted) for conn in hub.connections) == [0, 2]
    # More topic messages than the tail holds since the snapshot: the next subscriber gets a fresh one.
    assert hub.snapshot_builds == 1
    late, _ = await connect(client)
    await late.send_json({"type": "subscribe", "topic": "queue"})
    snapshot = (await until(late, "snapshot"))[-1]
    assert hub.snapshot_builds == 2 and [j["status"] for j in snapshot["jobs"]] == ["completed"] * 3


async def test_a_socket_watches_a_bounded_number_of_jobs(
    app_client: AppClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.doors.websocket.MAX_WATCHED", 2)
    client = await app_client()
    ids = [
        (await call(client, "POST", "/run", 200, json={"language": "bash", "code": f"echo {i}"}))["id"]
        for i in range(3)
    ]
    ws, _ = await connect(client)
    for job_id in ids[:2]:
        await ws.send_json({"type": "subscribe", "jobId": job_id})
        await until(ws, "subscribed")
    await ws.send_json({"type": "subscribe", "jobId": ids[2]})
    error = (await until(ws, "error"))[-1]
    assert error["error"] == "Bad request" and "at most 2 jobs" in error["message"]
    await ws.send_json({"type": "unsubscribe", "jobId": ids[0]})
    await until(ws, "unsubscribed")
    await ws.send_json({"type": "subscribe", "jobId": ids[2]})
    await until(ws, "subscribed")


async def test_a_failed_snapshot_build_is_an_error_and_the_next_one_works(
    app_client: AppClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await app_client()
    hub = client.app[HUB]
    recent = hub.queue.recent
    calls = []

    async def fails_once(limit: int = 100, *, whole: bool = True) -> list[Any]:
        calls.append(limit)
        if len(calls) == 1:
            raise RuntimeError("store unavailable")
        return await recent(limit, whole=whole)

    monkeypatch.setattr(hub.queue, "recent", fails_once)
    ws, _ = await connect(client)
    await ws.send_json({"type": "subscribe", "topic": "queue"})
    assert (await recv(ws))["type"] == "error"
    await ws.send_json({"type": "subscribe", "topic": "queue"})
    assert (await recv(ws))["type"] == "snapshot" and hub.snapshot_builds == 2
