"""Hub benchmarks: 1,000 queue-topic subscribers while jobs arrive at 200/s, and one client streaming 1 MiB of output.

Run by hand from the repository root: `python -m bench.bench_hub` (`--help` for the knobs). It starts the real server
(`python -m server`, bubblewrap sandbox) as a subprocess on a free port of 127.0.0.1, so the server's CPU is read
from /proc apart from this process's, and it stops by itself in under half a minute.

The 1,000 subscribers are raw-socket WebSocket clients (handshake by hand; each received chunk is only timestamped and
kept, frames are parsed after the run), so that on a 2-core machine, where this process shares the CPUs with the
server, the benchmark's own work and event-loop delay stay as small as they can. The streaming client is aiohttp's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson

from bench.bench_sandbox import pool_refilled
from server.queue.stats import percentile

CLIENTS = 1000
RATE = 200.0
DURATION_S = 10.0
DRAIN_S = 15.0  # after the last submission, wait at most this long for stragglers
CONNECT_BATCH = 100
KEEPALIVE_S = 10.0  # the server pings after 25 s of silence; an unsolicited pong keeps a silent client alive
JOB = orjson.dumps({"language": "bash", "code": "true"})
STREAM_BYTES = 1_048_576  # exactly MAX_OUTPUT_BYTES's default: the job is not truncated
STREAM_CODE = f"import sys\nsys.stdout.write('x' * {STREAM_BYTES - 1} + '\\n')\n"
STREAM_REPS = 5
TERMINAL = frozenset({"completed", "failed", "timeout", "cancelled"})
REPO = Path(__file__).resolve().parent.parent
ADMIN_KEY = "cvy_bench-hub-admin"
SERVER_COMMAND = [sys.executable, "-m", "server"]
SERVER_ENV = {
    "HOST": "127.0.0.1",
    "LOG_LEVEL": "warning",
    "RATE_LIMIT_REQUESTS": "1000000",
    "RATE_LIMIT_READ_REQUESTS": "1000000",
    "WS_MAX_CONNECTIONS_PER_IP": "2000",
    "HTTP_MAX_CONNECTIONS_PER_IP": "100000",
    "MAX_CONCURRENT_JOBS": "2",
    "MAX_QUEUE_SIZE": "100000",
    "STATS_INTERVAL_MS": "500",
    "SHUTDOWN_GRACE_MS": "1000",
}


# -- the server subprocess -----------------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: IO[bytes]

    def cpu(self) -> tuple[float, float]:
        """CPU seconds (user+system) of the server process itself, and of its reaped children (the sandboxes)."""
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on; utime is field 14
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        tick = os.sysconf("SC_CLK_TCK")
        return (utime + stime) / tick, (cutime + cstime) / tick

    def log_text(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def running_server(clients: int) -> Iterator[Server]:
    port = _free_port()
    cap = str(max(2000, clients + 10))
    # Subscribers see display handles, not ids; one admin subscriber (this key) tells which handle is which job.
    keys = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    keys.write(f'[[keys]]\nname = "bench"\nsha256 = "{hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}"\nadmin = true\n')
    keys.close()
    env = {**os.environ, **SERVER_ENV, "PORT": str(port), "WS_MAX_CONNECTIONS_PER_IP": cap, "API_KEYS_FILE": keys.name}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(SERVER_COMMAND, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield Server(proc, port, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(keys.name)


async def wait_ready(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log_text()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{server.port}/health") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{server.log_text()}")


async def refilled(server: Server, timeout: float = 5.0) -> None:
    """Until the server's warm pool has every language it keeps ready again (or `timeout`): after the subscribers'
    jobs, a streaming run that found the pool drained started cold, and the first byte came 10 ms later."""
    async with aiohttp.ClientSession() as session:
        await pool_refilled(session, f"http://127.0.0.1:{server.port}", timeout, "the server")


def raise_nofile(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # inherited by the server subprocess
    return soft


# -- part 1: fan-out to 1,000 queue-topic subscribers ---------------------------------------------------------------


def _client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (RFC 6455 requires masking client to server); small payloads only."""
    mask = os.urandom(4)
    n = len(payload)
    header = struct.pack("!BB", 0x80 | opcode, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


SUBSCRIBE = _client_frame(orjson.dumps({"type": "subscribe", "topic": "queue"}))
PONG = _client_frame(b"", 0xA)


class Sink(asyncio.Protocol):
    """A subscriber that does the least per received chunk: timestamp it and keep it; frames are parsed later."""

    def __init__(self, port: int, *, admin: bool = False) -> None:
        loop = asyncio.get_running_loop()
        key = base64.b64encode(os.urandom(16)).decode()
        authorization = f"Authorization: Bearer {ADMIN_KEY}\r\n" if admin else ""
        self.request = (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{authorization}\r\n"
        ).encode()
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self.head = b""
        self.chunks: list[tuple[float, bytes]] = []
        self.queued_seen = 0  # approximate (a marker split across chunks is missed); only to stop draining early
        self.lost_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(ConnectionError(self.head.split(b"\r\n", 1)[0].decode()))
                return
            data, self.head = self.head[end + 4 :], b""
            self.upgraded.set_result(None)
            assert self.transport is not None
            self.transport.write(SUBSCRIBE)
            if not data:
                return
        self.chunks.append((time.perf_counter(), data))
        if not self.subscribed.done() and b'"type":"snapshot"' in data:
            self.subscribed.set_result(None)
        self.queued_seen += data.count(b'"type":"queued"')

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_at = time.perf_counter()
        for future in (self.upgraded, self.subscribed):
            if not future.done():
                future.set_exception(ConnectionError("connection lost"))

    def keepalive(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(PONG)


def frames(chunks: list[tuple[float, bytes]]) -> Iterator[tuple[float, int, bytes]]:
    """(arrival time of the frame's last byte, opcode, payload) for each whole server frame (unmasked, unfragmented)."""
    buf = b"".join(c for _, c in chunks)
    ends: list[int] = []
    total = 0
    for _, c in chunks:
        total += len(c)
        ends.append(total)
    pos, ci = 0, 0
    while pos + 2 <= len(buf):
        n, hl = buf[pos + 1] & 0x7F, 2
        if n == 126:
            n, hl = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif n == 127:
            n, hl = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        end = pos + hl + n
        if end > len(buf):
            return
        while ends[ci] < end:
            ci += 1
        yield chunks[ci][0], buf[pos] & 0x0F, buf[pos + hl : end]
        pos = end


@dataclass
class Submissions:
    sent: dict[str, tuple[float, float]] = field(default_factory=dict)  # job id -> (request sent, 202 received)
    errors: Counter[str] = field(default_factory=Counter)


async def _submit_one(session: aiohttp.ClientSession, url: str, subs: Submissions) -> None:
    t_sent = time.perf_counter()
    try:
        async with session.post(url, data=JOB, headers={"Content-Type": "application/json"}) as resp:
            body = await resp.read()
    except aiohttp.ClientError as exc:
        subs.errors[type(exc).__name__] += 1
        return
    t_202 = time.perf_counter()
    if resp.status == 202:
        subs.sent[orjson.loads(body)["jobId"]] = (t_sent, t_202)
    else:
        subs.errors[str(resp.status)] += 1


async def submit_paced(port: int, rate: float, duration: float) -> Submissions:
    """POST /run?wait=false on a fixed schedule (overdue ones go at once, on as many connections as it takes): the
    offered load does not slow down when the server does."""
    subs = Submissions()
    url = f"http://127.0.0.1:{port}/run?wait=false"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * duration)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_submit_one(session, url, subs)))
        await asyncio.gather(*tasks)
    return subs


