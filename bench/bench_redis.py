"""Redis queue benchmark: no-op jobs/s through Conveyor's Redis backend (1 and 2 instances), SAQ and arq.

Run by hand: `python -m bench.bench_redis`. It starts its own redis-server on a free 127.0.0.1 port (no persistence)
and stops it at the end; every contender runs against that one server in the same run, the DB flushed in between.
Each run: the workers are up, then PRODUCERS coroutines enqueue N_JOBS no-op jobs; the clock runs from the first
enqueue until the last job is recorded as finished. A second, instrumented pass counts Redis round trips per job.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import redis
from redis.asyncio.connection import AbstractConnection

from bench import redisserver
from server.queue import Worker, scripts
from server.queue.jobs import ExecutionResult, Job, JobIO
from server.queue.redis import RedisStore

N_JOBS = 5000
N_TRACED = 1000  # jobs in the instrumented (round-trip counting) pass
ROUNDS = 5  # the table shows the median of these
PRODUCERS = 20  # concurrent enqueuers, as in SAQ's own benchmark (a semaphore of 20)
SLOTS = 32  # jobs one worker process runs at once: Conveyor worker_slots, SAQ concurrency, arq max_jobs
MAX_CONCURRENT = 64  # Conveyor's global cap: two instances x SLOTS, so the cap never binds
PREFIX = "bench"
RUN_TIMEOUT_S = 300.0
NOOP_RESULT = ExecutionResult(exit_code=0)


@dataclass(slots=True)
class Run:
    """One measured run: throughput and where the CPU went (microseconds per job)."""

    jobs_per_s: float
    redis_cpu_us: float
    client_cpu_us: float


# -- the redis-server ---------------------------------------------------------------------------------------------


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free 127.0.0.1 port, no persistence; yields its URL and stops it on exit."""
    if not redisserver.available():
        raise SystemExit("bench_redis needs redis-server (apt-get install redis-server)")
    with redisserver.redis_server() as url:
        yield url


def _flush(url: str) -> None:
    redisserver.flush(url)


def _redis_cpu_s(url: str) -> float:
    with redis.Redis.from_url(url) as client:
        info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _produce(enqueue: Callable[[], Awaitable[object]], n: int) -> None:
    """Enqueue n jobs from PRODUCERS concurrent coroutines."""

    async def producer(count: int) -> None:
        for _ in range(count):
            await enqueue()

    share, extra = divmod(n, PRODUCERS)
    await asyncio.gather(*(producer(share + (i < extra)) for i in range(PRODUCERS)))


