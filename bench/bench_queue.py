"""Queue benchmarks: no-op throughput against a bare heapq+task loop, enqueue/dequeue cost by depth, memory.

Run by hand: `python -m bench.bench_queue` (or `make bench`). Figures are ratios measured in one run.

BENCH_BASELINE=<directory of another checkout> adds before/after rounds: this file's no-op throughput run on that
checkout's queue and on this one's, each in a fresh interpreter, taking turns (BASELINE_ROUNDS each), so that other
load on the host hits both alike.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from server.queue import MemoryStore, Store, Worker
from server.queue.durable import DurableStore, Journal
from server.queue.jobs import ExecutionResult, Job, JobIO

NOOP_RESULT = ExecutionResult(exit_code=0)
# Concurrent submitters in the throughput runs.
PRODUCERS = 64
BASELINE_ROUNDS = 3
# One throughput run in a fresh interpreter: this file's code over the queue of the checkout first on sys.path.
ONE_RUN = (
    "import asyncio, json, runpy, sys; sys.path.insert(0, sys.argv[1]); bench = runpy.run_path(sys.argv[2]); "
    "n, c = int(sys.argv[3]), int(sys.argv[4]); "
    "print(json.dumps([asyncio.run(bench['queue_throughput'](n, c)), asyncio.run(bench['bare_throughput'](n, c))]))"
)


async def noop(job: Job, io: JobIO) -> ExecutionResult:
    return NOOP_RESULT


async def queue_throughput(n: int, concurrency: int, data_dir: Path | None = None) -> float:
    """Jobs/s through the real queue with events and stats on (one listener, like the hub's); with `data_dir`, the
    durable store (every job journaled to SQLite there, the close included: its last commit is waited for)."""
    store: Store = MemoryStore(retention_count=1000)
    if data_dir is not None:
        store = DurableStore(Journal(data_dir, retention_seconds=3600, max_bytes=1 << 30), retention_count=1000)
    queue = Worker(store, executor=noop, max_concurrent=concurrency, max_queue_size=n)
    seen = 0

    def listener(event: dict[str, Any]) -> None:
        nonlocal seen
        seen += 1

    queue.events.subscribe(listener)
    done = asyncio.Event()
    finished = 0

    def on_finish(event: dict[str, Any]) -> None:
        nonlocal finished
        if event["type"] == "completed":
            finished += 1
            if finished == n:
                done.set()

    queue.events.subscribe(on_finish)
    await queue.start()
    start = time.perf_counter()

    async def produce(first: int) -> None:
        for i in range(first, n, PRODUCERS):
            await queue.submit(Job(language="python", code="", priority=i % 3))

    # Many clients at once, as a server sees them: the durable store answers each once its job is written, and one
    # commit carries every submission that arrived meanwhile.
    await asyncio.gather(*(produce(first) for first in range(PRODUCERS)))
    await done.wait()
    await queue.close()
    elapsed = time.perf_counter() - start
    assert seen == 3 * n
    return n / elapsed


def durable_throughput(n: int, concurrency: int) -> tuple[float, dict[str, Any]]:
    """Jobs/s through the durable store, and what its journal did (commits, rows, bytes on disk per job)."""
    with tempfile.TemporaryDirectory() as directory:
        rate = asyncio.run(queue_throughput(n, concurrency, Path(directory)))
        size = sum(f.stat().st_size for f in Path(directory).iterdir())
        with sqlite3.connect(Path(directory) / "jobs.db") as db:
            (rows,) = db.execute("SELECT count(*) FROM jobs").fetchone()
        return rate, {"disk_bytes_per_job": size / max(1, rows), "journaled": rows / n}


async def bare_throughput(n: int, concurrency: int) -> float:
    """The floor: a heap and one asyncio task per job, nothing else."""
    heap: list[tuple[int, int, int]] = []
    counter = itertools.count()
    running = 0
    finished = 0
    done = asyncio.Event()

    def dispatch() -> None:
        nonlocal running
        while running < concurrency and heap:
            heapq.heappop(heap)
            running += 1
            asyncio.get_running_loop().create_task(work())

    async def work() -> None:
        nonlocal running, finished
        running -= 1
        finished += 1
        if finished == n:
            done.set()
        dispatch()

    start = time.perf_counter()
    for i in range(n):
        heapq.heappush(heap, (-(i % 3), next(counter), i))
        dispatch()
    await done.wait()
    return n / (time.perf_counter() - start)


class _Hold:
    """Executor: the first job holds the single slot until released, later ones finish at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.first = True

    async def __call__(self, job: Job, io: JobIO) -> ExecutionResult:
        if self.first:
            self.first = False
            await self.release.wait()
        return NOOP_RESULT


async def cycle_cost(depth: int, cycles: int = 20_000) -> float:
    """Microseconds per enqueue+dequeue with `depth` jobs waiting: each cycle submits one job and runs one."""
    hold = _Hold()
    queue = Worker(
        MemoryStore(retention_count=100), executor=hold, max_concurrent=1, max_queue_size=depth + cycles + 10
    )
    await queue.start()
    await queue.submit(Job(language="python", code=""))
    await asyncio.sleep(0)
    for i in range(depth):
        await queue.submit(Job(language="python", code="", priority=i % 5))
    finished = 0
    done = asyncio.Event()

    def on_event(event: dict[str, Any]) -> None:
        nonlocal finished
        if event["type"] == "completed":
            finished += 1
            if finished == cycles:
                done.set()

    queue.events.subscribe(on_event)
    start = time.perf_counter()
    hold.release.set()
    for i in range(cycles):
        await queue.submit(Job(language="python", code="", priority=i % 5))
        await asyncio.sleep(0)
    await done.wait()
    elapsed = time.perf_counter() - start
    await queue.close()
    return elapsed / cycles * 1e6


def seed_insert_cost(depth: int, ops: int = 200) -> float:
    """Microseconds per enqueue+dequeue in the seed's design at `depth` waiting: a linear scan for the first item of
    lower priority, an insert there (O(n)), and a shift from the front."""
    items: list[tuple[int, int]] = [(2 - i % 5, i) for i in range(depth)]
    items.sort(key=lambda item: -item[0])
    counter = itertools.count(depth)
    start = time.perf_counter()
    for i in range(ops):
        new = (2 - i % 5, next(counter))
        for index, (priority, _) in enumerate(items):
            if priority < new[0]:
                items.insert(index, new)
                break
        else:
            items.append(new)
        items.pop(0)
    return (time.perf_counter() - start) / ops * 1e6


def heap_cost(depth: int, ops: int = 20_000) -> float:
    """Microseconds per heappush+heappop at `depth` waiting: the data-structure part of our queue."""
    heap: list[tuple[int, int]] = [(-(i % 5), i) for i in range(depth)]
    heapq.heapify(heap)
    counter = itertools.count(depth)
    start = time.perf_counter()
    for i in range(ops):
        heapq.heappush(heap, (-(i % 5), next(counter)))
        heapq.heappop(heap)
    return (time.perf_counter() - start) / ops * 1e6


def memory_per_job(n: int = 100_000) -> float:
    """Bytes per queued job (tracemalloc), beyond the code string itself (shared empty string here)."""

    async def run() -> float:
        hold = _Hold()
        queue = Worker(MemoryStore(), executor=hold, max_concurrent=1, max_queue_size=n + 10)
        await queue.start()
        await queue.submit(Job(language="python", code=""))
        await asyncio.sleep(0)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(n):
            await queue.submit(Job(language="python", code=""))
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        hold.release.set()
        await queue.close()
        return (after - before) / n

    return asyncio.run(run())


def fresh_run(tree: str, n: int, concurrency: int) -> tuple[float, float]:
    """Queue and bare jobs/s of one throughput run over `tree`'s queue, in an interpreter of its own."""
    out = subprocess.run(
        [sys.executable, "-c", ONE_RUN, tree, __file__, str(n), str(concurrency)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": tree},
        capture_output=True,
        text=True,
        check=True,
    )
    queue, bare = json.loads(out.stdout.strip().splitlines()[-1])
    return float(queue), float(bare)


def against_baseline(baseline: str, n: int, concurrency: int) -> dict[str, list[float]]:
    """Ratios to the bare loop for this checkout and BENCH_BASELINE's, in alternating fresh-interpreter rounds."""
    trees = {"this": str(Path(__file__).resolve().parent.parent), "baseline": str(Path(baseline).resolve())}
    ratios: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(BASELINE_ROUNDS):
        for name, tree in trees.items():
            queue, bare = fresh_run(tree, n, concurrency)
            ratios[name].append(queue / bare)
            print(f"  {name:<8} queue {queue:>9,.0f} jobs/s   bare {bare:>9,.0f}   ratio {queue / bare:.2f}")
    this, base = statistics.median(ratios["this"]), statistics.median(ratios["baseline"])
    print(f"median ratio: this {this:.2f}, baseline {base:.2f}: {this / base:.2f}x the baseline's")
    return ratios


def main() -> dict[str, Any]:
    n, concurrency = 100_000, 5
    baseline = os.environ.get("BENCH_BASELINE")
    if baseline:
        print(f"no-op throughput, this checkout and {baseline}, {BASELINE_ROUNDS} alternating rounds:")
        against_baseline(baseline, n, concurrency)
    bare = asyncio.run(bare_throughput(n, concurrency))
    real = asyncio.run(queue_throughput(n, concurrency))
    print(f"no-op jobs/s   queue {real:,.0f}   bare heapq+task {bare:,.0f}   ratio {real / bare:.2f}")
    durable, journal = durable_throughput(n, concurrency)
    print(
        f"no-op jobs/s   durable (DURABLE=1) {durable:,.0f}   memory only {real:,.0f}   ratio {durable / real:.2f}"
        f"   journal cost {(1 / durable - 1 / real) * 1e6:.1f} us/job   disk {journal['disk_bytes_per_job']:,.0f} B/job"
        f"  journaled {journal['journaled']:.0%} (100k queued at once: past 10k pending writes new ones stay in memory)"
    )
    costs = {depth: asyncio.run(cycle_cost(depth)) for depth in (100, 10_000, 100_000)}
    seed = {depth: seed_insert_cost(depth) for depth in (100, 10_000, 100_000)}
    heap = {depth: heap_cost(depth) for depth in (100, 10_000, 100_000)}
    for depth in costs:
        print(
            f"at {depth:>7,} queued: whole queue cycle {costs[depth]:6.2f} us | heap push+pop {heap[depth]:5.2f} us"
            f" | seed's linear insert+shift {seed[depth]:9.2f} us"
        )
    print(
        f"100k/100 cost ratio: queue {costs[100_000] / costs[100]:.2f}, heap {heap[100_000] / heap[100]:.2f},"
        f" seed's design {seed[100_000] / seed[100]:.0f}"
    )
    per_job = memory_per_job()
    print(f"memory per queued job: {per_job:,.0f} bytes")
    return {
        "queue_jobs_per_s": real,
        "durable_jobs_per_s": durable,
        "bare_jobs_per_s": bare,
        "costs_us": costs,
        "heap_us": heap,
        "seed_us": seed,
        "bytes": per_job,
    }


if __name__ == "__main__":
    main()
