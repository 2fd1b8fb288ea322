"""Sandbox benchmark: a python hello world through `POST /run` against a bare bubblewrap spawn, latency and jobs/s,
with the warm pool (WARM_POOL, the default) and without it (WARM_POOL=0, every job a cold sandbox).

Run by hand from the repo root: `python -m bench.bench_sandbox`. The servers are the real one, `python -m server` in
subprocesses (production settings except generous rate limits and MAX_CONCURRENT_JOBS = cores), so the client's work
does not share a server's event loop. The same job through `Sandbox()` in this process separates the sandbox's
share from HTTP and the queue. Figures are ratios to the bare spawn measured in the same run, in alternating rounds
so that other load on the host hits both sides alike. Also: the time to a WebSocket run's first output, C and Java
hellos, and a burst of jobs larger than the pool (it must fall back to cold starts, never fail).
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
LATENCY_GOAL = 0.7  # warm server median at most this many times the bare spawn's (issue 15)
THROUGHPUT_GOAL = 0.8  # server jobs/s at least this fraction of the bare loop's
N_OTHER = 10  # C and Java hellos, WebSocket first outputs: jobs per server
BURST = 24  # jobs submitted at once against a pool of WARM_POOL

RunOne = Callable[[], Awaitable[None]]  # one hello-world job, start to end
OTHER_HELLOS = [
    ("c", '#include <stdio.h>\nint main(void) { puts("1"); return 0; }\n', "1\n"),
    ("java", 'public class Main { public static void main(String[] a) { System.out.println("1"); } }\n', "1\n"),
]


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


def language_job(session: aiohttp.ClientSession, url: str, language: str, code: str, want: str) -> RunOne:
    async def run() -> None:
        async with session.post(f"{url}/run", json={"language": language, "code": code}) as resp:
            job = await resp.json()
        if resp.status != 200 or job.get("stdout") != want:
            raise RuntimeError(f"POST /run ({language}) failed: HTTP {resp.status}: {job}")

    return run


async def first_output(session: aiohttp.ClientSession, url: str) -> float:
    """Seconds from sending a WebSocket `run` to the first `output` event of its program."""
    async with session.ws_connect(f"{url}/ws") as ws:
        await ws.receive_json()  # hello
        start = time.perf_counter()
        await ws.send_json({"type": "run", "language": "python", "code": HELLO, "requestId": "b"})
        while True:
            event = await ws.receive_json(timeout=30)
            if event.get("type") == "output":
                return time.perf_counter() - start
            if event.get("type") in ("error", "failed", "timeout", "cancelled"):
                raise RuntimeError(f"WebSocket run failed: {event}")


async def burst(session: aiohttp.ClientSession, url: str) -> tuple[float, dict[str, Any]]:
    """BURST python hellos at once after a quiet second; seconds until all are done, and the pool's counters."""
    await asyncio.sleep(1.0)
    before = await pool(session, url)
    start = time.perf_counter()
    await asyncio.gather(*(server_job(session, url)() for _ in range(BURST)))
    elapsed = time.perf_counter() - start
    after = await pool(session, url)
    return elapsed, {key: after[key] - before[key] for key in ("hits", "misses")}