def _factory(sink: Sink) -> Callable[[], Sink]:
    return lambda: sink


async def connect_sinks(port: int, n: int) -> list[Sink]:
    loop = asyncio.get_running_loop()
    sinks: list[Sink] = []
    for first in range(0, n, CONNECT_BATCH):
        batch = [Sink(port, admin=i == 0) for i in range(first, min(n, first + CONNECT_BATCH))]
        await asyncio.gather(*(loop.create_connection(_factory(s), "127.0.0.1", port) for s in batch))
        await asyncio.wait_for(asyncio.gather(*(s.upgraded for s in batch)), 30)
        sinks += batch
    await asyncio.wait_for(asyncio.gather(*(s.subscribed for s in sinks)), 30)
    return sinks


async def _keepalive(sinks: list[Sink]) -> None:
    while True:
        await asyncio.sleep(KEEPALIVE_S)
        for sink in sinks:
            sink.keepalive()


def _ms(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000.0


def analyse(sinks: list[Sink], subs: Submissions, start: float) -> dict[str, Any]:
    """Latency of every `queued` event of our jobs at every client.

    From the job's `createdAt` (the server's wall clock when the handler built the job; same machine, so the same
    clock): the fan-out delay on its own, whatever the HTTP side does. From the submitter's 202: the delay a client
    sees after the submitter has its answer; the server writes the 202 before the fan-out frames, but when it is
    saturated the 202 is late too, so this one flatters it.
    """
    wall = time.time() - time.perf_counter()
    from_created: list[float] = []
    from_202: list[float] = []
    per_second: dict[int, list[float]] = {}
    types: Counter[str] = Counter()
    closes: Counter[int] = Counter()
    close_times: list[float] = []
    ids: dict[str, str] = {}  # display handle -> job id, from the admin subscriber (sinks[0], analysed first)
    for sink in sinks:
        for t, opcode, payload in frames(sink.chunks):
            if opcode == 0x8:
                closes[int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005] += 1
                close_times.append(t - start)
                continue
            if opcode != 0x1:
                continue
            kind = payload[9 : payload.index(b'"', 9)].decode()  # every message starts {"type":"...
            types[kind] += 1
            if kind != "queued":
                continue
            event = orjson.loads(payload)
            if "jobId" in event:
                ids[event["handle"]] = event["jobId"]
            times = subs.sent.get(event.get("jobId") or ids.get(event["handle"], ""))
            if times is not None:
                latency = t + wall - event["createdAt"] / 1000.0
                from_created.append(latency)
                from_202.append(t - times[1])
                per_second.setdefault(int(times[0] - start), []).append(latency)
        sink.chunks = []
    from_created.sort()
    from_202.sort()
    rtt = sorted(t_202 - t_sent for t_sent, t_202 in subs.sent.values())
    return {
        "expected": len(subs.sent) * len(sinks),
        "delivered": len(from_created),
        "frames": dict(types),
        "closes": dict(closes),
        "first_close_s": min(close_times) if close_times else None,
        "lost_connections": sum(1 for s in sinks if s.lost_at is not None),
        "p50_ms": _ms(from_created, 50),
        "p99_ms": _ms(from_created, 99),
        "max_ms": from_created[-1] * 1000.0 if from_created else 0.0,
        "p50_from_202_ms": _ms(from_202, 50),
        "p99_from_202_ms": _ms(from_202, 99),
        "post_p50_ms": _ms(rtt, 50),
        "post_p99_ms": _ms(rtt, 99),
        "p99_by_second_ms": {s: _ms(sorted(v), 99) for s, v in sorted(per_second.items())},
    }


def _machine_cpu() -> tuple[float, float]:
    """CPU seconds all CPUs spent busy since boot, and of those in softirqs (/proc/stat): to tell what other
    processes, and the kernel's loopback TCP work charged to no process, took meanwhile."""
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # user nice system idle iowait irq softirq steal
    return busy / tick, ticks[6] / tick


async def fan_out(server: Server, clients: int, rate: float, duration: float) -> dict[str, Any]:
    t_connect = time.perf_counter()
    sinks = await connect_sinks(server.port, clients)
    connect_s = time.perf_counter() - t_connect
    keepalive = asyncio.create_task(_keepalive(sinks))
    await asyncio.sleep(1.0)  # let the snapshots go out and the server settle
    cpu0, kids0 = server.cpu()
    busy0, softirq0 = _machine_cpu()
    bench0, start = time.process_time(), time.perf_counter()
    subs = await submit_paced(server.port, rate, duration)
    submitted_at = time.perf_counter()
    cpu1, kids1 = server.cpu()
    expected = len(subs.sent) * clients
    deadline = submitted_at + DRAIN_S
    last, last_change = -1, submitted_at
    while time.perf_counter() < deadline:
        seen = sum(s.queued_seen for s in sinks)
        now = time.perf_counter()
        if seen >= expected or all(s.lost_at is not None for s in sinks):
            break
        if seen != last:
            last, last_change = seen, now
        elif now - last_change > 2.0:
            break  # nothing arrives any more (closed sockets, or markers split across chunks)
        await asyncio.sleep(0.05)
    end = time.perf_counter()
    cpu2, kids2 = server.cpu()
    bench_cpu = time.process_time() - bench0
    busy1, softirq1 = _machine_cpu()
    busy, softirq = busy1 - busy0, softirq1 - softirq0
    keepalive.cancel()
    for sink in sinks:
        if sink.transport is not None:
            sink.transport.close()
    result = analyse(sinks, subs, start)
    result.update(
        clients=clients,
        rate=rate,
        duration_s=duration,
        connect_s=connect_s,
        submitted=len(subs.sent),
        submit_errors=dict(subs.errors),
        submit_s=submitted_at - start,
        drain_s=end - submitted_at,
        server_cpu_s=cpu2 - cpu0,
        server_cpu_pct=100.0 * (cpu2 - cpu0) / (end - start),
        server_cpu_submit_pct=100.0 * (cpu1 - cpu0) / (submitted_at - start),
        sandbox_cpu_s=kids2 - kids0,
        bench_cpu_pct=100.0 * bench_cpu / (end - start),
        # Busy time of the whole machine not charged to the server, its sandboxes or this process: other users
        # of the box, and kernel work (loopback softirqs) charged to no process.
        other_cpu_pct=100.0 * (busy - (cpu2 - cpu0) - (kids2 - kids0) - bench_cpu) / (end - start),
        softirq_cpu_pct=100.0 * softirq / (end - start),
        machine_busy_pct=100.0 * busy / (end - start),
        window_s=end - start,
    )
    return result


# -- part 2: streaming 1 MiB ---------------------------------------------------------------------------------------


async def stream_ws(port: int) -> tuple[float, float, int, dict[str, Any]]:
    """(time to first output byte, time to the terminal event, bytes, terminal event) for one WebSocket `run`."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{port}/ws", max_msg_size=0) as ws,
    ):
        await ws.receive_json()  # hello
        start = time.perf_counter()
        await ws.send_json({"type": "run", "language": "python", "code": STREAM_CODE, "requestId": "stream"})
        first: float | None = None
        received = 0
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"unexpected frame {msg.type}")
            event: dict[str, Any] = orjson.loads(msg.data)
            if event["type"] == "output" and event["stream"] == "stdout":
                if first is None:
                    first = time.perf_counter() - start
                received += len(event["data"].encode())
            elif event["type"] in TERMINAL:
                return first or 0.0, time.perf_counter() - start, received, event
            elif event["type"] == "error":
                raise RuntimeError(f"run refused: {event}")
    raise RuntimeError("socket closed before the job ended")


async def stream_pipe(python: str) -> tuple[float, float, int]:
    """The same program as a bare subprocess (same interpreter, unbuffered), its stdout read from the pipe."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(python, "-c", STREAM_CODE, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    first: float | None = None
    received = 0
    while data := await proc.stdout.read(65536):
        if first is None:
            first = time.perf_counter() - start
        received += len(data)
    await proc.wait()
    return first or 0.0, time.perf_counter() - start, received


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def streaming(server: Server, reps: int) -> dict[str, Any]:
    # The sandbox runs `python3` from the system; the bare run uses the same interpreter when it is there.
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    ws_runs, pipe_runs = [], []
    truncated = False
    for _ in range(reps):  # interleaved, so drift on the machine hits both alike
        await refilled(server)
        ttfb, total, size, event = await stream_ws(server.port)
        truncated |= bool(event.get("truncated")) or event["type"] != "completed"
        ws_runs.append((ttfb, total, size))
        pipe_runs.append(await stream_pipe(python))

    def summary(runs: list[tuple[float, float, int]]) -> dict[str, float]:
        return {
            "ttfb_ms": _median([r[0] for r in runs]) * 1000.0,
            "total_ms": _median([r[1] for r in runs]) * 1000.0,
            "bytes": float(runs[0][2]),
            "bytes_per_s": _median([r[2] / r[1] for r in runs]),
            "stream_bytes_per_s": _median([r[2] / (r[1] - r[0]) for r in runs]),
        }

    ws, pipe = summary(ws_runs), summary(pipe_runs)
    return {"ws": ws, "pipe": pipe, "python": python, "reps": reps, "ws_incomplete_or_truncated": truncated}


# -- report ----------------------------------------------------------------------------------------------------------


def _print(fan: dict[str, Any], stream: dict[str, Any]) -> None:
    print(
        f"fan-out: {fan['clients']} subscribers, {fan['submitted']} jobs offered at {fan['rate']:.0f}/s for "
        f"{fan['duration_s']:.0f} s, all answered after {fan['submit_s']:.1f} s "
        f"(connect {fan['connect_s']:.1f} s, drain {fan['drain_s']:.1f} s)"
    )
    print(f"  queued events delivered  {fan['delivered']:,} of {fan['expected']:,}")
    print(
        f"  latency from createdAt   p50 {fan['p50_ms']:8.1f} ms   p99 {fan['p99_ms']:8.1f} ms   "
        f"max {fan['max_ms']:8.1f} ms   (goal p99 <= 200 ms)"
    )
    print(f"  latency from the 202     p50 {fan['p50_from_202_ms']:8.1f} ms   p99 {fan['p99_from_202_ms']:8.1f} ms")
    print(f"  POST /run round trip     p50 {fan['post_p50_ms']:8.1f} ms   p99 {fan['post_p99_ms']:8.1f} ms")
    by_second = "  ".join(f"{s}s:{v:.0f}" for s, v in fan["p99_by_second_ms"].items())
    print(f"  p99 by submission second {by_second}")
    print(f"  frames received          {fan['frames']}   closes {fan['closes'] or 'none'}")
    print(
        f"  server CPU               {fan['server_cpu_s']:.1f} s = {fan['server_cpu_pct']:.0f}% of one core over "
        f"{fan['window_s']:.1f} s ({fan['server_cpu_submit_pct']:.0f}% while submitting); sandboxes "
        f"{fan['sandbox_cpu_s']:.1f} s; this bench {fan['bench_cpu_pct']:.0f}%"
    )
    print(
        f"  machine                  busy {fan['machine_busy_pct']:.0f}% (of {100 * (os.cpu_count() or 1)}%),"
        f" softirqs {fan['softirq_cpu_pct']:.0f}%, not charged to the server, sandboxes or bench "
        f"{fan['other_cpu_pct']:.0f}%"
    )
    if fan["submit_errors"]:
        print(f"  submit errors            {fan['submit_errors']}")
    ws, pipe = stream["ws"], stream["pipe"]
    print(f"streaming {ws['bytes']:,.0f} bytes of stdout (median of {stream['reps']}):")
    print(f"  {'':10} {'first byte':>12} {'total':>10} {'bytes/s':>14} {'after 1st byte':>15}")
    for name, row in (("websocket", ws), ("bare pipe", pipe)):
        print(
            f"  {name:10} {row['ttfb_ms']:9.1f} ms {row['total_ms']:7.1f} ms {row['bytes_per_s'] / 1e6:10.1f} MB/s "
            f"{row['stream_bytes_per_s'] / 1e6:11.1f} MB/s"
        )
    print(
        f"  ratio websocket/pipe: bytes/s {ws['bytes_per_s'] / pipe['bytes_per_s']:.2f}, "
        f"time to first byte {ws['ttfb_ms'] / pipe['ttfb_ms']:.1f}x"
    )
    if stream["ws_incomplete_or_truncated"]:
        print("  WARNING: a WebSocket run did not complete untruncated")


async def run(clients: int, rate: float, duration: float, reps: int) -> dict[str, Any]:
    raise_nofile(4 * clients + 256)  # the sinks, and as many submitter connections as the server makes us open
    print(f"{os.cpu_count()} CPUs, load average before the run {os.getloadavg()[0]:.2f}")
    with running_server(clients) as server:
        await wait_ready(server)
        # Streaming first, on an idle server: the fan-out leaves a backlog of queued jobs behind it.
        stream = await streaming(server, reps)
        fan = await fan_out(server, clients, rate, duration)
        log = server.log_text()
    # Overflow closes are counted; cgroup-sweep warnings at start-up concern other servers' leftovers.
    overflows = log.count("send queue overflowed")
    warnings = [
        line for line in log.splitlines() if not any(w in line for w in ("overflowed", "server.sandbox.cgroups"))
    ]
    fan["overflow_closes_logged"] = overflows
    _print(fan, stream)
    if overflows:
        print(f"  server log: {overflows} sockets closed for send queue overflow")
    if warnings:
        print("  server log:", *warnings[:5], sep="\n    ")
    return {"fan_out": fan, "streaming": stream, "cores": os.cpu_count()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_hub", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--rate", type=float, default=RATE, help="jobs submitted per second")
    parser.add_argument("--duration", type=float, default=DURATION_S, help="seconds of submitting")
    parser.add_argument("--reps", type=int, default=STREAM_REPS, help="streaming runs of each kind")
    args = parser.parse_args([] if argv is None else argv)
    return asyncio.run(run(args.clients, args.rate, args.duration, args.reps))


if __name__ == "__main__":
    main(sys.argv[1:])
