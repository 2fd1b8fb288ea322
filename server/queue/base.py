"""The queue contract every backend (embedded memory, Redis) keeps; handlers and the hub only see this."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..events import EventEmitter
from ..jobs import ExecutionResult, Executor, Job, JobIO, JobStatus, OutputCallback, Stream

logger = logging.getLogger(__name__)


class QueueBackend(Protocol):
    """A priority job queue with bounded concurrency, bounded waiting room, timeouts and cancellation."""

    events: EventEmitter
    max_concurrent: int
    max_queue_size: int

    async def start(self) -> None:
        """Start background work (retention sweeps, Redis readers)."""

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop accepting, give running jobs `grace_s`, then cancel what is left with reason `shutdown`."""

    async def submit(self, job: Job) -> Job:
        """Enqueue; raises QueueFull past max_queue_size and ShuttingDown while closing."""

    async def get(self, job_id: str) -> Job | None:
        """The job (queued, running or retained finished), or None."""

    async def position(self, job: Job) -> int | None:
        """1-based place in line while queued, else None."""

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job (REST DELETE). NotFound if unknown, Conflict when running or finished."""

    async def stop(self, job_id: str, reason: str = "stopped") -> Job:
        """Cancel a queued job or kill a running one (status cancelled). NotFound / Conflict as for cancel."""

    async def wait(self, job_id: str) -> Job:
        """Wait until the job is finished and return it."""

    async def write_stdin(self, job_id: str, data: bytes | None) -> None:
        """Feed live stdin to a running interactive job (None closes it). Conflict if not accepting input."""

    async def recent(self, limit: int = 100) -> list[Job]:
        """The most recent jobs (finished, then active), oldest first, for the dashboard's table."""

    async def stats(self) -> dict[str, Any]:
        """The statistics snapshot (camelCase, as the seed)."""

    def note_rate_limited(self) -> None:
        """Count a 429 (the limiter lives outside the queue, the dashboard shows them together)."""


async def execute(
    executor: Executor, job: Job, io: JobIO, grace_s: float, stop_reason: Callable[[], str | None]
) -> tuple[JobStatus, ExecutionResult]:
    """Run one job through the executor with the queue's backstop timeout; map the outcome to a final status.

    Cancellation counts as a stop only when `stop_reason()` names one (stop, shutdown); any other cancellation
    propagates. An executor that raises is an internal error, logged with the job id, never a crashed queue.
    """
    try:
        # Each test runs within the job's timeout, and their build (compile, then pack) within the grace.
        async with asyncio.timeout(job.timeout_ms * job.runs / 1000.0 + grace_s * (2 if job.tests else 1)):
            result = await executor(job, io)
        return status_of(result), result
    except TimeoutError:
        return JobStatus.TIMEOUT, ExecutionResult(reason="timeout", signal="SIGKILL")
    except asyncio.CancelledError:
        reason = stop_reason()
        if reason is None:
            raise
        return JobStatus.CANCELLED, ExecutionResult(reason=reason, signal="SIGKILL")
    except Exception:
        logger.exception("executor failed on job %s", job.id)
        return JobStatus.FAILED, ExecutionResult(reason="internal_error")


def status_of(result: ExecutionResult) -> JobStatus:
    """exit 0 and no reason: completed; reason "timeout": timeout; anything else failed, with a reason."""
    if result.reason == "timeout":
        return JobStatus.TIMEOUT
    if result.reason is None and result.exit_code == 0 and result.signal is None:
        return JobStatus.COMPLETED
    if result.reason is None:
        result.reason = "signal" if result.signal is not None else "runtime_error"
    return JobStatus.FAILED


# Output chunks: writes closer together than this are merged into one event, bigger ones split.
COALESCE_S = 0.008
MAX_CHUNK = 16 * 1024


class OutputCoalescer:
    """Merges a program's small writes (print() writes the text and the newline separately) into one output event
    per ~8 ms and stream, and splits large ones, so a chatty program costs few events and none waits long."""

    def __init__(self, emit: OutputCallback) -> None:
        self._emit = emit
        self._stream: Stream | None = None
        self._parts: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, stream: Stream, data: str) -> None:
        if not data:
            return
        if self._stream is not None and stream != self._stream:
            self.flush()  # keep stdout and stderr apart and in order
        self._stream = stream
        self._parts.append(data)
        self._size += len(data)
        if self._size >= MAX_CHUNK:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(COALESCE_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._parts or self._stream is None:
            return
        text, stream = "".join(self._parts), self._stream
        self._parts, self._size = [], 0
        for start in range(0, len(text), MAX_CHUNK):
            self._emit(stream, text[start : start + MAX_CHUNK])