async def pool(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/health") as resp:
        status: dict[str, Any] = (await resp.json())["pool"]
        return status


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


async def start_server(cores: int, log: IO[bytes], warm_pool: int) -> tuple[asyncio.subprocess.Process, str]:
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
        "WARM_POOL": str(warm_pool),
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
    cold_direct = await Sandbox.create(Settings(warm_pool=0), languages=["python"])
    log = tempfile.NamedTemporaryFile(prefix="conveyor-bench-sandbox-", suffix=".log", delete=False)
    procs: list[asyncio.subprocess.Process] = []
    try:
        warm_proc, warm_url = await start_server(cores, log, Settings().warm_pool)
        procs.append(warm_proc)
        cold_proc, cold_url = await start_server(cores, log, 0)
        procs.append(cold_proc)
        # At most `cores` connections per server, kept alive, as a few busy clients would use them.
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=cores)) as warm_session,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=cores)) as cold_session,
        ):
            enforcement = await describe(warm_session, warm_url)
            servers = {"warm": server_job(warm_session, warm_url), "cold": server_job(cold_session, cold_url)}
            kinds = {"bare": bare_spawn, "direct": sandbox_job(direct), "direct_cold": sandbox_job(cold_direct)}
            times = await latency({**kinds, **servers})
            elapsed = {"bare": 0.0, "warm": 0.0, "cold": 0.0}
            server_cpu = {"warm": 0.0, "cold": 0.0}
            for _ in range(ROUNDS):
                elapsed["bare"] += await run_batch(bare_spawn, N_THROUGHPUT // ROUNDS, cores)
                for name, proc in (("warm", warm_proc), ("cold", cold_proc)):
                    before = cpu_seconds(proc.pid)
                    elapsed[name] += await run_batch(servers[name], N_THROUGHPUT // ROUNDS, cores)
                    server_cpu[name] += cpu_seconds(proc.pid) - before
            others: dict[str, list[float]] = {}
            sessions = {"warm": (warm_session, warm_url), "cold": (cold_session, cold_url)}
            for _ in range(N_OTHER):
                for name, (session, url) in sessions.items():
                    for language, code, want in OTHER_HELLOS:
                        job = language_job(session, url, language, code, want)
                        start = time.perf_counter()
                        await job()
                        others.setdefault(f"{language}_{name}", []).append(time.perf_counter() - start)
                    others.setdefault(f"ws_{name}", []).append(await first_output(session, url))
            bursts = {name: await burst(session, url) for name, (session, url) in sessions.items()}
            warm_pool = await pool(warm_session, warm_url)
    finally:
        for proc in procs:
            proc.terminate()
            await proc.wait()
        await direct.close()
        await cold_direct.close()
        log.close()
        os.unlink(log.name)
    jobs = N_THROUGHPUT // ROUNDS * ROUNDS
    rates = {name: jobs / seconds for name, seconds in elapsed.items()}
    bare = statistics.median(times["bare"])
    return {
        "cores": cores,
        "enforcement": enforcement,
        "latency_ms": {
            **{name: _summary(values) for name, values in times.items()},
            "ratio": statistics.median(times["warm"]) / bare,
            "cold_ratio": statistics.median(times["cold"]) / bare,
        },
        "jobs_per_s": {**rates, "ratio": rates["warm"] / rates["bare"], "cold_ratio": rates["cold"] / rates["bare"]},
        "cpu_ms_per_job": {name: cpu * 1000 / jobs for name, cpu in server_cpu.items()},
        "others_ms": {name: _summary(values) for name, values in others.items()},
        "burst": {name: {"seconds": seconds, **counts} for name, (seconds, counts) in bursts.items()},
        "pool": warm_pool,
    }


def _summary(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times) * 1000, "p95": statistics.quantiles(times, n=20)[-1] * 1000}


def main() -> dict[str, Any]:
    """Measure, print a table, return the figures."""
    figures = asyncio.run(measure())
    lat, rate, cpu, other = (
        figures["latency_ms"],
        figures["jobs_per_s"],
        figures["cpu_ms_per_job"],
        figures["others_ms"],
    )
    print(f"python {platform.python_version()} on {platform.machine()}, {figures['cores']} cores")
    print(f"sandbox: {figures['enforcement']}")
    print(f"python hello world, latency of {N_LATENCY} sequential jobs each in {ROUNDS} rounds, {WARMUP} warm-ups:")
    print(f"  {'':<36} {'median ms':>10} {'p95 ms':>10}")
    rows = (
        ("bare", "bare bwrap spawn"),
        ("direct", "Sandbox() in-process, warm pool"),
        ("direct_cold", "Sandbox() in-process, WARM_POOL=0"),
        ("warm", "POST /run, warm pool"),
        ("cold", "POST /run, WARM_POOL=0"),
    )
    for name, label in rows:
        print(f"  {label:<36} {lat[name]['median']:>10.1f} {lat[name]['p95']:>10.1f}")
    verdict = "meets" if lat["ratio"] <= LATENCY_GOAL else "misses"
    print(
        f"  POST /run / bare: warm {lat['ratio']:.2f}x (goal <= {LATENCY_GOAL}x: {verdict}),",
        f"cold {lat['cold_ratio']:.2f}x",
    )
    print(f"throughput, {N_THROUGHPUT} jobs each in {ROUNDS} rounds, {figures['cores']} in flight:")
    print(f"  {'bare bwrap spawn':<36} {rate['bare']:>10.1f} jobs/s")
    print(f"  {'POST /run, warm pool':<36} {rate['warm']:>10.1f} jobs/s")
    print(f"  {'POST /run, WARM_POOL=0':<36} {rate['cold']:>10.1f} jobs/s")
    verdict = "meets" if rate["ratio"] >= THROUGHPUT_GOAL else "misses"
    print(
        f"  POST /run / bare: warm {rate['ratio']:.2f}x (goal >= {THROUGHPUT_GOAL}x: {verdict}),",
        f"cold {rate['cold_ratio']:.2f}x",
    )
    print(f"server process CPU per job in those rounds: warm {cpu['warm']:.1f} ms, cold {cpu['cold']:.1f} ms")
    print(f"{N_OTHER} jobs each, one at a time (median / p95 ms):")
    for label, key in (
        ("C hello, POST /run", "c"),
        ("Java hello, POST /run", "java"),
        ("WebSocket first output", "ws"),
    ):
        warm, cold = other[f"{key}_warm"], other[f"{key}_cold"]
        print(
            f"  {label:<28} warm {warm['median']:>7.1f} / {warm['p95']:>7.1f}   cold {cold['median']:>7.1f} / "
            f"{cold['p95']:>7.1f}   {warm['median'] / cold['median']:.2f}x"
        )
    for name, result in figures["burst"].items():
        print(
            f"burst of {BURST} at once, {name}: {result['seconds'] * 1000:.0f} ms,",
            f"hits {result['hits']}, misses {result['misses']}",
        )
    print(f"pool at the end: {figures['pool']}")
    return figures


if __name__ == "__main__":
    main()
