"""Redis queue benchmark: no-op jobs/s through Conveyor's Redis backend (1 and 2 instances), SAQ and arq.

Run by hand: `python -m bench.bench_redis`. It starts its own redis-server on a free 127.0.0.1 port (no persistence)
and stops it at the end; every contender runs against that one server in the same run, the DB flushed in between.
Every contender runs the same way, each part in a process of its own: the consumers (Conveyor instances, the SAQ or
arq worker) and the producer process(es), whose PRODUCERS coroutines enqueue N_JOBS no-op jobs (they start no worker
and read no events). The clock runs from the producer's start until the consumers have counted the last job finished
(a counter in shared memory, one slot per consumer, polled by this process). Each part reports its CPU time, so a
run says where the CPU went and what the host's cores allow. A second, instrumented pass counts Redis round trips
per job in every process.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import (
    AbstractContextManager,
    contextmanager,
    nullcontext,
)
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import redis
from redis.asyncio.connection import AbstractConnection

from bench import redisserver
from bench.redis_contenders import CONTENDERS, SLOTS
from server.queue.redis import scripts

N_JOBS = 5000
N_TRACED = 1000  # jobs in the instrumented (round-trip counting) pass
ROUNDS = 5  # the table shows the median of these
PRODUCERS = 20  # concurrent enqueuers, as in SAQ's own benchmark (a semaphore of 20)
PRODUCER_PROCESSES = 1  # the processes they are spread over (BENCH_PRODUCER_PROCESSES)
RUN_TIMEOUT_S = 300.0
POLL_S = 0.002  # how often this process reads the consumers' counters


@dataclass(slots=True)
class Run:
    """One measured run: throughput and where the CPU went (microseconds per job)."""

    jobs_per_s: float
    redis_cpu_us: float
    producer_cpu_us: float
    consumer_cpu_us: float  # all consumers together
    # The producer's time over the run's: near 1, the consumers kept up with it (it was the ceiling); well below 1,
    # jobs waited in the queue after the last enqueue (the consumers were).
    producing: float

    @property
    def ceiling(self) -> float:
        """Jobs/s this host's cores allow at this CPU per job, if every part could use any core."""
        total = self.redis_cpu_us + self.producer_cpu_us + self.consumer_cpu_us
        return (os.cpu_count() or 1) * 1e6 / total


