"""Giving freed memory back to the system: glibc's `malloc_trim`, run off the event loop after large evictions."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable
from contextlib import suppress

logger = logging.getLogger(__name__)

# Evicted bytes that make a trim worth it while jobs still flow; otherwise the retention sweep trims once the store
# is quiet (nothing finished since the sweep before).
TRIM_AFTER_BYTES = 64 * 1024 * 1024
# At most one such trim in this long: while jobs flow the next ones reuse freed memory anyway, and a trimmed page
# costs a page fault when it is used again (once a second made the memory bench 1.7x slower on this VM).
TRIM_INTERVAL_S = 30.0


def _find_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (musl, macOS): there freed memory simply stays with the allocator."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    return trim


_MALLOC_TRIM = _find_trim()


class Trimmer:
    """Counts bytes freed by eviction and trims the heap once the store is quiet, or when they add up.

    Why: glibc serves 1 MiB blocks from its heap once a freed one has raised its dynamic mmap threshold, and keeps
    the freed space when a long-lived block sits above it, so evicted output never came back (4 GB RSS after
    evicting 2,000 results of 1 MiB). `malloc_trim(0)` hands every free page back (madvise), top of heap or not;
    it takes a few ms with the arena locked, so it runs in a thread (ctypes releases the GIL), one at a time.
    The alternative, `mallopt(M_MMAP_THRESHOLD)` at start, also met the goal but makes every large allocation an
    mmap and its page faults (3x slower in bench/bench_memory.py), and it is the process's choice, not one a
    store inside it should make for its host; an operator may still set MALLOC_MMAP_THRESHOLD_.
    """

    def __init__(
        self,
        *,
        trim: Callable[[int], int] | None = _MALLOC_TRIM,
        after_bytes: int = TRIM_AFTER_BYTES,
        interval_s: float = TRIM_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._trim = trim
        self._after = after_bytes
        self._interval = interval_s
        self._clock = clock
        self._last = -interval_s
        self._freed = 0
        self._task: asyncio.Task[None] | None = None
        self.trims = 0

    def freed(self, size: int) -> None:
        """Count evicted bytes, and trim if they add up (maybe_trim's own first test, made here without its call
        while they do not: an eviction per finished job is the usual case)."""
        self._freed += size
        if self._freed >= self._after:
            self.maybe_trim()

    def maybe_trim(self, *, idle: bool = False) -> None:
        """Trim if the evicted bytes reach the bound and the last trim is `interval_s` old, or, when `idle` (the
        retention sweep found the store quiet), if any were evicted; never two at once."""
        if self._trim is None or self._freed == 0:
            return
        if not idle and (self._freed < self._after or self._clock() - self._last < self._interval):
            return
        if self._task is not None and not self._task.done():
            return  # the running trim gives back what was freed before it; the rest waits for the next one
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): the next eviction under the loop trims
        self._freed = 0
        self._last = self._clock()
        self._task = loop.create_task(self._run(self._trim), name="conveyor-malloc-trim")

    async def _run(self, trim: Callable[[int], int]) -> None:
        try:
            await asyncio.to_thread(trim, 0)
            self.trims += 1
        except Exception:
            logger.exception("malloc_trim failed")

    async def close(self) -> None:
        if self._task is not None:
            with suppress(asyncio.CancelledError):
                await self._task  # a thread cannot be cancelled; its trim takes milliseconds