class _Finish:
    """Counts finished jobs; `done` is set at the n-th."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.done = asyncio.Event()

    def add(self) -> None:
        self.count += 1
        if self.count == self.n:
            self.done.set()


# -- Conveyor -----------------------------------------------------------------------------------------------------


async def noop(job: Job, io: JobIO) -> ExecutionResult:
    return NOOP_RESULT


def _conveyor_queue(url: str, n: int) -> Worker:
    return Worker(
        RedisStore(url, prefix=PREFIX), executor=noop, max_concurrent=MAX_CONCURRENT, max_queue_size=n, slots=SLOTS
    )


def _instance_main(url: str, n: int, conn: Connection) -> None:
    """A second Conveyor instance in its own process: a consumer only, until told to stop; sends back its CPU time."""

    async def serve() -> None:
        queue = _conveyor_queue(url, n)
        await queue.start()
        conn.send("ready")
        cpu = time.process_time()
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        cpu = time.process_time() - cpu
        await queue.close()
        conn.send(cpu)

    asyncio.run(serve())


async def bench_conveyor(url: str, n: int, instances: int = 1) -> Run:
    """This process is one instance (consumer + producer); the others are separate processes on the same prefix."""
    queue = _conveyor_queue(url, n)
    finish = _Finish(n)
    queue.events.subscribe(lambda event: finish.add() if event["type"] == "completed" else None)
    await queue.start()
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    helpers: list[tuple[Any, Connection]] = []
    for _ in range(instances - 1):
        ours, theirs = context.Pipe()
        proc = context.Process(target=_instance_main, args=(url, n, theirs), daemon=True)
        proc.start()
        helpers.append((proc, ours))
    for _, conn in helpers:
        if await loop.run_in_executor(None, conn.recv) != "ready":
            raise RuntimeError("a Conveyor instance did not start")
    redis_cpu, cpu, start = _redis_cpu_s(url), time.process_time(), time.perf_counter()
    async with asyncio.timeout(RUN_TIMEOUT_S):
        await _produce(lambda: queue.submit(Job(language="python", code="")), n)
        await finish.done.wait()
    elapsed = time.perf_counter() - start
    cpu, redis_cpu = time.process_time() - cpu, _redis_cpu_s(url) - redis_cpu
    for proc, conn in helpers:
        conn.send("stop")
        cpu += await loop.run_in_executor(None, conn.recv)
        await loop.run_in_executor(None, proc.join, 30)
    await queue.close()
    return Run(n / elapsed, redis_cpu / n * 1e6, cpu / n * 1e6)


# -- SAQ ----------------------------------------------------------------------------------------------------------


async def saq_noop(ctx: Any) -> None:
    return None


async def bench_saq(url: str, n: int) -> Run:
    """SAQ's documented use: `Queue.from_url`, a `Worker(queue, functions, concurrency=...)` started in-process."""
    from saq import Queue, Worker
    from saq.job import Status

    logging.getLogger("saq").setLevel(logging.ERROR)  # its stop() warns that it cancelled the idle dequeuers
    queue = Queue.from_url(url)
    finish = _Finish(n)

    async def after_process(ctx: Any) -> None:  # runs after the job's result is stored
        if ctx["job"].status == Status.COMPLETE:
            finish.add()

    worker = Worker(queue, functions=[saq_noop], concurrency=SLOTS, after_process=after_process)
    await queue.connect()
    task = asyncio.create_task(worker.start())
    await asyncio.sleep(0.2)  # let the worker's dequeuers block on BLMOVE, as Conveyor's claim loop is up
    redis_cpu, cpu, start = _redis_cpu_s(url), time.process_time(), time.perf_counter()
    async with asyncio.timeout(RUN_TIMEOUT_S):
        await _produce(lambda: queue.enqueue("saq_noop"), n)
        await finish.done.wait()
    elapsed = time.perf_counter() - start
    cpu, redis_cpu = time.process_time() - cpu, _redis_cpu_s(url) - redis_cpu
    await worker.stop()
    await task
    await queue.disconnect()
    return Run(n / elapsed, redis_cpu / n * 1e6, cpu / n * 1e6)


# -- arq ----------------------------------------------------------------------------------------------------------


async def arq_noop(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> None:
    return None


async def bench_arq(url: str, n: int) -> Run:
    """arq's documented use: `create_pool` to enqueue, a `Worker(functions, max_jobs=...)` run in-process."""
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker

    pool = await create_pool(RedisSettings.from_dsn(url))
    finish = _Finish(n)

    async def after_job_end(ctx: dict[Any, Any]) -> None:  # runs after the result is stored
        finish.add()

    worker = Worker(
        functions=[arq_noop], redis_pool=pool, max_jobs=SLOTS, handle_signals=False, after_job_end=after_job_end
    )
    task = asyncio.create_task(worker.async_run())
    await asyncio.sleep(0.2)
    redis_cpu, cpu, start = _redis_cpu_s(url), time.process_time(), time.perf_counter()
    async with asyncio.timeout(RUN_TIMEOUT_S):
        await _produce(lambda: pool.enqueue_job("arq_noop"), n)
        await finish.done.wait()
    elapsed = time.perf_counter() - start
    cpu, redis_cpu = time.process_time() - cpu, _redis_cpu_s(url) - redis_cpu
    await worker.close()  # cancels the worker's main task and closes the pool
    with suppress(asyncio.CancelledError):
        await task
    return Run(n / elapsed, redis_cpu / n * 1e6, cpu / n * 1e6)


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

CONTENDERS: dict[str, Callable[[str, int], Coroutine[Any, Any, Run]]] = {
    "conveyor-1": lambda url, n: bench_conveyor(url, n, 1),
    "conveyor-2": lambda url, n: bench_conveyor(url, n, 2),
    "saq": bench_saq,
    "arq": bench_arq,
}


def _chosen() -> dict[str, Callable[[str, int], Coroutine[Any, Any, Run]]]:
    """BENCH_CONTENDERS (comma-separated names) narrows the run, e.g. to `conveyor-1,conveyor-2,saq` (arq alone takes
    most of the time); SAQ is always measured, the ratios are against it."""
    names = [n.strip() for n in os.environ.get("BENCH_CONTENDERS", "").split(",") if n.strip()] or list(CONTENDERS)
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"BENCH_CONTENDERS: unknown {sorted(unknown)}; expected some of {list(CONTENDERS)}")
    return {name: CONTENDERS[name] for name in CONTENDERS if name in names or name == "saq"}


