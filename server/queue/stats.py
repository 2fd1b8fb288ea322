"""Statistics: the seed's counters plus percentiles over a recent window and throughput over the last minute."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .jobs import Job, JobStatus

# Percentiles are computed over the most recent finished jobs, so memory stays bounded.
WINDOW = 1000
THROUGHPUT_SECONDS = 60.0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


# Retry-After on a full queue when too few jobs finished lately to estimate it.
RETRY_UNKNOWN_S = 5


def seconds_until_a_place(finish_times: Iterable[float], now: float, *, unit_s: float = 1.0) -> int:
    """Retry-After for a full queue: a place frees when the next job starts, about one gap between recent finishes.

    Measured over the span the finishes cover, not a fixed minute (a burst 10 s old was averaged over 60 s), and for
    one place, not the whole queue (the wait was the queue's length times too long). `finish_times` and `now` in
    units of `unit_s` seconds (milliseconds on Redis); 1 to 60 s.
    """
    horizon = now - THROUGHPUT_SECONDS / unit_s
    recent = sorted(t for t in finish_times if t >= horizon)
    if len(recent) < 2:
        return RETRY_UNKNOWN_S
    return _place_in(recent[0], recent[-1], len(recent), unit_s)


def _place_in(first: float, last: float, count: int, unit_s: float) -> int:
    """One gap between `count` finishes from `first` to `last` (in `unit_s` seconds), in whole seconds, 1 to 60."""
    gap_s = (last - first) / (count - 1) * unit_s
    return max(1, min(60, math.ceil(gap_s)))


# The finishes of the last minute are counted per tenth of a second: [tenth, count, first, last], oldest first. A
# time per job held 60 s of them (2.4 million floats at 40,000 jobs/s), and a full queue's Retry-After sorted them.
TICK_S = 0.1


class QueueStats:
    """Counters updated by the queue on each transition. O(1) per update; snapshot costs O(WINDOW log WINDOW)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.total_queued = 0
        self.total_processed = 0
        self.total_completed = 0
        self.total_failed = 0
        self.total_timeout = 0
        self.total_cancelled = 0
        self.total_rejected = 0
        self.total_rate_limited = 0
        self._wait_sum = 0.0
        self._wait_count = 0
        self._exec_sum = 0.0
        self._exec_count = 0
        self._recent_wait: deque[float] = deque(maxlen=WINDOW)
        self._recent_exec: deque[float] = deque(maxlen=WINDOW)
        self._finishes: deque[list[float]] = deque()

    def on_queued(self) -> None:
        self.total_queued += 1

    def on_rejected(self) -> None:
        self.total_rejected += 1

    def on_rate_limited(self) -> None:
        self.total_rate_limited += 1

    def on_started(self, job: Job) -> None:
        started = job.started_at
        if started is not None:
            wait = started - job.created_at
            self._wait_sum += wait
            self._wait_count += 1
            self._recent_wait.append(wait)

    def on_finished(self, job: Job, now: float | None = None) -> None:
        """Count a job's end; `now` is this clock's time, when the caller has read it already."""
        # Once per job: the status by identity and the figures without the Job's properties (Python calls).
        status = job.status
        if status is JobStatus.CANCELLED:
            self.total_cancelled += 1
            return
        self.total_processed += 1
        if status is JobStatus.COMPLETED:
            self.total_completed += 1
        elif status is JobStatus.FAILED:
            self.total_failed += 1
        elif status is JobStatus.TIMEOUT:
            self.total_timeout += 1
        started, finished = job.started_at, job.finished_at
        if started is not None and finished is not None:
            result = job.result
            run_time = None if result is None else result.run_time_ms
            execution = finished - started if run_time is None else run_time
            self._exec_sum += execution
            self._exec_count += 1
            self._recent_exec.append(execution)
        if now is None:
            now = self._clock()
        tick = now // TICK_S
        finishes = self._finishes
        if finishes and finishes[-1][0] == tick:
            latest = finishes[-1]
            latest[1] += 1
            latest[3] = now
        else:
            finishes.append([tick, 1, now, now])
            self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - THROUGHPUT_SECONDS
        finishes = self._finishes
        while finishes and finishes[0][3] < horizon:
            finishes.popleft()

    def retry_after(self) -> int:
        """Seconds until a place in a full queue frees up, as `seconds_until_a_place` estimates it (to a tick)."""
        self._trim(self._clock())
        finishes = self._finishes
        count = int(sum(ticked[1] for ticked in finishes))
        if count < 2:
            return RETRY_UNKNOWN_S
        return _place_in(finishes[0][2], finishes[-1][3], count, 1.0)

    def jobs_per_second(self) -> float:
        self._trim(self._clock())
        return sum(ticked[1] for ticked in self._finishes) / THROUGHPUT_SECONDS

    def snapshot(self, *, queue_length: int, running: int, max_concurrent: int, max_queue_size: int) -> dict[str, Any]:
        counters = {
            "queued": self.total_queued,
            "processed": self.total_processed,
            "completed": self.total_completed,
            "failed": self.total_failed,
            "timeout": self.total_timeout,
            "cancelled": self.total_cancelled,
            "rejected": self.total_rejected,
            "rate_limited": self.total_rate_limited,
            "wait_sum": self._wait_sum,
            "wait_count": self._wait_count,
            "exec_sum": self._exec_sum,
            "exec_count": self._exec_count,
        }
        return build_snapshot(
            counters,
            waits=self._recent_wait,
            execs=self._recent_exec,
            jobs_per_second=self.jobs_per_second(),
            queue_length=queue_length,
            running=running,
            max_concurrent=max_concurrent,
            max_queue_size=max_queue_size,
        )


def build_snapshot(
    counters: Mapping[str, float],
    *,
    waits: Iterable[float],
    execs: Iterable[float],
    jobs_per_second: float,
    queue_length: int,
    running: int,
    max_concurrent: int,
    max_queue_size: int,
) -> dict[str, Any]:
    """The statistics payload (camelCase, as the seed) from raw counters; shared by the memory and Redis backends."""

    def count(name: str) -> int:
        return int(counters.get(name, 0))

    def average(total: str, n: str) -> float:
        return round(counters[total] / counters[n], 1) if counters.get(n) else 0

    wait_sorted, exec_sorted = sorted(waits), sorted(execs)
    return {
        "totalQueued": count("queued"),
        "totalProcessed": count("processed"),
        "totalCompleted": count("completed"),
        "totalFailed": count("failed"),
        "totalTimeout": count("timeout"),
        "totalCancelled": count("cancelled"),
        "totalRejected": count("rejected"),
        "totalRateLimited": count("rate_limited"),
        "averageWaitTime": average("wait_sum", "wait_count"),
        "averageExecutionTime": average("exec_sum", "exec_count"),
        "waitTime": {f"p{q}": round(percentile(wait_sorted, q), 1) for q in (50, 95, 99)},
        "executionTime": {f"p{q}": round(percentile(exec_sorted, q), 1) for q in (50, 95, 99)},
        "jobsPerSecond": round(jobs_per_second, 3),
        "queueLength": queue_length,
        "runningCount": running,
        "maxConcurrent": max_concurrent,
        "maxQueueSize": max_queue_size,
    }
