"""Memory that comes back (issue 23): 2,000 jobs of 1 MiB output through the embedded store with a 64 MiB retention
budget; RSS at idle, its peak during the run, and after every result is evicted and the process has idled.

Each variant runs in a fresh process, so RSS is its measurement's alone: `python -m bench memory` runs them all,
`python -m bench.bench_memory --variant NAME` one. The goal: peak at most budget + 100 MB, and after eviction
within 50 MB of the idle baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from server.queue import MemoryStore, Worker
from server.queue.jobs import ExecutionResult, Job, JobIO

REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
CHUNK = 16 * 1024
BATCH = 50
M_MMAP_THRESHOLD = -3  # glibc's malloc.h
VARIANTS = {
    "default": "the store as it is (a trim after large evictions)",
    "no-trim": "no trim: freed memory stays with the allocator",
    "mmap-threshold": "no trim; mallopt(M_MMAP_THRESHOLD, 128 KiB) at start (as MALLOC_MMAP_THRESHOLD_=131072)",
}


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _batch(queue: Worker) -> None:
    """Submit a batch, wait for each job and read it as `GET /jobs/{id}` does (one more transient copy)."""
    submitted = [await queue.submit(Job(language="python", code="x")) for _ in range(BATCH)]
    for job in submitted:
        await queue.wait(job.id)
        done = await queue.get(job.id)
        assert done is not None and done.result is not None
        orjson.dumps(done.to_dict())


async def _big(job: Job, io: JobIO) -> ExecutionResult:
    """1 MiB of text, different for every job (nothing shared or interned), written as 64 writes like a chatty
    program's; the coalescer and the event log see it as they would a real run's."""
    seed = int(job.id[:8], 16)
    parts = [chr(97 + (seed + i) % 26) * CHUNK for i in range(64)]
    for part in parts:
        io.on_output("stdout", part)
        await asyncio.sleep(0)
    return ExecutionResult(exit_code=0, stdout="".join(parts))


async def _drive(variant: str, jobs: int, budget_mb: int, idle_s: float, concurrency: int) -> dict[str, Any]:
    now = [0.0]
    options: dict[str, Any] = {}
    if variant != "default":
        from server.queue.allocator import Trimmer

        options["trimmer"] = Trimmer(trim=None)
    if variant == "mmap-threshold":
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    store = MemoryStore(retention_bytes=budget_mb * MB, retention_count=10_000, clock=lambda: now[0], **options)

    queue = Worker(store, executor=_big, max_concurrent=concurrency, max_queue_size=jobs)
    await queue.start()
    peak = baseline = _rss()
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss())
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    for _ in range(jobs // BATCH):
        await _batch(queue)  # its own frame: the bench holds no job once a batch is read
        peak = max(peak, _rss())
    elapsed = time.perf_counter() - started
    stop.set()
    await sampler
    retained = store._retention.bytes
    end_of_run = _rss()
    # Past the retention age: the next sweep evicts everything still held.
    now[0] += 10 * 3600
    store._evict()
    await asyncio.sleep(idle_s)
    after = _rss()
    await queue.close()
    return {
        "baseline": baseline,
        "peak": peak,
        "end_of_run": end_of_run,
        "after": after,
        "retained_counted": retained,
        "seconds": elapsed,
    }


def child(args: argparse.Namespace) -> None:
    result = asyncio.run(_drive(args.variant[0], args.jobs, args.budget_mb, args.idle, args.concurrency))
    print(orjson.dumps(result).decode())


def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.bench_memory", "--child", "--variant", name]
    argv += ["--jobs", str(args.jobs), "--budget-mb", str(args.budget_mb), "--idle", str(args.idle)]
    argv += ["--concurrency", str(args.concurrency)]
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="run only these (repeatable)")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--budget-mb", type=int, default=64)
    parser.add_argument(
        "--idle", type=float, default=12.0, help="seconds idle after eviction (default 12: two retention sweeps)"
    )
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)
    if args.child:
        child(args)
        return
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print(f"{args.jobs} jobs x 1 MiB output, embedded store, retention budget {args.budget_mb} MiB:")
    for name in args.variant or list(VARIANTS):
        r = run_variant(name, args)
        peak_over = (r["peak"] - r["baseline"]) / MB
        after_over = (r["after"] - r["baseline"]) / MB
        met = peak_over <= args.budget_mb + 100 and after_over <= 50
        print(
            f"  {name:<16} idle {r['baseline'] / MB:5.0f} MB | peak {r['peak'] / MB:6.0f} MB (+{peak_over:.0f}) | "
            f"end of run {r['end_of_run'] / MB:6.0f} MB | after eviction + {args.idle:.0f} s idle "
            f"{r['after'] / MB:5.0f} MB (+{after_over:.0f}) | counted {r['retained_counted'] / MB:.0f} MiB | "
            f"{r['seconds']:.1f} s | goal {'met' if met else 'missed'}  ({VARIANTS[name]})",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
