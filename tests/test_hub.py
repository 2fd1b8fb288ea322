"""The WebSocket hub against the real sandbox: lifecycle, live output, stdin, stop, topic, replay, abuse."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType

from server.access.identity import Client as AccessClient
from server.app import create_app
from server.doors import websocket as websocket_module
from server.hub import connection as connection_module
from server.hub.connection import Connection
from server.hub.hub import HUB
from server.keys import QUEUE
from server.queue import base as queue_base
from server.queue.jobs import Runner
from tests.clients import TERMINAL, Client, recv, until
from tests.conftest import AppClientFactory, keys_file, make_settings, scaled
from tests.queues import eventually


@pytest.fixture(params=["memory", "redis"])
async def app_client(request: pytest.FixtureRequest, aiohttp_client: Any, sandbox: Runner) -> AppClientFactory:
    """The hub suite runs on both backends: with Redis, every event goes through the stream and back."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    async def make(**overrides: Any) -> Client:
        app = create_app(make_settings(redis_url=redis_url, **overrides), runner=sandbox)
        client: Client = await aiohttp_client(app)
        return client

    return make


async def connect(client: Client, **kwargs: Any) -> ClientWebSocketResponse:
    ws: ClientWebSocketResponse = await client.ws_connect("/ws", **kwargs)
    hello = await recv(ws)
    assert hello["type"] == "hello"
    return ws


async def test_full_lifecycle_in_order(client: Client) -> None:
    ws = await connect(client)
    await ws.send_json({"type": "run", "language": "python", "code": "print('hi')", "requestId": "r1"})
    messages = await until(ws, TERMINAL)
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "queued" and messages[0]["requestId"] == "r1" and "position" in messages[0]
    assert kinds[1] == "running" and "startedAt" in messages[1]
    assert kinds[-1] == "completed"
    assert "".join(m["data"] for m in messages if m["type"] == "output") == "hi\n"
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    final = messages[-1]
    assert final["exitCode"] == 0 and final["truncated"] is False
    assert final["executionTimeMs"] > 0 and final["waitTimeMs"] >= 0
    assert {m["jobId"] for m in messages} == {messages[0]["jobId"]}


async def test_an_event_both_replayed_and_live_is_sent_once(client: Client) -> None:
    # On Redis a job's log is written before the shared stream, so an event can come back live after the replay
    # that follows `queued` already sent it: the socket must still see each seq once.
    ws = await connect(client)
    await ws.send_json({"type": "run", "language": "python", "code": "input()", "interactive": True})
    messages = await until(ws, "running")
    client.app[HUB].on_event(dict(messages[-1]))  # the same `running` event again, as the stream would bring it
    await ws.send_json({"type": "eof", "jobId": messages[0]["jobId"]})
    rest = await until(ws, TERMINAL)
    seqs = [m["seq"] for m in messages + rest if "seq" in m]
    assert seqs == sorted(set(seqs)), seqs


async def test_output_streams_while_the_program_runs(client: Client) -> None:
    """Each line reaches the client while the program still runs: the program waits for an answer to each line
    before it writes the next, so nothing here depends on timing (not on the output merge window either)."""
    ws = await connect(client)
    code = "import sys\nfor i in range(3):\n    print(i, flush=True)\n    input()\nprint('err', file=sys.stderr)"
    await ws.send_json({"type": "run", "language": "python", "code": code, "interactive": True})
    job_id = (await recv(ws))["jobId"]
    stdout = ""
    for i in range(3):
        while stdout != "".join(f"{n}\n" for n in range(i + 1)):  # line i, before the program may go on
            message = await recv(ws)
            if message["type"] == "output":
                assert message["stream"] == "stdout", message
                stdout += message["data"]
            else:
                assert message["type"] not in TERMINAL, message
        await ws.send_json({"type": "stdin", "jobId": job_id, "data": "\n"})
    rest = await until(ws, TERMINAL)
    outputs = [m for m in rest if m["type"] == "output"]
    # One write or two ("err", then the newline): how the text is cut into messages is the merge window's business.
    assert {m["stream"] for m in outputs} == {"stderr"} and "".join(m["data"] for m in outputs) == "err\n", outputs
    assert rest[-1]["type"] == "completed"