# -- the redis-server ---------------------------------------------------------------------------------------------


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free 127.0.0.1 port, no persistence; yields its URL and stops it on exit."""
    if not redisserver.available():
        raise SystemExit("bench_redis needs redis-server (apt-get install redis-server)")
    with redisserver.redis_server() as url:
        yield url


def _redis_cpu_s(url: str) -> float:
    with redis.Redis.from_url(url) as client:
        info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# -- the processes ------------------------------------------------------------------------------------------------


def _round_trips(trace: bool) -> AbstractContextManager[Counter[str]]:
    return count_round_trips() if trace else nullcontext(Counter())


async def _recv(conn: Connection) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


def _consumer_main(name: str, url: str, n: int, counts: Any, slot: int, conn: Connection, trace: bool) -> None:
    """A consumer process: ready, then counts from "go" to "stop"; sends back its CPU time and round trips."""

    def done() -> None:
        counts[slot] += 1

    async def serve() -> None:
        with _round_trips(trace) as trips:
            async with CONTENDERS[name].consumer(url, n, done):
                conn.send("ready")
                await _recv(conn)
                cpu = time.process_time()
                await _recv(conn)
                cpu = time.process_time() - cpu
        conn.send((cpu, dict(trips), 0.0))

    asyncio.run(serve())


def _producer_main(name: str, url: str, n: int, coroutines: int, conn: Connection, trace: bool) -> None:
    """A producer process: ready, then on "go" enqueues n jobs from `coroutines` concurrent coroutines; sends back
    its CPU time, round trips and how long it took."""

    async def produce() -> None:
        with _round_trips(trace) as trips:
            async with CONTENDERS[name].producer(url, n) as enqueue:
                conn.send("ready")
                await _recv(conn)
                cpu, wall = time.process_time(), time.perf_counter()
                await asyncio.gather(*(_enqueue(enqueue, count) for count in _shares(n, coroutines)))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        conn.send((cpu, dict(trips), wall))

    asyncio.run(produce())


def _shares(total: int, parts: int) -> list[int]:
    share, extra = divmod(total, parts)
    return [share + (i < extra) for i in range(parts)]


async def _enqueue(enqueue: Callable[[], Any], count: int) -> None:
    for _ in range(count):
        await enqueue()


def measure(name: str, url: str, n: int, *, trace: bool = False) -> tuple[Run, Counter[str]]:
    """One run of a contender; with `trace`, also its Redis round trips (every process's, summed)."""
    context = multiprocessing.get_context("spawn")
    consumers, producers = CONTENDERS[name].consumers, _producer_processes()
    counts = context.Array("q", consumers, lock=False)  # one slot per consumer: no two processes write one
    procs: list[tuple[Any, Connection]] = []
    for slot in range(consumers):
        ours, theirs = context.Pipe()
        procs.append((context.Process(target=_consumer_main, args=(name, url, n, counts, slot, theirs, trace)), ours))
    for jobs, coroutines in zip(_shares(n, producers), _shares(PRODUCERS, producers), strict=True):
        ours, theirs = context.Pipe()
        procs.append((context.Process(target=_producer_main, args=(name, url, jobs, coroutines, theirs, trace)), ours))
    for proc, _ in procs:
        proc.daemon = True
        proc.start()
    try:
        for _, conn in procs:
            if not conn.poll(60) or conn.recv() != "ready":
                raise RuntimeError(f"{name}: a process did not start")
        redis_cpu, elapsed = _redis_cpu_s(url), _run(name, n, counts, [conn for _, conn in procs])
        redis_cpu = _redis_cpu_s(url) - redis_cpu
        for _, conn in procs[:consumers]:
            conn.send("stop")
        replies = [conn.recv() for _, conn in procs]
    finally:
        for proc, _ in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    cpus = [cpu / n * 1e6 for cpu, _, _ in replies]
    trips = sum((Counter(counted) for _, counted, _ in replies), Counter[str]())
    producing = max(wall for _, _, wall in replies[consumers:]) / elapsed
    return Run(n / elapsed, redis_cpu / n * 1e6, sum(cpus[consumers:]), sum(cpus[:consumers]), producing), trips


def _run(name: str, n: int, counts: Any, conns: list[Connection]) -> float:
    """Start every process (the consumers first) and wait for the n-th finished job; returns the seconds taken."""
    start = time.perf_counter()
    for conn in conns:
        conn.send("go")
    while sum(counts) < n:
        if time.perf_counter() - start > RUN_TIMEOUT_S:
            raise TimeoutError(f"{name}: {sum(counts)} of {n} jobs finished in {RUN_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)
    return time.perf_counter() - start


def _producer_processes() -> int:
    """BENCH_PRODUCER_PROCESSES spreads the PRODUCERS coroutines (and the jobs) over that many processes."""
    return max(1, min(PRODUCERS, int(os.environ.get("BENCH_PRODUCER_PROCESSES", PRODUCER_PROCESSES))))


# -- round trips --------------------------------------------------------------------------------------------------

_SCRIPT_NAMES = {
    hashlib.sha1(getattr(scripts, name).encode()).hexdigest().encode(): name
    for name in dir(scripts)
    if name.isupper() and not name.startswith("_") and isinstance(getattr(scripts, name), str)
}


def _command_name(command: Any) -> str:
    """The first command of a packed request (MULTI for a transaction); EVALSHA named by Conveyor's script."""
    head = command if isinstance(command, bytes | bytearray | memoryview) else command[0]
    parts = bytes(head[:256]).split(b"\r\n")
    name = parts[2].decode().upper() if len(parts) > 2 else "?"
    if name == "EVALSHA" and len(parts) > 4:
        return f"EVALSHA {_SCRIPT_NAMES.get(parts[4], 'script')}"
    return "MULTI..EXEC" if name == "MULTI" else name


@contextmanager
def count_round_trips() -> Iterator[Counter[str]]:
    """Count requests written to Redis by this process's asyncio clients (a pipeline is one), by command."""
    counts: Counter[str] = Counter()
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        counts[_command_name(command)] += 1
        await original(self, command, check_health)

    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


# -- the run ------------------------------------------------------------------------------------------------------


def _chosen() -> list[str]:
    """BENCH_CONTENDERS (comma-separated names) narrows the run, e.g. to `conveyor-1,conveyor-2,saq` (arq alone takes
    most of the time); SAQ is always measured, the ratios are against it."""
    names = [n.strip() for n in os.environ.get("BENCH_CONTENDERS", "").split(",") if n.strip()] or list(CONTENDERS)
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"BENCH_CONTENDERS: unknown {sorted(unknown)}; expected some of {list(CONTENDERS)}")
    return [name for name in CONTENDERS if name in names or name == "saq"]


def main() -> dict[str, Any]:
    contenders = _chosen()
    rounds = int(os.environ.get("BENCH_ROUNDS", ROUNDS))
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    load_before = os.getloadavg()[0]
    traces: dict[str, Counter[str]] = {}
    with redis_server() as url:
        for _ in range(rounds):
            for name in contenders:
                redisserver.flush(url)
                runs[name].append(measure(name, url, N_JOBS)[0])
        for name in contenders:
            redisserver.flush(url)
            traces[name] = measure(name, url, N_TRACED, trace=True)[1]
    load_after = os.getloadavg()[0]
    _report(runs, traces, rounds, (load_before, load_after))
    medians = {name: _median(rs) for name, rs in runs.items()}
    ours = [name for name in ("conveyor-1", "conveyor-2") if name in medians]
    return {
        "jobs_per_s": {name: run.jobs_per_s for name, run in medians.items()},
        "cpu_us_per_job": {
            name: {"redis": r.redis_cpu_us, "producer": r.producer_cpu_us, "consumers": r.consumer_cpu_us}
            for name, r in medians.items()
        },
        "ceiling_jobs_per_s": {name: run.ceiling for name, run in medians.items()},
        "ratio_vs_saq": {name: medians[name].jobs_per_s / medians["saq"].jobs_per_s for name in ours},
        "round_trips_per_job": {name: {k: v / N_TRACED for k, v in c.items()} for name, c in traces.items()},
        "load_average": (load_before, load_after),
        "all_runs": {name: [r.jobs_per_s for r in rs] for name, rs in runs.items()},
    }


def _median(runs: list[Run]) -> Run:
    fields = ("jobs_per_s", "redis_cpu_us", "producer_cpu_us", "consumer_cpu_us", "producing")
    return Run(*(statistics.median(getattr(r, f) for r in runs) for f in fields))


def _report(
    runs: dict[str, list[Run]], traces: dict[str, Counter[str]], rounds: int, load: tuple[float, float]
) -> None:
    print(
        f"no-op jobs, {N_JOBS:,} per run, median of {rounds}; {PRODUCERS} producer coroutines in "
        f"{_producer_processes()} process(es), "
        f"{SLOTS} concurrent jobs per consumer process; {os.cpu_count()} CPUs, load average {load[0]:.1f} before, "
        f"{load[1]:.1f} after"
    )
    print(
        f"{'':<12}{'jobs/s median':>14}{'best':>8}{'worst':>8}   CPU us/job: {'redis':>6}{'producer':>9}"
        f"{'consumers':>10}   {'cores allow':>11}{'producing':>10}{'round trips/job':>17}"
    )
    medians = {name: _median(rs) for name, rs in runs.items()}
    for name, run in medians.items():
        speeds = [r.jobs_per_s for r in runs[name]]
        trips = f"{sum(traces[name].values()) / N_TRACED:.1f}" if name in traces else "-"
        print(
            f"{name:<12}{run.jobs_per_s:>14,.0f}{max(speeds):>8,.0f}{min(speeds):>8,.0f}{'':>15}"
            f"{run.redis_cpu_us:>6.0f}{run.producer_cpu_us:>9.0f}{run.consumer_cpu_us:>10.0f}   "
            f"{run.ceiling:>11,.0f}{run.producing:>10.0%}{trips:>17}"
        )
    for name in (n for n in ("conveyor-1", "conveyor-2") if n in runs):
        per_round = [ours.jobs_per_s / saq.jobs_per_s for ours, saq in zip(runs[name], runs["saq"], strict=True)]
        print(
            f"{name}/saq: {medians[name].jobs_per_s / medians['saq'].jobs_per_s:.2f}x median, "
            f"{min(per_round):.2f}-{max(per_round):.2f}x round by round (goal 2.5x)"
        )
    if "conveyor-1" in runs and "conveyor-2" in runs:
        gains = [
            two.jobs_per_s / one.jobs_per_s - 1 for one, two in zip(runs["conveyor-1"], runs["conveyor-2"], strict=True)
        ]
        gain = medians["conveyor-2"].jobs_per_s / medians["conveyor-1"].jobs_per_s - 1
        print(
            f"a second instance adds {gain:+.0%} (median; round by round {min(gains):+.0%} to {max(gains):+.0%}; "
            "goal +50 %)"
        )
    for name, counts in traces.items():
        per_job = ", ".join(f"{cmd} {c / N_TRACED:.2f}" for cmd, c in counts.most_common())
        print(f"round trips per job, {name}: {per_job}")


if __name__ == "__main__":
    main()
