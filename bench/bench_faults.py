"""Fault bench: a soak of two Redis-mode instances under mixed load, with a SIGKILL, a Redis restart and a Redis stall.

Run by hand from the repository root: `python -m bench.bench_faults` (`--duration 480` is the default soak; `--help`).
It starts its own redis-server (AOF on, so a restart keeps the data, as a production Redis would) and two
`python -m server` processes (bubblewrap sandbox, one worker slot each) on free ports of 127.0.0.1, then:

- submits a mix of jobs (echo, a short printing loop, stdin, 200 kB of output, a failure, a timeout) over REST at
  about 1.2x the measured capacity, plus WebSocket clients that run jobs and dashboards on the queue topic;
- fires one burst of 500 simultaneous submissions;
- at 25% of the run SIGKILLs instance B (restarted 15 s later), at 50% restarts Redis, at 75% SIGSTOPs Redis for
  10 s;
- afterwards reads every accepted job back and reports: jobs lost (accepted, never reached a final state), jobs run
  twice (two `running` events), 5xx responses outside the outages (queue-full 503s are the queue's bound working and
  are counted apart), time to recovery after each fault, and each instance's RSS and open fds at start, peak and end.

First, in a fresh process, it measures memory after eviction: 2,000 retained jobs with 1 MiB of output each in the
embedded store, then evicted (`--memory` runs only that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis

REPO = Path(__file__).resolve().parent.parent
TERMINAL = frozenset({"completed", "failed", "timeout", "cancelled"})
PROBE_LIMIT_S = 120.0
LOOP_CODE = "import time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(0.05)"
MIX: list[tuple[str, dict[str, Any]]] = [
    ("echo", {"language": "bash", "code": "echo hello"}),
    (
        "loop",
        {
            "language": "python",
            "code": "import time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(0.05)",
        },
    ),
    ("stdin", {"language": "python", "code": "import sys\nprint(sys.stdin.read()[::-1])", "stdin": "abc" * 1000}),
    ("big", {"language": "python", "code": "import sys\nsys.stdout.write('x' * 200_000)"}),
    ("fail", {"language": "bash", "code": "echo no >&2; exit 3"}),
    ("timeout", {"language": "bash", "code": "sleep 5", "timeoutMs": 400}),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """redis-server with AOF in a temp dir, restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)


