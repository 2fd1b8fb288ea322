"""Sandbox benchmark: a python hello world through `POST /run` against a bare bubblewrap spawn, latency and jobs/s.

Run by hand from the repo root: `python -m bench.bench_sandbox`. The server is the real one, `python -m server` in a
subprocess (production settings except generous rate limits and MAX_CONCURRENT_JOBS = cores), so the client's work
does not share the server's event loop. The same job through `Sandbox()` in this process separates the sandbox's
share from HTTP and the queue. Figures are ratios to the bare spawn measured in the same run, in alternating rounds
so that other load on the host hits both sides alike.
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import aiohttp

from server.jobs import Job, JobIO
from server.sandbox import Sandbox
from server.settings import Settings

HELLO = "print(1)"
BARE_ARGV = [
    "bwrap",
    *("--ro-bind", "/usr", "/usr"),
    *("--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin"),
    *("--proc", "/proc", "--dev", "/dev"),
    *("--unshare-all", "--die-with-parent", "--new-session"),
    *("/usr/bin/python3", "-c", HELLO),
]
WARMUP = 3
N_LATENCY = 50
N_THROUGHPUT = 200
ROUNDS = 5  # bare and server take turns in this many rounds, so that other load on the host hits both alike
START_TIMEOUT_S = 60.0
LATENCY_GOAL = 1.3  # server median at most this many times the bare spawn's
THROUGHPUT_GOAL = 0.8  # server jobs/s at least this fraction of the bare loop's

RunOne = Callable[[], Awaitable[None]]  # one hello-world job, start to end


async def bare_spawn() -> None:
    """The hand-written equivalent: one bwrap, read its stdout, wait for it."""
    proc = await asyncio.create_subprocess_exec(
        *BARE_ARGV, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0 or out != b"1\n":
        raise RuntimeError(f"bare bwrap failed: exit {proc.returncode}, stdout {out!r}")


def server_job(session: aiohttp.ClientSession, url: str) -> RunOne:
    async def run() -> None:
        async with session.post(f"{url}/run", json={"language": "python", "code": HELLO}) as resp:
            job = await resp.json()
        if resp.status != 200 or job.get("stdout") != "1\n":
            raise RuntimeError(f"POST /run failed: HTTP {resp.status}: {job}")

    return run


def sandbox_job(sandbox: Sandbox) -> RunOne:
    async def run() -> None:
        result = await sandbox(Job(language="python", code=HELLO), JobIO(on_output=lambda stream, text: None))
        if result.stdout != "1\n":
            raise RuntimeError(f"Sandbox() failed: {result}")

    return run


async def latency(jobs: dict[str, RunOne]) -> dict[str, list[float]]:
    """Seconds per job, one job at a time, in alternating rounds of sequential jobs of one kind.

    A job is slower right after another kind (the kernel is still tearing the previous sandbox's namespaces down),
    so each round starts with an untimed job: every timed job follows one of its own kind, as in a plain loop.
    """
    for job in jobs.values():
        for _ in range(WARMUP):
            await job()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(ROUNDS):
        for name, job in jobs.items():
            await job()
            for _ in range(N_LATENCY // ROUNDS):
                start = time.perf_counter()
                await job()
                times[name].append(time.perf_counter() - start)
    return times


async def run_batch(job: RunOne, count: int, concurrency: int) -> float:
    """Seconds to run `count` jobs with `concurrency` of them in flight at all times."""
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await job()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process itself (not its children: bwrap does not reap every process it starts)."""
    # /proc/<pid>/stat fields 14 and 15, utime and stime in clock ticks, counted after the "(comm)" field.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_server(cores: int, log: IO[bytes]) -> tuple[asyncio.subprocess.Process, str]:
    """`python -m server` on a free port; returns once GET /health answers, with the URL."""
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MAX_CONCURRENT_JOBS": str(cores),
        "MAX_QUEUE_SIZE": str(N_THROUGHPUT),
        "RATE_LIMIT_REQUESTS": "1000000",
        "RATE_LIMIT_READ_REQUESTS": "1000000",
        "LOG_LEVEL": "warning",
    }
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline and proc.returncode is None:
            try:
                async with session.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        return proc, url
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
    proc.kill()
    await proc.wait()
    raise RuntimeError(f"the server did not start (exit {proc.returncode}); see {log.name}")


async def describe(session: aiohttp.ClientSession, url: str) -> str:
    """How this host enforces memory and process limits (cgroups or rlimits): part of what is measured."""
    async with session.get(f"{url}/health") as resp:
        limits = (await resp.json())["sandbox"]["limits"]
    return f"memory by {limits['memory']['enforcedBy']}, processes by {limits['processes']['enforcedBy']}"


