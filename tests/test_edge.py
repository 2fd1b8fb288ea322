"""The HTTP edge over real sockets: slowloris, short bodies, idle keep-alive, connections per address, descriptors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from server.app import create_app
from server.doors import edge
from server.doors.edge import FdBudget, count_open_fds, listen, make_runner
from server.queue.jobs import Runner
from tests.conftest import free_port, make_settings
from tests.test_main import ROOT

Address = tuple[str, int]
Serve = Callable[..., Awaitable[Address]]
REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture
async def serve(sandbox: Runner) -> AsyncIterator[Serve]:
    """Factory: the app behind the edge on 127.0.0.1 (what `python -m server` runs), with setting overrides."""
    started: list[tuple[web.AppRunner, asyncio.Server]] = []

    async def make(**overrides: Any) -> Address:
        settings = make_settings(**overrides)
        runner = make_runner(create_app(settings, runner=sandbox), settings)
        await runner.setup()
        server = await listen(runner, settings, host="127.0.0.1", port=0)
        started.append((runner, server))
        host, port = server.sockets[0].getsockname()[:2]
        return host, port

    yield make
    for runner, server in started:
        server.close()
        await runner.cleanup()


_WRITERS: list[asyncio.StreamWriter] = []


async def open_raw(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*address)
    _WRITERS.append(writer)
    return reader, writer


@pytest.fixture(autouse=True)
async def close_raw_connections() -> AsyncIterator[None]:
    yield
    while _WRITERS:
        writer = _WRITERS.pop()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 20) -> bytes:
    """Everything the server sent until it closed the connection (fails the test if it never does)."""
    async with asyncio.timeout(timeout):
        return await reader.read()


async def test_slowloris_headers_are_cut_off(serve: Serve) -> None:
    # Keep-alive is long, so only the header deadline can end these connections.
    address = await serve(http_header_timeout_ms=300, http_keepalive_timeout_ms=600_000)
    attackers = [await open_raw(address) for _ in range(5)]
    for _, writer in attackers:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        # The server closing with our headers unread makes the kernel reset the connection: a read then raises
        # instead of returning EOF. Either way nothing was answered, which is what the test is after.
        try:
            async with asyncio.timeout(20):
                while not reader.at_eof():
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
                    with _ignore_timeout():
                        async with asyncio.timeout(0.05):
                            await reader.read(1)
            return await reader.read()
        except ConnectionError:
            return b""

    sent = await asyncio.gather(*(trickle(reader, writer) for reader, writer in attackers))
    assert sent == [b""] * 5  # closed without ever being answered
    # Honest clients still get in.
    reader, writer = await open_raw(address)
    writer.write(REQUEST)
    assert (await response(reader))[0] == 200
    writer.close()


class _ignore_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, traceback: object) -> bool:
        return kind is TimeoutError


@pytest.mark.parametrize("path", ["/run", "/api/v2/execute", "/judge0/submissions", "/judge0/submissions/batch"])
async def test_a_short_body_gets_408_and_the_connection_closes(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    # At every door, the connection closes with the 408, not after aiohttp's lingering close (an hour here) has read
    # the rest of a body its client stopped sending: that would hold the connection past its body's deadline.
    monkeypatch.setattr(edge, "LINGERING_S", 3600.0)
    address = await serve(http_body_timeout_ms=300)
    reader, writer = await open_raw(address)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        '{"language"'.encode()
    )
    status, headers, body = await response(reader)
    assert status == 408 and headers["connection"] == "close"
    if path == "/run":
        assert orjson.loads(body)["error"] == "Request timeout"
    assert await closed_by_server(reader) == b""


async def test_idle_keep_alive_connections_are_closed(serve: Serve) -> None:
    address = await serve(http_keepalive_timeout_ms=300, http_header_timeout_ms=600_000)
    idle_reader, idle_writer = await open_raw(address)
    idle_writer.write(REQUEST)
    assert (await response(idle_reader))[0] == 200
    # A second request that never completes is bounded by the keep-alive deadline as well.
    partial_reader, partial_writer = await open_raw(address)
    partial_writer.write(REQUEST + b"GET /health HTTP/1.1\r\nHost: 127")
    assert (await response(partial_reader))[0] == 200
    # And a connection that never says anything at all.
    _silent_reader, _ = await open_raw(address)
    for reader in (idle_reader, partial_reader, _silent_reader):
        assert await closed_by_server(reader) == b""


async def test_connections_per_address_are_capped(serve: Serve) -> None:
    address = await serve(http_max_connections_per_ip=3)
    held = [await open_raw(address) for _ in range(3)]
    for reader, writer in held:
        writer.write(REQUEST)
        assert (await response(reader))[0] == 200
    reader, _ = await open_raw(address)
    status, headers, body = await response(reader)
    assert status == 429 and headers["retry-after"] == "5" and "3 open connections" in orjson.loads(body)["message"]
    assert await closed_by_server(reader) == b""
    held[0][1].close()
    await closed_by_server(held[0][0])
    async with asyncio.timeout(20):
        while True:  # the server notices the close on its next loop turn
            reader, writer = await open_raw(address)
            writer.write(REQUEST)
            status = (await response(reader))[0]
            writer.close()
            if status == 200:
                break


async def test_trusted_proxies_are_not_capped(serve: Serve) -> None:
    address = await serve(http_max_connections_per_ip=2, trusted_proxies=("127.0.0.0/8",))
    for _ in range(5):
        reader, writer = await open_raw(address)
        writer.write(REQUEST)
        assert (await response(reader))[0] == 200


def test_fd_budget_counts_and_refuses_within_the_reserve() -> None:
    now = [0.0]
    counts = [100]
    budget = FdBudget(16, limit=lambda: 120, count=lambda: counts[0], clock=lambda: now[0])
    assert budget.admit()  # 100 open, 104 allowed
    for _ in range(3):
        assert budget.admit()  # counted on top of the cached count: 101..103
    assert not budget.admit()  # 104
    counts[0] = 50
    now[0] += 1.0
    assert budget.admit()  # recounted after the TTL
    assert count_open_fds() > 0


async def test_a_job_never_fails_for_want_of_descriptors(tmp_path: Path) -> None:
    """The issue's attack on a real process with few descriptors: connections pile up until the server refuses
    them; a job submitted on a connection opened before still runs (it failed `internal_error` at os.pipe)."""
    port = free_port()
    log = tmp_path / "server.log"

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server"],
            # A job's own open-files limit must fit under the server's hard limit.
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "PORT": str(port),
                "FD_RESERVE": "64",
                "MAX_OPEN_FILES": "64",
                "HTTP_MAX_CONNECTIONS_PER_IP": "100000",
                "LANGUAGES": "python",
            },
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=low_limit,
        )
    try:
        address = ("127.0.0.1", port)
        async with asyncio.timeout(60):
            while True:
                try:
                    reader, writer = await open_raw(address)
                    break
                except OSError:
                    assert proc.poll() is None, log.read_text()
                    await asyncio.sleep(0.1)
        writer.write(REQUEST)
        assert (await response(reader))[0] == 200
        flood: list[socket.socket] = []
        refused = 0
        for _ in range(400):
            sock = socket.create_connection(address)
            flood.append(sock)
            sock.settimeout(20)
            sock.sendall(REQUEST)
            if b"503 Service Unavailable" in sock.recv(65536):
                refused += 1
        assert refused > 0
        body = orjson.dumps({"language": "python", "code": "print('still here')"})
        writer.write(
            b"POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, _, answer = await response(reader)
        job = orjson.loads(answer)
        assert (status, job["status"], job["stdout"]) == (200, "completed", "still here\n"), job
    finally:
        for sock in locals().get("flood", []):
            sock.close()  # also when an assertion failed: left open, they fail the next test on this worker
        proc.kill()
        proc.wait()


def test_start_up_raises_the_soft_open_files_limit(tmp_path: Path) -> None:
    script = (
        "import resource\nfrom server.doors.edge import raise_nofile_limit\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (100, 1000))\nprint(*raise_nofile_limit())\n"
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    assert out.stdout.split() == ["1000", "1000", "1000", "1000"], out.stderr