def main() -> dict[str, Any]:
    contenders = _chosen()
    rounds = int(os.environ.get("BENCH_ROUNDS", ROUNDS))
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    load_before = os.getloadavg()[0]
    traces: dict[str, Counter[str]] = {}
    with redis_server() as url:
        for _ in range(rounds):
            for name, bench in contenders.items():
                _flush(url)
                runs[name].append(asyncio.run(bench(url, N_JOBS)))
        for name in [n for n in ("conveyor-1", "saq", "arq") if n in contenders]:
            _flush(url)
            with count_round_trips() as counts:
                asyncio.run(CONTENDERS[name](url, N_TRACED))
            traces[name] = counts
    load_after = os.getloadavg()[0]
    fields = ("jobs_per_s", "redis_cpu_us", "client_cpu_us")
    medians = {name: Run(*(statistics.median(getattr(r, f) for r in rs) for f in fields)) for name, rs in runs.items()}
    print(
        f"no-op jobs, {N_JOBS:,} per run, median of {rounds}; {PRODUCERS} concurrent producers, "
        f"{SLOTS} concurrent jobs per worker process; {os.cpu_count()} CPUs, load average {load_before:.1f} before, "
        f"{load_after:.1f} after"
    )
    header = f"{'':<12}{'jobs/s median':>14}{'best':>8}{'worst':>8}{'redis CPU us/job':>18}{'client CPU us/job':>19}"
    print(header + f"{'round trips/job':>17}")
    best = {name: max(r.jobs_per_s for r in rs) for name, rs in runs.items()}
    for name, run in medians.items():
        worst = min(r.jobs_per_s for r in runs[name])
        trips = f"{sum(traces[name].values()) / N_TRACED:.1f}" if name in traces else "-"
        print(
            f"{name:<12}{run.jobs_per_s:>14,.0f}{best[name]:>8,.0f}{worst:>8,.0f}{run.redis_cpu_us:>18.0f}"
            f"{run.client_cpu_us:>19.0f}{trips:>17}"
        )
    ours = [name for name in ("conveyor-1", "conveyor-2") if name in medians]
    ratios = {name: medians[name].jobs_per_s / medians["saq"].jobs_per_s for name in ours}
    best_ratios = {name: best[name] / best["saq"] for name in ours}
    print(
        "conveyor/saq (goal 2.5x): "
        + "; ".join(f"{name} {ratios[name]:.2f}x median, {best_ratios[name]:.2f}x best" for name in ours)
    )
    if len(ours) == 2:
        gain = medians["conveyor-2"].jobs_per_s / medians["conveyor-1"].jobs_per_s - 1
        print(f"a second instance adds {gain:+.0%} (median; goal +50 %)")
    for name, counts in traces.items():
        per_job = ", ".join(f"{cmd} {c / N_TRACED:.2f}" for cmd, c in counts.most_common())
        print(f"round trips per job, {name}: {per_job}")
    return {
        "jobs_per_s": {name: run.jobs_per_s for name, run in medians.items()},
        "redis_cpu_us_per_job": {name: run.redis_cpu_us for name, run in medians.items()},
        "client_cpu_us_per_job": {name: run.client_cpu_us for name, run in medians.items()},
        "ratio_vs_saq": ratios,
        "best_jobs_per_s": best,
        "best_ratio_vs_saq": best_ratios,
        "round_trips_per_job": {name: {k: v / N_TRACED for k, v in c.items()} for name, c in traces.items()},
        "load_average": (load_before, load_after),
        "all_runs": {name: [r.jobs_per_s for r in rs] for name, rs in runs.items()},
    }


if __name__ == "__main__":
    main()