async def measure() -> dict[str, Any]:
    cores = os.cpu_count() or 1
    direct = await Sandbox.create(Settings(), languages=["python"])
    perl = await Sandbox.create(Settings(), languages=["python"], helper=False)  # the launcher before the C helper
    log = tempfile.NamedTemporaryFile(prefix="conveyor-bench-sandbox-", suffix=".log", delete=False)
    try:
        proc, url = await start_server(cores, log)
        try:
            # At most `cores` connections, kept alive, as a few busy clients would use them.
            connector = aiohttp.TCPConnector(limit=cores)
            async with aiohttp.ClientSession(connector=connector) as session:
                enforcement = await describe(session, url)
                server = server_job(session, url)
                kinds = {"bare": bare_spawn, "direct": sandbox_job(direct), "perl": sandbox_job(perl), "server": server}
                times = await latency(kinds)
                elapsed = {"bare": 0.0, "server": 0.0}
                client_cpu = server_cpu = 0.0
                for _ in range(ROUNDS):
                    elapsed["bare"] += await run_batch(bare_spawn, N_THROUGHPUT // ROUNDS, cores)
                    client_before, server_before = cpu_seconds(os.getpid()), cpu_seconds(proc.pid)
                    elapsed["server"] += await run_batch(server, N_THROUGHPUT // ROUNDS, cores)
                    client_cpu += cpu_seconds(os.getpid()) - client_before
                    server_cpu += cpu_seconds(proc.pid) - server_before
        finally:
            proc.terminate()
            await proc.wait()
    finally:
        await direct.close()
        await perl.close()
        log.close()
        os.unlink(log.name)
    jobs = N_THROUGHPUT // ROUNDS * ROUNDS
    rates = {name: jobs / seconds for name, seconds in elapsed.items()}
    return {
        "cores": cores,
        "enforcement": enforcement,
        "latency_ms": {
            **{name: _summary(values) for name, values in times.items()},
            "ratio": statistics.median(times["server"]) / statistics.median(times["bare"]),
            "helper_ratio": statistics.median(times["direct"]) / statistics.median(times["perl"]),
        },
        "jobs_per_s": {**rates, "ratio": rates["server"] / rates["bare"]},
        "cpu_ms_per_job": {"server_process": server_cpu * 1000 / jobs, "client": client_cpu * 1000 / jobs},
    }


def _summary(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times) * 1000, "p95": statistics.quantiles(times, n=20)[-1] * 1000}


def main() -> dict[str, Any]:
    """Measure, print a table, return the figures."""
    figures = asyncio.run(measure())
    lat, rate, cpu = figures["latency_ms"], figures["jobs_per_s"], figures["cpu_ms_per_job"]
    print(f"python {platform.python_version()} on {platform.machine()}, {figures['cores']} cores")
    print(f"sandbox: {figures['enforcement']}")
    print(f"python hello world, latency of {N_LATENCY} sequential jobs each in {ROUNDS} rounds, {WARMUP} warm-ups:")
    print(f"  {'':<32} {'median ms':>10} {'p95 ms':>10}")
    rows = (
        ("bare", "bare bwrap spawn"),
        ("direct", "Sandbox() in-process"),
        ("perl", "  the same, perl launcher"),
        ("server", "POST /run"),
    )
    for name, label in rows:
        print(f"  {label:<32} {lat[name]['median']:>10.1f} {lat[name]['p95']:>10.1f}")
    print(f"  Sandbox(), C helper / perl launcher: {lat['helper_ratio']:.2f}x")
    verdict = "meets" if lat["ratio"] <= LATENCY_GOAL else "misses"
    print(f"  POST /run / bare: {lat['ratio']:.2f}x (goal <= {LATENCY_GOAL}x: {verdict})")
    print(f"throughput, {N_THROUGHPUT} jobs each in {ROUNDS} rounds, {figures['cores']} in flight:")
    print(f"  {'bare bwrap spawn':<32} {rate['bare']:>10.1f} jobs/s")
    print(f"  {'POST /run':<32} {rate['server']:>10.1f} jobs/s")
    verdict = "meets" if rate["ratio"] >= THROUGHPUT_GOAL else "misses"
    print(f"  POST /run / bare: {rate['ratio']:.2f}x (goal >= {THROUGHPUT_GOAL}x: {verdict})")
    print("CPU per job in the POST /run throughput rounds, Python processes only (ms):")
    print(f"  {'server process':<32} {cpu['server_process']:>10.1f}")
    print(f"  {'client (this process)':<32} {cpu['client']:>10.1f}")
    return figures


if __name__ == "__main__":
    main()
