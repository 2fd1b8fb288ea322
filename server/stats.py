"""Statistics: the seed's counters plus percentiles over a recent window and throughput over the last minute."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
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
        self._finish_times: deque[float] = deque()

    def on_queued(self) -> None:
        self.total_queued += 1

    def on_rejected(self) -> None:
        self.total_rejected += 1

    def on_rate_limited(self) -> None:
        self.total_rate_limited += 1

    def on_started(self, job: Job) -> None:
        wait = job.wait_time_ms
        if wait is not None:
            self._wait_sum += wait
            self._wait_count += 1
            self._recent_wait.append(wait)

    def on_finished(self, job: Job) -> None:
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
        execution = job.execution_time_ms
        if execution is not None:
            self._exec_sum += execution
            self._exec_count += 1
            self._recent_exec.append(execution)
        now = self._clock()
        self._finish_times.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - THROUGHPUT_SECONDS
        times = self._finish_times
        while times and times[0] < horizon:
            times.popleft()

    def jobs_per_second(self) -> float:
        self._trim(self._clock())
        return len(self._finish_times) / THROUGHPUT_SECONDS

    def snapshot(self, *, queue_length: int, running: int, max_concurrent: int, max_queue_size: int) -> dict[str, Any]:
        waits = sorted(self._recent_wait)
        execs = sorted(self._recent_exec)
        return {
            "totalQueued": self.total_queued,
            "totalProcessed": self.total_processed,
            "totalCompleted": self.total_completed,
            "totalFailed": self.total_failed,
            "totalTimeout": self.total_timeout,
            "totalCancelled": self.total_cancelled,
            "totalRejected": self.total_rejected,
            "totalRateLimited": self.total_rate_limited,
            "averageWaitTime": round(self._wait_sum / self._wait_count, 1) if self._wait_count else 0,
            "averageExecutionTime": round(self._exec_sum / self._exec_count, 1) if self._exec_count else 0,
            "waitTime": {f"p{q}": round(percentile(waits, q), 1) for q in (50, 95, 99)},
            "executionTime": {f"p{q}": round(percentile(execs, q), 1) for q in (50, 95, 99)},
            "jobsPerSecond": round(self.jobs_per_second(), 3),
            "queueLength": queue_length,
            "runningCount": running,
            "maxConcurrent": max_concurrent,
            "maxQueueSize": max_queue_size,
        }