class Instance:
    """One `python -m server` on Redis."""

    def __init__(self, name: str, redis_url: str, logdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logdir / f"server-{name}.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PORT": str(self.port),
            "REDIS_URL": redis_url,
            "WORKER_SLOTS": "1",
            "MAX_CONCURRENT_JOBS": "2",
            "MAX_QUEUE_SIZE": "40",
            "LEASE_TIMEOUT_MS": "3000",
            "REDIS_TIMEOUT_MS": "2000",
            "SHUTDOWN_GRACE_MS": "2000",
            "RATE_LIMIT_REQUESTS": "1000000",
            "RATE_LIMIT_READ_REQUESTS": "1000000",
            "WS_MAX_CONNECTIONS_PER_IP": "1000",
            # Keep every job of the soak, so that each accepted one can be read back at the end.
            "JOB_RETENTION_COUNT": "100000",
            "JOB_RETENTION_MAX_MB": "8192",
            "LOG_LEVEL": "warning",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.samples: list[tuple[float, int, int]] = []  # (time, RSS bytes, open fds)

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server"], env=self.env, cwd=REPO, stdout=out, stderr=out
            )
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.url}/health") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"instance {self.name} did not start; see {self.log}")

    def sample(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            rss = int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            fds = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return
        self.samples.append((time.monotonic(), rss, fds))

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


@dataclass
class Tally:
    accepted: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    queue_full: int = 0
    errors_5xx: list[tuple[float, int, str]] = field(default_factory=list)  # (time, status, error title)
    transport_errors: list[float] = field(default_factory=list)
    waits: list[tuple[float, float, int]] = field(default_factory=list)  # wait=true: (start, seconds, status)
    running: dict[str, set[tuple[str, int]]] = field(default_factory=lambda: defaultdict(set))
    outages: list[tuple[str, float, float]] = field(default_factory=list)  # (fault, start, end of recovery)
    recovery: dict[str, float] = field(default_factory=dict)
    started: float = 0.0


async def submit(session: aiohttp.ClientSession, url: str, body: dict[str, Any], tally: Tally, wait: bool) -> None:
    started = time.monotonic()
    try:
        async with session.post(f"{url}/run?wait={'true' if wait else 'false'}", json=body) as resp:
            data = await resp.json(content_type=None)
            tally.statuses[resp.status] += 1
            if resp.status in (200, 202):
                tally.accepted.add(data.get("jobId") or data["id"])
            elif resp.status >= 500:
                if data.get("error") == "Queue full":
                    tally.queue_full += 1
                else:
                    tally.errors_5xx.append((started, resp.status, str(data.get("error"))))
            if wait:
                tally.waits.append((started, time.monotonic() - started, resp.status))
    except (aiohttp.ClientError, TimeoutError, ValueError):
        tally.transport_errors.append(started)


async def rest_load(instances: list[Instance], rate: float, stop: asyncio.Event, tally: Tally) -> None:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while not stop.is_set():
            _, body = MIX[n % len(MIX)]
            target = instances[n % len(instances)]
            task = asyncio.create_task(submit(session, target.url, body, tally, wait=n % 10 == 0))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(random.expovariate(rate))
        await asyncio.gather(*tasks, return_exceptions=True)


CLIENT_STATE: dict[str, str] = {}


async def ws_client(instance: Instance, stop: asyncio.Event, tally: Tally, dashboard: bool, tag: str) -> None:
    """A socket that runs jobs one after another (or a dashboard on the queue topic); reconnects after faults."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=10)) as session:
        while not stop.is_set():
            try:
                CLIENT_STATE[tag] = f"connecting to {instance.name}"
                async with session.ws_connect(f"{instance.url}/ws", heartbeat=20) as ws:
                    CLIENT_STATE[tag] = f"waiting for hello from {instance.name}"
                    await ws.receive(timeout=10)
                    CLIENT_STATE[tag] = f"connected to {instance.name}"
                    if dashboard:
                        await ws.send_json({"type": "subscribe", "topic": "queue"})
                    else:
                        await ws.send_json({"type": "run", **MIX[1][1]})
                    while not stop.is_set():
                        # Not receive(timeout=): the server's pings (every 25 s) restart aiohttp's timer.
                        async with asyncio.timeout(30):
                            msg = await ws.receive()
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        event = orjson.loads(msg.data)
                        kind = event.get("type")
                        CLIENT_STATE[tag] = f"last message from {instance.name}: {kind} (stop={stop.is_set()})"
                        if dashboard and kind == "running":
                            # A viewer's queue topic names jobs by their display handle, never their id (issue 22):
                            # one per job all the same, which is what counting two starts of one job needs.
                            job = event.get("jobId") or event["handle"]
                            tally.running[job].add((tag, event.get("seq", 0)))
                        if not dashboard and kind == "queued" and "position" in event:
                            tally.accepted.add(event["jobId"])
                        if not dashboard and (kind in TERMINAL or kind == "error"):  # refused: try again
                            if kind == "error":
                                await asyncio.sleep(0.5)
                            await ws.send_json({"type": "run", **MIX[len(tally.accepted) % 3][1]})
                CLIENT_STATE[tag] = f"closing the socket to {instance.name}"
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                pass
            CLIENT_STATE[tag] = "between connections"
            await asyncio.sleep(0.5)
    CLIENT_STATE[tag] = "done"


async def probe_recovery(instances: list[Instance], since: float, tally: Tally, name: str) -> None:
    """Time from `since` until every live instance answers a submission from Redis again (accepted, or refused
    because the queue is full: under 1.2x load it often is). Gives up after PROBE_LIMIT_S (reported)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for instance in instances:
            last: object = None
            while time.monotonic() - since < PROBE_LIMIT_S:
                try:
                    body = {"language": "bash", "code": "true"}
                    async with session.post(f"{instance.url}/run?wait=false", json=body) as resp:
                        data = await resp.json(content_type=None)
                        last = (resp.status, data.get("error"))
                        if resp.status == 202:
                            tally.accepted.add(data["jobId"])
                            break
                        if data.get("error") == "Queue full":  # Redis answered: the queue is just full
                            break
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    last = exc
                await asyncio.sleep(0.2)
            else:
                print(f"  {name}: instance {instance.name} not recovered after {PROBE_LIMIT_S} s ({last})", flush=True)
                tally.recovery[f"{name} ({instance.name} NOT RECOVERED)"] = PROBE_LIMIT_S
                return
    tally.recovery[name] = time.monotonic() - since
    print(f"  {name}: recovered in {tally.recovery[name]:.1f} s", flush=True)


async def faults(instances: list[Instance], redis: RedisProcess, duration: float, start: float, tally: Tally) -> None:
    a, b = instances
    await asyncio.sleep(duration * 0.10)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        burst_at = time.monotonic()
        await asyncio.gather(*(submit(session, a.url, MIX[0][1], tally, wait=False) for _ in range(500)))
        print(f"  burst of 500 done in {time.monotonic() - burst_at:.1f} s", flush=True)
        # Past REDIS_POOL_SIZE a burst waits for connections and may get 503s by design: counted apart.
        tally.outages.append(("burst", burst_at, time.monotonic()))

    await asyncio.sleep(max(0.0, start + duration * 0.25 - time.monotonic()))
    print("  SIGKILL instance B", flush=True)
    killed = time.monotonic()
    b.kill()
    await asyncio.sleep(15)
    await b.start()
    tally.recovery["sigkill: B back"] = time.monotonic() - killed

    await asyncio.sleep(max(0.0, start + duration * 0.50 - time.monotonic()))
    print("  Redis restart", flush=True)
    down = time.monotonic()
    redis.stop()
    await asyncio.sleep(2)
    redis.start()
    await probe_recovery(instances, down, tally, "redis restart")
    tally.outages.append(("redis restart", down, time.monotonic()))

    await asyncio.sleep(max(0.0, start + duration * 0.75 - time.monotonic()))
    print("  Redis SIGSTOP for 10 s", flush=True)
    stalled = time.monotonic()
    redis.signal(signal.SIGSTOP)
    await asyncio.sleep(10)
    redis.signal(signal.SIGCONT)
    resumed = time.monotonic()
    await probe_recovery(instances, resumed, tally, "redis stall (after SIGCONT)")
    tally.outages.append(("redis stall", stalled, time.monotonic()))


async def sampler(instances: list[Instance], redis_url: str, stop: asyncio.Event, redis_mem: list[int]) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        while not stop.is_set():
            for instance in instances:
                instance.sample()
            with contextlib.suppress(Exception):
                redis_mem.append(int((await client.info("memory"))["used_memory"]))
            await asyncio.sleep(2)
    finally:
        await client.aclose()


async def calibrate(instances: list[Instance], n: int = 36) -> float:
    """Jobs/s the two instances finish with the mix (all submitted at once, waited for)."""
    tally = Tally()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        started = time.monotonic()
        await asyncio.gather(
            *(submit(session, instances[i % 2].url, MIX[i % len(MIX)][1], tally, wait=True) for i in range(n))
        )
        return n / (time.monotonic() - started)


async def final_states(instances: list[Instance], ids: set[str]) -> Counter[str]:
    states: Counter[str] = Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for i, job_id in enumerate(sorted(ids)):
            url = instances[i % 2].url
            async with session.get(f"{url}/queue/job/{job_id}") as resp:
                states["missing" if resp.status == 404 else (await resp.json())["status"]] += 1
    return states


def summary(samples: list[tuple[float, int, int]]) -> str:
    if not samples:
        return "no samples"
    rss = [s[1] for s in samples]
    fds = [s[2] for s in samples]
    mb = 1024 * 1024
    return (
        f"RSS start {rss[0] / mb:.0f} MB, peak {max(rss) / mb:.0f} MB, end {rss[-1] / mb:.0f} MB; "
        f"fds start {fds[0]}, peak {max(fds)}, end {fds[-1]}"
    )


async def run(duration: float, workdir: Path) -> None:
    redis = RedisProcess(workdir)
    redis.start()
    instances = [Instance("A", redis.url, workdir), Instance("B", redis.url, workdir)]
    try:
        for instance in instances:
            await instance.start()
        capacity = await calibrate(instances)
        rate = 1.2 * capacity
        print(f"capacity {capacity:.1f} jobs/s; soak at {rate:.1f} submissions/s for {duration:.0f} s", flush=True)
        for instance in instances:
            instance.sample()
        tally, stop, redis_mem = Tally(), asyncio.Event(), list[int]()
        start = tally.started = time.monotonic()
        background = [
            asyncio.create_task(rest_load(instances, rate, stop, tally)),
            asyncio.create_task(sampler(instances, redis.url, stop, redis_mem)),
            *(asyncio.create_task(ws_client(instances[i % 2], stop, tally, False, f"w{i}")) for i in range(6)),
            *(asyncio.create_task(ws_client(instances[i % 2], stop, tally, True, f"d{i}")) for i in range(4)),
        ]
        await faults(instances, redis, duration, start, tally)
        await asyncio.sleep(max(0.0, start + duration - time.monotonic()))
        stop.set()
        print("  load stopped; waiting for clients", flush=True)
        _, stuck = await asyncio.wait(background, timeout=60)
        for task in stuck:
            print(f"  client task still waiting 60 s after the load stopped: {task.get_coro()}", flush=True)
            task.cancel()
        for tag, state in CLIENT_STATE.items():
            if state != "done":
                print(f"  socket client {tag}: {state}", flush=True)
        drained = time.monotonic()
        print("  reading every accepted job back", flush=True)
        states = await final_states(instances, tally.accepted)
        while any(states[s] for s in ("queued", "running")) and time.monotonic() - drained < 120:
            await asyncio.sleep(2)
            states = await final_states(instances, tally.accepted)
        await asyncio.sleep(20)  # idle: does memory come back?
        for instance in instances:
            instance.sample()
        report(tally, states, instances, redis_mem, duration, rate)
    finally:
        for instance in instances:
            instance.terminate()
        redis.stop()


def report(
    tally: Tally, states: Counter[str], instances: list[Instance], redis_mem: list[int], duration: float, rate: float
) -> None:
    def in_outage(t: float) -> bool:
        return any(start - 1 <= t <= end + 1 for _, start, end in tally.outages)

    outside = [e for e in tally.errors_5xx if not in_outage(e[0])]
    burst = [e for e in tally.errors_5xx if any(n == "burst" and s - 1 <= e[0] <= t + 1 for n, s, t in tally.outages)]
    twice = [job for job, runs in tally.running.items() if len({seq for _, seq in runs}) > 1]
    lost = states["missing"] + states["queued"] + states["running"]
    stall_waits = [w for w in tally.waits if any(n == "redis stall" and s <= w[0] <= e for n, s, e in tally.outages)]
    t0 = tally.started
    print(f"\nsoak {duration:.0f} s at {rate:.1f} submissions/s")
    print("windows (s from start): " + ", ".join(f"{n} {s - t0:.0f}-{e - t0:.0f}" for n, s, e in tally.outages))
    print(f"accepted jobs: {len(tally.accepted)}; final states: {dict(states)}")
    print(f"jobs lost (accepted, never final): {lost}")
    seen = len(tally.running)
    print(f"jobs run twice (two distinct running events): {len(twice)} (dashboards saw {seen} jobs start)")
    print(f"HTTP statuses: {dict(sorted(tally.statuses.items()))}; queue-full 503s: {tally.queue_full}")
    shown = [(round(t - t0, 1), status, title) for t, status, title in outside[:10]]
    print(f"5xx other than queue-full: {len(tally.errors_5xx)}, outside the outages: {len(outside)} {shown}")
    print(f"of which during the 500-request burst (pool full, 503 by design): {len(burst)}")
    print(f"500s anywhere: {sum(1 for e in tally.errors_5xx if e[1] == 500)}")
    print(f"transport errors (refused or reset while an instance or Redis was down): {len(tally.transport_errors)}")
    print(f"recovery: { {k: round(v, 1) for k, v in tally.recovery.items()} }")
    if stall_waits:
        print(
            f"wait=true requests during the stall: {len(stall_waits)}, longest {max(w[1] for w in stall_waits):.1f} s"
        )
    for instance in instances:
        print(f"instance {instance.name}: {summary(instance.samples)}")
    if redis_mem:
        mb = 1024 * 1024
        print(
            f"redis used_memory: start {redis_mem[0] / mb:.1f} MB, peak {max(redis_mem) / mb:.1f} MB, "
            f"end {redis_mem[-1] / mb:.1f} MB"
        )


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _retain_and_evict(jobs: int) -> tuple[int, int, int]:
    """RSS before, with `jobs` finished jobs of 1 MB output retained (embedded store), and after they are evicted."""
    from server.queue import MemoryStore, Worker
    from server.queue.jobs import ExecutionResult, Job, JobIO

    async def big(job: Job, io: JobIO) -> ExecutionResult:
        text = "".join(chr(97 + (i + len(job.id)) % 26) * 16384 for i in range(64))  # 1 MiB, as 64 chunks
        for start in range(0, len(text), 16384):
            io.on_output("stdout", text[start : start + 16384])
        return ExecutionResult(exit_code=0, stdout=text)

    store = MemoryStore(retention_count=jobs, retention_bytes=1 << 40)
    queue = Worker(store, executor=big, max_concurrent=2, max_queue_size=jobs)
    await queue.start()
    before = _rss()
    for _ in range(jobs // 100):
        batch = [await queue.submit(Job(language="python", code="x")) for _ in range(100)]
        for job in batch:
            await queue.wait(job.id)
    full = _rss()
    store._retention.count = 0
    store._evict()
    await asyncio.sleep(1)
    after = _rss()
    await queue.close()
    return before, full, after


def memory_child(jobs: int) -> None:
    before, full, after = asyncio.run(_retain_and_evict(jobs))
    print(orjson.dumps({"before": before, "full": full, "after": after}).decode())


def memory_bench(jobs: int = 2000) -> None:
    """In a fresh process, so that RSS is this measurement's alone."""
    mb = 1024 * 1024
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_faults", "--memory-child", str(jobs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    r = orjson.loads(out.strip().splitlines()[-1])
    print(
        f"{jobs} jobs x 1 MiB output (each as 64 output events), embedded store: RSS before {r['before'] / mb:.0f} MB, "
        f"retained {r['full'] / mb:.0f} MB, after eviction {r['after'] / mb:.0f} MB"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=480.0, help="soak seconds (default 480)")
    parser.add_argument("--memory", action="store_true", help="only the memory-after-eviction measurement")
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory-after-eviction measurement")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return
    if not args.skip_memory:
        memory_bench()
    if args.memory:
        return
    with tempfile.TemporaryDirectory(prefix="conveyor-faults-") as workdir:
        asyncio.run(run(args.duration, Path(workdir)))


if __name__ == "__main__":
    main(sys.argv[1:])
