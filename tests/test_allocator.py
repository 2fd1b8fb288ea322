"""The trimmer: evicted memory handed back with malloc_trim, off the event loop, when the store is quiet or after
large evictions at most once an interval."""

from __future__ import annotations

import threading

from server.queue import MemoryStore
from server.queue.allocator import Trimmer
from server.queue.jobs import ExecutionResult, JobStatus
from tests.queues import Clock, eventually, job


class FakeTrim:
    def __init__(self) -> None:
        self.threads: list[int] = []

    def __call__(self, pad: int) -> int:
        assert pad == 0
        self.threads.append(threading.get_ident())
        return 1


async def test_a_large_eviction_trims_in_a_thread() -> None:
    trim = FakeTrim()
    store = MemoryStore(retention_bytes=0, trimmer=Trimmer(trim=trim, after_bytes=1000))
    await store.start()
    one = job("x")
    await store.enqueue(one, max_queue_size=1, max_concurrent=1)
    await store.claim(1, lease_ms=1000, max_concurrent=1)
    await store.finish(one, JobStatus.COMPLETED, ExecutionResult(exit_code=0, stdout="y" * 5000))
    await eventually(lambda: trim.threads)
    await store.close()
    assert await store.get(one.id) is None
    assert trim.threads != [threading.get_ident()]


async def test_small_evictions_wait_for_a_quiet_sweep_and_large_ones_for_the_interval() -> None:
    trim, clock = FakeTrim(), Clock()
    trimmer = Trimmer(trim=trim, after_bytes=1000, interval_s=30.0, clock=clock)
    trimmer.freed(999)
    trimmer.maybe_trim()
    trimmer.maybe_trim()  # nothing yet: below the bound
    trimmer.maybe_trim(idle=True)  # the sweep's, the store quiet
    await trimmer.close()
    assert trimmer.trims == 1
    trimmer.freed(5000)
    trimmer.maybe_trim()  # within the interval of the last: waits
    await trimmer.close()
    assert trimmer.trims == 1
    clock.now += 30.0
    trimmer.maybe_trim()
    await trimmer.close()
    assert len(trim.threads) == trimmer.trims == 2


async def test_without_malloc_trim_nothing_runs() -> None:
    trimmer = Trimmer(trim=None)
    trimmer.freed(1 << 30)
    trimmer.maybe_trim(idle=True)
    await trimmer.close()
    assert trimmer.trims == 0