async def test_a_line_printed_after_a_pause_reaches_the_client_at_once(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt line, then the program waits: the line reaches the editor without waiting for the output merge
    window (an hour long here: only a line that goes at once arrives); the socket's writes take it at once too."""
    monkeypatch.setattr(queue_base, "COALESCE_S", 3600.0)
    ws = await connect(client)
    code = "print('name?', flush=True)\nprint('hello', input())\n"
    await ws.send_json({"type": "run", "language": "python", "code": code, "interactive": True})
    job_id = (await recv(ws))["jobId"]
    before = await until(ws, "output", timeout=scaled(30))
    assert before[-1]["data"] == "name?\n", before
    await ws.send_json({"type": "stdin", "jobId": job_id, "data": "Ada\n"})
    rest = await until(ws, TERMINAL)
    assert "".join(m["data"] for m in rest if m["type"] == "output") == "hello Ada\n", rest
    assert rest[-1]["type"] == "completed"


def recorded_connection(written: list[bytes]) -> Connection:
    """A hub connection over a transport that records each write."""
    transport = SimpleNamespace(write=written.append, is_closing=lambda: False, get_write_buffer_size=lambda: 0)
    ws: Any = SimpleNamespace(closed=False)
    request: Any = SimpleNamespace(transport=transport)
    return Connection(1, ws, request, AccessClient(key="ip:127.0.0.1", ip="127.0.0.1"), 16)


async def test_a_socket_writes_a_burst_at_once_then_one_write_per_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a thousand sockets one send() per event per socket saturates a core: past a burst, a socket's messages
    wait for the write window (an hour here) and share one write; what one turn of the loop queued shares a write,
    and a quiet socket's first messages (a run's queued, running, output and end) go at the next turn."""
    monkeypatch.setattr(connection_module, "WRITE_COALESCE_S", 3600.0)
    written: list[bytes] = []
    conn = recorded_connection(written)
    try:
        for batch in ([b"a", b"b"], [b"c"], [b"d"], [b"e"], [b"f"], [b"g"]):
            for message in batch:
                conn.send(message)
            for _ in range(3):
                await asyncio.sleep(0)
        assert connection_module.WRITE_BURST == 4
        assert written == [b"\x81\x01a\x81\x01b", b"\x81\x01c", b"\x81\x01d", b"\x81\x01e"]  # f, g: waiting
    finally:
        await conn.shutdown()


def test_the_write_pacer_refills_one_write_per_window() -> None:
    pacer = connection_module.Pacer(0.0)
    window = connection_module.WRITE_COALESCE_S
    assert [pacer.take(0.0) for _ in range(connection_module.WRITE_BURST)] == [0.0] * connection_module.WRITE_BURST
    assert pacer.take(0.0) == pytest.approx(window)  # the next one waits a whole window
    assert pacer.take(window) == pytest.approx(window)  # and it used the one that window refilled
    assert pacer.take(100 * window) == 0.0  # a quiet socket gets its burst back, and no more
    assert [pacer.take(100 * window) for _ in range(4)][-1] == pytest.approx(window)


async def test_interactive_input_round_trip_and_eof(client: Client) -> None:
    ws = await connect(client)
    code = "name = input('name? ')\nprint('hello', name, flush=True)\nimport sys\nprint(len(sys.stdin.read()))"
    await ws.send_json({"type": "run", "language": "python", "code": code, "interactive": True})
    queued = await recv(ws)
    job_id = queued["jobId"]
    await until(ws, "running")
    await ws.send_json({"type": "stdin", "jobId": job_id, "data": "bob\n"})
    text = ""
    while "hello bob" not in text:
        message = await recv(ws)
        assert message["type"] == "output", message
        text += message["data"]
    await ws.send_json({"type": "stdin", "jobId": job_id, "data": "abc"})
    await ws.send_json({"type": "eof", "jobId": job_id})
    rest = await until(ws, TERMINAL)
    assert "3\n" in "".join(m.get("data", "") for m in rest)
    assert rest[-1]["type"] == "completed"


async def test_interactive_run_with_stdin_gets_it_once(client: Client) -> None:
    # The editor sends its stdin box with every interactive run: the program must read it once, not twice.
    ws = await connect(client)
    code = "import sys\nsys.stdout.write(repr(sys.stdin.read()))"
    await ws.send_json({"type": "run", "language": "python", "code": code, "stdin": "abc\n", "interactive": True})
    job_id = (await recv(ws))["jobId"]
    await until(ws, "running")
    await ws.send_json({"type": "eof", "jobId": job_id})
    rest = await until(ws, TERMINAL)
    assert "".join(m["data"] for m in rest if m["type"] == "output") == repr("abc\n")


async def test_stdin_sent_while_queued_waits_for_the_program(app_client: AppClientFactory) -> None:
    client = await app_client(max_concurrent_jobs=1, max_stdin_bytes=64)
    ws = await connect(client)
    await ws.send_json({"type": "run", "language": "python", "code": "import time\ntime.sleep(1.5)"})
    blocker = (await recv(ws))["jobId"]
    code = "import sys\nsys.stdout.write(repr(sys.stdin.read()))"
    await ws.send_json({"type": "run", "language": "python", "code": code, "stdin": "a\n", "interactive": True})
    queued = await recv(ws)
    while queued.get("type") != "queued" or queued["jobId"] == blocker:
        queued = await recv(ws)
    job_id = queued["jobId"]
    assert queued["position"] is not None  # still waiting behind the blocker
    await ws.send_json({"type": "stdin", "jobId": job_id, "data": "b\n"})
    # Past the input budget, a queued job's input is refused as a running job's is, and the job goes on.
    await ws.send_json({"type": "stdin", "jobId": job_id, "data": "x" * 64})
    errors: list[dict[str, Any]] = []
    while not errors:
        message = await recv(ws)
        if message["type"] == "error":
            errors.append(message)
    assert errors[0]["error"] == "Input backlog full" and errors[0]["jobId"] == job_id, errors
    await ws.send_json({"type": "eof", "jobId": job_id})
    seen: list[dict[str, Any]] = []
    while not any(m["type"] in TERMINAL and m["jobId"] == job_id for m in seen):
        seen.append(await recv(ws))
    assert not [m for m in seen if m["type"] == "error"], seen
    output = "".join(m["data"] for m in seen if m["type"] == "output" and m["jobId"] == job_id)
    assert output == repr("a\nb\n")


async def test_stop_a_running_infinite_loop(client: Client) -> None:
    ws = await connect(client)
    await ws.send_json({"type": "run", "language": "python", "code": "while True:\n    pass"})
    job_id = (await recv(ws))["jobId"]
    await until(ws, "running")
    await ws.send_json({"type": "stop", "jobId": job_id})
    final = (await until(ws, TERMINAL))[-1]
    assert final["type"] == "cancelled" and final["reason"] == "stopped"
    job = await (await client.get(f"/queue/job/{job_id}")).json()
    assert job["status"] == "cancelled"


async def test_only_the_owner_may_stop(app_client: AppClientFactory, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    digest = hashlib.sha256(b"bob-secret").hexdigest()
    keys.write_text(f'[[keys]]\nname = "bob"\nsha256 = "{digest}"\n')
    client = await app_client(api_keys_file=str(keys))
    owner = await connect(client)
    other = await connect(client, headers={"Authorization": "Bearer bob-secret"})
    await owner.send_json({"type": "run", "language": "python", "code": "while True:\n    pass"})
    job_id = (await recv(owner))["jobId"]
    await until(owner, "running")
    await other.send_json({"type": "stop", "jobId": job_id})
    error = await recv(other)
    # The same answer as for an unknown id: a refusal does not confirm that the job exists.
    assert error["type"] == "error" and error["error"] == "Not found" and error["jobId"] == job_id
    await owner.send_json({"type": "stop", "jobId": job_id})
    assert (await until(owner, TERMINAL))[-1]["type"] == "cancelled"


async def test_queue_topic_sees_rest_jobs_and_stats_without_output(client: Client) -> None:
    ws = await connect(client)
    await ws.send_json({"type": "subscribe", "topic": "queue"})
    snapshot = await recv(ws)
    assert snapshot["type"] == "snapshot" and "stats" in snapshot
    resp = await client.post("/run", json={"language": "python", "code": "print('secret output')"})
    job = await resp.json()
    messages = await until(ws, "stats")
    messages += await until(ws, "completed") if not any(m["type"] == "completed" for m in messages) else []
    # An anonymous viewer gets display handles, never the id (a capability).
    handles = {m["handle"] for m in messages if m["type"] in ("queued", "running", "completed")}
    assert len(handles) == 1
    kinds = [m["type"] for m in messages if m.get("handle") in handles]
    assert kinds[:2] == ["queued", "running"] and "completed" in kinds
    raw = orjson.dumps(messages).decode()
    assert "secret output" not in raw and "print(" not in raw and job["id"] not in raw
    stats = [m for m in messages if m["type"] == "stats"]
    assert stats and "queueLength" in stats[-1]


async def test_queue_topic_never_carries_a_key_users_tests_or_output(
    app_client: AppClientFactory, tmp_path: Path
) -> None:
    # The attack: an anonymous dashboard viewer while a key user's job runs hidden tests whose input it echoes.
    client = await app_client(api_keys_file=keys_file(tmp_path, {"alice": ("alice-secret", False)}))
    spy = await connect(client)
    await spy.send_json({"type": "subscribe", "topic": "queue"})
    assert (await recv(spy))["type"] == "snapshot"
    run = {
        "language": "python",
        "code": "print(input())",
        "tests": [{"stdin": "hidden-input-1\n", "expectedOutput": "x"}, {"stdin": "hidden-input-2\n"}],
    }
    resp = await client.post("/run", json=run, headers={"Authorization": "Bearer alice-secret"})
    assert resp.status == 200, await resp.text()
    messages = await until(spy, TERMINAL)
    raw = orjson.dumps(messages).decode()
    assert "hidden-input" not in raw and "print(" not in raw
    assert not [m for m in messages if m["type"] in ("test", "output")], messages
    allowed = {"type", "handle", "seq", "language", "priority", "createdAt", "retried", "startedAt", "waitTimeMs"}
    allowed |= {"exitCode", "signal", "reason", "truncated", "executionTimeMs", "compileTimeMs", "cpuTimeMs"}
    allowed |= {"memoryPeakBytes", "compileCpuTimeMs", "compileMemoryPeakBytes", "queueLength", "runningCount"}
    for message in messages:
        if message["type"] not in ("stats",):
            assert set(message) <= allowed, message


async def test_resume_with_since_replays_missed_output(client: Client) -> None:
    ws = await connect(client)
    code = "import time\nfor i in range(6):\n    print('line', i, flush=True)\n    time.sleep(0.15)"
    await ws.send_json({"type": "run", "language": "python", "code": code})
    job_id = (await recv(ws))["jobId"]
    seen: list[dict[str, Any]] = []
    while len([m for m in seen if m["type"] == "output"]) < 2:
        seen.append(await recv(ws))
    last_seq = seen[-1]["seq"]
    await ws.close()
    async with asyncio.timeout(30):  # the rest of the output is produced while disconnected
        while (await (await client.get(f"/queue/job/{job_id}")).json())["status"] != "completed":
            await asyncio.sleep(0.05)
    ws2 = await connect(client)
    await ws2.send_json({"type": "subscribe", "jobId": job_id, "since": last_seq})
    rest = await until(ws2, TERMINAL)
    text = "".join(m["data"] for m in seen + rest if m["type"] == "output")
    assert text == "".join(f"line {i}\n" for i in range(6))
    seqs = [m["seq"] for m in rest if "seq" in m]
    assert seqs == sorted(seqs) and seqs[0] == last_seq + 1


async def test_subscribe_to_a_rest_job_replays_from_the_start(client: Client) -> None:
    job = await (await client.post("/run", json={"language": "bash", "code": "echo one; echo two"})).json()
    ws = await connect(client)
    await ws.send_json({"type": "subscribe", "jobId": job["id"]})
    messages = await until(ws, TERMINAL)
    assert [m["type"] for m in messages if m["type"] != "subscribed"][:2] == ["queued", "running"]
    assert "".join(m["data"] for m in messages if m["type"] == "output") == "one\ntwo\n"


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("not json", "Bad request"),
        ("[1]", "Bad request"),
        ('{"type": "dance"}', "Bad request"),
        ('{"type": "run", "code": "x"}', "Bad request"),
        ('{"type": "run", "language": "no-such-lang", "code": "x", "requestId": "q"}', "Bad request"),
        ('{"type": "stdin", "jobId": "nope", "data": "x"}', "Not found"),
        ('{"type": "subscribe", "jobId": 5}', "Bad request"),
        ('{"type": [1]}', "Bad request"),
        ('{"type": {"a": 1}}', "Bad request"),
        ('{"type": "run", "language": "python", "code": "x", "stdn": "typo"}', "Bad request"),
        (
            '{"type": "run", "language": "python", "code": "x", "requestId": ' + "[" * 300 + "]" * 300 + "}",
            "Bad request",
        ),
        ('{"type": "run", "language": "python", "code": "x", "requestId": "' + "r" * 200 + '"}', "Bad request"),
        ('{"type": "ping", "requestId": {"a": [1]}}', "Bad request"),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_open(
    client: Client, frame: str, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    ws = await connect(client)
    await ws.send_str(frame)
    message = await recv(ws)
    assert message["type"] == "error" and message["error"] == error and message["message"]
    assert "went wrong" not in message["message"]
    assert not [r for r in caplog.records if r.exc_info], "a bad frame must not end in a traceback"
    if '"requestId": "q"' in frame:
        assert message["requestId"] == "q"
    elif '"requestId"' in frame:
        assert message["field"] == "requestId" and "requestId" not in message
    await ws.send_json({"type": "ping"})
    assert (await recv(ws))["type"] == "pong"


async def test_oversized_frame_closes_with_1009(app_client: AppClientFactory) -> None:
    client = await app_client(ws_max_message_bytes=4096)
    ws = await connect(client)
    await ws.send_str("x" * 10_000)
    msg = await ws.receive(timeout=10)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    assert ws.close_code == 1009


async def test_cross_origin_upgrade_is_refused(client: Client) -> None:
    resp = await client.get(
        "/ws",
        headers={
            "Origin": "https://evil.example",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        },
    )
    assert resp.status == 403
    assert (await resp.json())["error"] == "Forbidden"
    own = f"http://{client.server.host}:{client.server.port}"
    ws = await connect(client, origin=own)
    await ws.close()


async def test_connections_per_ip_are_capped(app_client: AppClientFactory) -> None:
    client = await app_client(ws_max_connections_per_ip=2)
    first, second = await connect(client), await connect(client)
    with pytest.raises(Exception) as info:
        await client.ws_connect("/ws")
    assert "429" in str(info.value)
    await first.close()
    await second.close()


async def _raw_ws(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    # A tiny receive window, so the server's socket buffers fill after little data instead of megabytes.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


def _masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_client_that_never_reads_does_not_delay_others(app_client: AppClientFactory) -> None:
    client = await app_client(ws_send_queue_size=16, max_concurrent_jobs=2, max_output_bytes=1_048_576)
    host, port = str(client.server.host), int(client.server.port or 0)
    _, stalled = await _raw_ws(host, port)
    try:
        await _stall_and_run_beside(client, stalled)
    finally:
        stalled.close()  # the test's own end of the socket, whatever happened


async def _stall_and_run_beside(client: Client, stalled: asyncio.StreamWriter) -> None:
    hub = client.app[HUB]
    flood = "import sys\nfor _ in range(64):\n    sys.stdout.write('x' * 16000 + '\\n')\n    sys.stdout.flush()"
    for _ in range(12):
        stalled.write(_masked_text_frame(orjson.dumps({"type": "run", "language": "python", "code": flood})))
    await stalled.drain()
    ws = await connect(client)
    await ws.send_json({"type": "subscribe", "topic": "queue"})
    await ws.send_json({"type": "run", "language": "python", "code": "print('fine')", "requestId": "mine"})
    mine = None
    output = ""
    async with asyncio.timeout(60):
        while True:
            message = await recv(ws)
            if message.get("requestId") == "mine":
                mine = message["jobId"]
            if mine is not None and message.get("jobId") == mine:
                output += message.get("data", "")
                if message["type"] in TERMINAL:
                    break
    assert output == "fine\n"
    # The stalled socket was cut off instead of buffering without bound.
    async with asyncio.timeout(30):
        while len(hub.connections) > 1:
            await asyncio.sleep(0.05)


async def test_a_close_holds_when_a_handler_swallows_the_readers_cancellation(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A handler that turns its cancellation into an error of its own (as a store client may) and goes on reading
    # must not keep a socket the server asked to close: before the fix, this one stayed open until the client left.
    entered = asyncio.Event()

    async def stubborn(conn: Connection, message: dict[str, Any]) -> None:
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            conn.send_json({"type": "error", "error": "swallowed"})

    monkeypatch.setitem(websocket_module._HANDLERS, "ping", stubborn)
    hub = client.app[HUB]
    ws = await connect(client)
    await ws.send_json({"type": "ping"})
    await asyncio.wait_for(entered.wait(), 20)
    (conn,) = hub.connections
    await conn.close(1013, "asked")
    async with asyncio.timeout(20):  # aiohttp's heartbeat would not end it: this client answers pings
        while hub.connections:
            await asyncio.sleep(0.05)
        while not ws.closed:
            await ws.receive()


async def test_interactive_job_survives_a_reconnect_within_the_grace(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.hub.hub.ORPHAN_GRACE_S", 3600)  # the reconnect is within it however slow it is
    hub = client.app[HUB]
    ws: ClientWebSocketResponse = await client.ws_connect("/ws")
    token = (await recv(ws))["ownerToken"]  # a client without the pages' cookie gets its owner token in `hello`
    await ws.send_json({"type": "run", "language": "python", "code": "print('echo', input())", "interactive": True})
    job_id = (await recv(ws))["jobId"]
    seen = await until(ws, "running")
    await ws.close()
    await eventually(lambda: job_id in hub._orphans)  # the grace's timer is set: the job is an orphan
    grace = hub._orphans[job_id]
    ws2 = await connect(client)
    await ws2.send_json({"type": "auth", "ownerToken": token})
    await until(ws2, "auth")
    await ws2.send_json({"type": "subscribe", "jobId": job_id, "since": seen[-1]["seq"]})
    await until(ws2, "subscribed")
    # Adopted: the timer is cancelled, so the job outlives the grace however long the reconnect took (no sleep
    # past a short grace, which a loaded machine could spend on the reconnect itself).
    assert grace.cancelled() and job_id not in hub._orphans
    await ws2.send_json({"type": "stdin", "jobId": job_id, "data": "back\n"})
    rest = await until(ws2, TERMINAL)
    assert rest[-1]["type"] == "completed"
    assert "echo back\n" in "".join(m.get("data", "") for m in rest)


async def test_interactive_job_is_stopped_when_its_submitter_is_gone(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.hub.hub.ORPHAN_GRACE_S", 0.2)
    ws = await connect(client)
    await ws.send_json({"type": "run", "language": "python", "code": "input()", "interactive": True})
    job_id = (await recv(ws))["jobId"]
    await until(ws, "running")
    await ws.close()
    async with asyncio.timeout(20):
        while (job := await (await client.get(f"/queue/job/{job_id}")).json())["status"] == "running":
            await asyncio.sleep(0.05)
    assert job["status"] == "cancelled" and job["reason"] == "stopped"


async def test_position_messages_as_the_line_moves(app_client: AppClientFactory) -> None:
    client = await app_client(max_concurrent_jobs=1, worker_slots=1)
    ws = await connect(client)
    blocker = "import sys\nsys.stdin.readline()"
    await ws.send_json({"type": "run", "language": "python", "code": blocker, "interactive": True})
    first = (await recv(ws))["jobId"]
    await until(ws, "running")
    await ws.send_json({"type": "run", "language": "bash", "code": "echo a", "requestId": "a"})
    await ws.send_json({"type": "run", "language": "bash", "code": "echo b", "requestId": "b"})
    queued = {m["requestId"]: m for m in [await recv(ws), await recv(ws)]}
    assert (queued["a"]["position"], queued["b"]["position"]) == (1, 2)
    await ws.send_json({"type": "eof", "jobId": first})
    # When the first job ends, the second starts and the third moves up to first in line.
    moved = await until(ws, "position")
    assert moved[-1] == {"type": "position", "jobId": queued["b"]["jobId"], "position": 1}


async def test_run_messages_draw_from_the_submit_bucket(app_client: AppClientFactory) -> None:
    client = await app_client(rate_limit_requests=1)
    ws = await connect(client)
    await ws.send_json({"type": "run", "language": "bash", "code": "echo one", "requestId": "1"})
    assert (await recv(ws))["type"] == "queued"
    await ws.send_json({"type": "run", "language": "bash", "code": "echo two", "requestId": "2"})
    messages = await until(ws, "error")
    error = messages[-1]
    assert (error["error"], error["requestId"]) == ("Too many requests", "2")
    assert error["retryAfter"] >= 1 and "Try again in" in error["message"]
    # The socket stays open and usable.
    await ws.send_json({"type": "ping"})
    assert (await until(ws, "pong"))[-1]["type"] == "pong"


async def test_a_replay_draws_from_the_read_bucket(app_client: AppClientFactory) -> None:
    # A 60-byte `subscribe` replays a whole job's log (up to MAX_OUTPUT_BYTES): each one is a read, like GET /queue/job.
    client = await app_client(rate_limit_read_requests=4)
    job = await (await client.post("/run", json={"language": "python", "code": "print('x' * 100_000)"})).json()
    ws = await connect(client)  # the connect draws one read
    replays = 0
    for _ in range(6):
        await ws.send_json({"type": "subscribe", "jobId": job["id"]})
        reply = await until(ws, {"subscribed", "error"})
        if reply[-1]["type"] == "error":
            assert reply[-1]["error"] == "Too many requests" and reply[-1]["retryAfter"] >= 1
            assert not [m for m in reply if m["type"] == "output"]  # refused before the replay
            break
        replays += 1
        await ws.send_json({"type": "unsubscribe", "jobId": job["id"]})
        await until(ws, "unsubscribed")
    assert replays == 3  # four reads: the connect and three replays
    queue = client.app[QUEUE]
    await eventually(lambda: _rate_limited(queue))  # counted with the other 429s


async def _rate_limited(queue: Any) -> bool:
    return bool((await queue.stats())["totalRateLimited"] >= 1)


async def test_a_topic_snapshot_on_redis_reads_summaries_not_jobs(
    aiohttp_client: Any, sandbox: Runner, redis_url: str
) -> None:
    import redis.asyncio as aioredis

    app = create_app(make_settings(redis_url=redis_url, stats_interval_ms=1), runner=sandbox)
    client: Client = await aiohttp_client(app)
    for _ in range(3):  # three finished jobs of ~300 KB each: a whole read would be ~1 MB out of Redis
        resp = await client.post("/run", json={"language": "python", "code": "print('x' * 300_000)"})
        assert resp.status == 200
    direct = aioredis.Redis.from_url(redis_url)
    try:
        before = int((await direct.info("stats"))["total_net_output_bytes"])
        ws = await connect(client)
        await ws.send_json({"type": "subscribe", "topic": "queue"})
        snapshot = await until(ws, "snapshot")
        after = int((await direct.info("stats"))["total_net_output_bytes"])
    finally:
        await direct.aclose()
    assert len(snapshot[-1]["jobs"]) == 3
    assert after - before < 100_000, after - before


async def test_every_native_429_is_counted(app_client: AppClientFactory, tmp_path: Path) -> None:
    # Three native refusals were not in totalRateLimited: the per-address socket cap, the message budget and the
    # authentication lockout (REST and WebSocket).
    client = await app_client(
        ws_max_connections_per_ip=2,
        ws_messages_per_second=1,
        ws_message_burst=2,
        auth_failure_limit=1,
        api_keys_file=keys_file(tmp_path, {"alice": ("alice-secret", False)}),
    )
    queue = client.app[QUEUE]

    async def counted() -> int:
        return int((await queue.stats())["totalRateLimited"])

    first, second = await connect(client), await connect(client)
    resp = await client.get(
        "/ws",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "x" * 22 + "==",
        },
    )
    assert resp.status == 429
    await eventually(lambda: _at_least(counted, 1))
    for _ in range(3):
        await first.send_json({"type": "ping"})
    assert (await until(first, "error"))[-1]["error"] == "Too many requests"
    await eventually(lambda: _at_least(counted, 2))
    await second.send_json({"type": "auth", "key": "wrong"})  # spends the address's one failure
    assert (await until(second, "error"))[-1]["error"] == "Unauthorized"
    await second.send_json({"type": "auth", "key": "wrong"})
    assert (await until(second, "error"))[-1]["error"] == "Too many requests"
    await eventually(lambda: _at_least(counted, 3))
    resp = await client.get("/queue/status", headers={"Authorization": "Bearer alice-secret"})
    assert resp.status == 429  # locked out: even the right key
    await eventually(lambda: _at_least(counted, 4))


async def _at_least(counted: Any, n: int) -> bool:
    return bool(await counted() >= n)


WRONG_VALUES: list[Any] = [None, True, 1.5, -1, 2**70, "", "x" * 300, [1], {"a": [1]}, [[[[[]]]]]]
FIELDS = ("key", "ownerToken", "language", "code", "stdin", "args", "priority", "timeoutMs", "interactive", "tests",
          "files", "jobId", "data", "since", "topic", "requestId", "compilerOptions", "callbackUrl")  # fmt: skip


async def test_no_message_of_any_shape_ends_in_a_traceback(
    app_client: AppClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await app_client(ws_messages_per_second=10_000, ws_message_burst=10_000, max_queue_size=1)
    ws = await connect(client)
    for kind in ("auth", "run", "stdin", "eof", "stop", "subscribe", "unsubscribe", "ping"):
        for name in FIELDS:
            for value in WRONG_VALUES:
                base: dict[str, Any] = {"type": kind}
                if kind == "run":
                    base |= {"language": "python", "code": "pass"}
                await ws.send_json({**base, name: value})
                await ws.send_json({"type": "ping"})
                for message in await until(ws, "pong"):
                    assert "went wrong" not in message.get("message", ""), (kind, name, value, message)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
