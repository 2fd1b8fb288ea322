"""`python -m server` as a process: graceful shutdown on SIGTERM and the sandbox refusal at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType

from tests.conftest import free_port, scaled

ROOT = Path(__file__).resolve().parent.parent


async def start_server(
    tmp_path: Path, argv: list[str] | None = None, **env: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv or [sys.executable, "-m", "server"],
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "PORT": str(port),
                "LOG_LEVEL": "warning",
                "LANGUAGES": "bash,python",  # probed at start-up: the jobs here need no others
                **env,
            },
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + scaled(30)
    async with aiohttp.ClientSession() as session:
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                async with session.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        return proc, url
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)


async def test_sigterm_cancels_what_is_left_tells_sockets_and_exits_0(tmp_path: Path) -> None:
    # An admin's socket: the queue topic names jobs by id only for admins (everyone else sees display handles).
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[[keys]]\nname = "ops"\nsha256 = "{hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}"\nadmin = true\n'
    )
    proc, url = await start_server(tmp_path, SHUTDOWN_GRACE_MS="300", MAX_CONCURRENT_JOBS="1", API_KEYS_FILE=str(keys))
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/ws", headers=admin) as ws:
            sleeper = {"language": "python", "code": "import time\nprint('up', flush=True)\ntime.sleep(60)"}
            waiting = asyncio.create_task(session.post(f"{url}/run", json=sleeper))
            async with asyncio.timeout(20):
                while True:
                    async with session.get(f"{url}/queue/status") as resp:
                        if (await resp.json())["runningCount"] == 1:
                            break
                    await asyncio.sleep(0.05)
            async with session.post(f"{url}/run?wait=false", json={"language": "bash", "code": "echo"}) as resp:
                queued_id = (await resp.json())["jobId"]
            async with session.get(f"{url}/queue/status") as resp:
                assert (await resp.json())["runningCount"] == 1
            # The socket watches the running job and the queue topic: both must hear how it ended.
            async with session.get(f"{url}/queue/job/{queued_id}") as resp:
                assert (await resp.json())["status"] == "queued"
            running_id = await _running_job_id(session, url)
            await ws.send_json({"type": "subscribe", "jobId": running_id})
            await ws.send_json({"type": "subscribe", "topic": "queue"})
            kinds: list[str] = []
            async with asyncio.timeout(20):
                while "snapshot" not in kinds:
                    kinds.append(orjson.loads((await ws.receive()).data)["type"])
            proc.send_signal(signal.SIGTERM)
            # The client waiting on the running job gets its final state: cancelled after the grace period.
            response = await asyncio.wait_for(waiting, scaled(20))
            job = await response.json()
            assert (job["status"], job["reason"]) == ("cancelled", "shutdown")
            # Sockets are told how their jobs ended, then that the server is going away.
            ended = []
            async with asyncio.timeout(20):
                while (msg := await ws.receive()).type == WSMsgType.TEXT:
                    message = orjson.loads(msg.data)
                    if message["type"] == "cancelled":
                        ended.append(message["jobId"])
            assert ws.close_code == 1001
            # Once as the watcher of the running job, once on the topic; the queued job on the topic too.
            assert ended.count(running_id) == 2 and queued_id in ended
        assert proc.wait(timeout=scaled(20)) == 0
        assert queued_id
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _running_job_id(session: aiohttp.ClientSession, url: str) -> str:
    async with session.ws_connect(f"{url}/ws", headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as ws:
        await ws.receive()
        await ws.send_json({"type": "subscribe", "topic": "queue"})
        while (message := orjson.loads((await ws.receive()).data))["type"] != "snapshot":
            pass
    running = [j["id"] for j in message["jobs"] if j["status"] == "running"]
    assert len(running) == 1
    return str(running[0])


ADMIN_KEY = "cvy_ops-admin-key-0123456789"
GARBAGE = [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
    b'POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{"lang',  # then the client resets
    b"POST /run HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS hello on the plain port
]


async def test_client_mistakes_are_one_line_each_never_a_traceback(tmp_path: Path) -> None:
    proc, url = await start_server(tmp_path, LOG_LEVEL="info")
    port = int(url.rsplit(":", 1)[1])
    try:
        for _ in range(20):
            for payload in GARBAGE:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(payload)
                await writer.drain()
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(reader.read(100), 0.5)
                writer.transport.abort()  # a reset, not a clean close
        async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=scaled(20))
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def refusal_of(argv: list[str], tmp_path: Path, **env: str) -> str:
    """The one line a server that refuses to start prints (exit 2, no traceback; log lines may come first)."""
    proc = subprocess.run(
        argv,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PORT": str(free_port()), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    refusal = [line for line in proc.stderr.splitlines() if line.startswith("conveyor:")]
    assert len(refusal) == 1, proc.stderr
    return refusal[0]


def test_start_up_refuses_without_bubblewrap(tmp_path: Path) -> None:
    # A PATH without bwrap: the server must refuse with one line, never fall back to running code unsandboxed.
    empty = tmp_path / "bin"
    empty.mkdir()
    assert "apt-get install bubblewrap" in refusal_of([sys.executable, "-m", "server"], tmp_path, PATH=str(empty))


async def test_languages_limits_what_is_offered_and_probed(tmp_path: Path) -> None:
    proc, url = await start_server(tmp_path, LANGUAGES="bash,c")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/runtimes") as resp:
                offered = {item["language"] for item in await resp.json()}
            async with session.post(f"{url}/run", json={"language": "python", "code": "print(1)"}) as resp:
                refused = resp.status, await resp.json()
            async with session.post(f"{url}/run", json={"language": "bash", "code": "echo hi"}) as resp:
                ran = await resp.json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert offered == {"bash", "c"}
    assert refused[0] == 400, refused
    assert ran["stdout"] == "hi\n", ran


def test_start_up_refuses_a_language_it_does_not_know(tmp_path: Path) -> None:
    refusal = refusal_of([sys.executable, "-m", "server"], tmp_path, LANGUAGES="bash,cobol-2077")
    assert "cobol-2077" in refusal and "bash" not in refusal


def without_cgroups(*argv: str) -> list[str]:
    """argv run in a mount namespace of its own with an empty /sys/fs/cgroup: a host where the server cannot reach
    any cgroup (what a non-root server without a delegated subtree sees)."""
    script = 'mount -t tmpfs none /sys/fs/cgroup && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


@pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace needs root")
def test_start_up_refuses_without_per_job_memory_limits(tmp_path: Path) -> None:
    refusal = refusal_of(without_cgroups(sys.executable, "-m", "server"), tmp_path)
    for way_out in ("as root", "user manager delegates memory", "Delegate=yes", "ALLOW_PER_PROCESS_LIMITS=1"):
        assert way_out in refusal


@pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace needs root")
async def test_opting_in_to_per_process_limits_starts_and_says_so(tmp_path: Path) -> None:
    env = {"ALLOW_PER_PROCESS_LIMITS": "1", "MEMORY_LIMIT_MB": "1024", "MAX_PROCESSES": "16", "LOG_LEVEL": "warning"}
    proc, url = await start_server(tmp_path, argv=without_cgroups(sys.executable, "-m", "server"), **env)
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as resp:
            memory = (await resp.json())["sandbox"]["limits"]["memory"]
        assert (memory["enforcedBy"], memory["perProcessMb"]) == ("RLIMIT_AS", 64)
        assert "ALLOW_PER_PROCESS_LIMITS" in (tmp_path / "server.log").read_text()  # the warning at start-up
    finally:
        proc.terminate()
        proc.wait(timeout=scaled(20))
