"""A job's life, decided once for every store: what each transition makes of a job, and the event it announces.

The stores only persist what these functions decide (SAQ's base queue does the same): the embedded store applies
it in place, the Redis scripts apply it atomically, checking first that the job is still in the state the decision
was made from (a cancel racing a claim, a reclaim racing a renewal). A store adds to an event only what it alone
knows when it persists: the event's `seq`, and on Redis its clock (`STAMPED`).
"""

from __future__ import annotations

from typing import Any

from .events import Event
from .jobs import ExecutionResult, Job, JobStatus, Stream

WORKER_LOST = "worker_lost"

# What may follow what, by status value. A requeue (running -> queued) happens only to a job whose worker was lost.
# Values, not members: an Enum member's hash and `.value` are Python calls, and these are checked on every job.
_NEXT: dict[str, frozenset[str]] = {
    JobStatus.QUEUED.value: frozenset({JobStatus.RUNNING.value, JobStatus.CANCELLED.value}),
    JobStatus.RUNNING.value: frozenset(s.value for s in JobStatus if s.finished) | {JobStatus.QUEUED.value},
}
_NOWHERE: frozenset[str] = frozenset()

# Fields of an event that a Redis script fills in from what only Redis knows as it persists: the job it popped
# (`id`), its clock (`now`) and the time since the job was created by that clock (`wait`). Every other field comes
# from the functions below; the script appends these to the rest (scripts.stamp).
STAMPED: dict[str, dict[str, str]] = {
    "queued": {"createdAt": "now"},
    "running": {"jobId": "id", "startedAt": "now", "waitTimeMs": "wait"},
}


class IllegalTransition(RuntimeError):
    """A store asked to move a job where its life does not go (a bug, never a client's mistake)."""


def ms(value: float | None) -> float | None:
    """A duration in milliseconds as every door shows it: to 0.1 ms. (Times are epoch milliseconds as the store's
    clock gave them: Redis's whole ones, this process's fractional ones.)"""
    return None if value is None else round(value, 1)


# -- events: one function per kind, for every store ------------------------------------------------------------


def queued_event(job: Job, *, retried: bool = False) -> Event:
    event: Event = {
        "type": "queued",
        "jobId": job.id,
        "language": job.language,
        "priority": job.priority,
        "createdAt": job.created_at,
    }
    if retried:
        event["retried"] = True
    return event


def running_event(job: Job) -> Event:
    started, wait = job.started_at, None
    if started is not None:
        wait = round(started - job.created_at, 1)
    return {"type": "running", "jobId": job.id, "startedAt": started, "waitTimeMs": wait}


def terminal_event(job: Job) -> Event:
    """The one event that ends a job, whatever ended it (its result, a stop, a timeout, a lost worker)."""
    # Built on every job's end: the figures are read once, without the properties and helpers that give them.
    result = job.result or _NO_RESULT
    created, started, finished = job.created_at, job.started_at, job.finished_at
    wait = execution = None
    if started is not None:
        wait = round(started - created, 1)
        if finished is not None:
            run_time = result.run_time_ms
            execution = round(finished - started if run_time is None else run_time, 1)
    elif finished is not None:  # cancelled while queued
        wait = round(finished - created, 1)
    compile_ms, cpu_ms = result.compile_time_ms, result.cpu_time_ms
    compile_cpu_ms = result.compile_cpu_time_ms
    return {
        "type": job.status._value_,
        "jobId": job.id,
        "exitCode": result.exit_code,
        "signal": result.signal,
        "reason": result.reason,
        "truncated": result.truncated,
        "waitTimeMs": wait,
        "executionTimeMs": execution,
        "compileTimeMs": None if compile_ms is None else round(compile_ms, 1),
        # As ExecutionResult.usage() spells them.
        "cpuTimeMs": None if cpu_ms is None else round(cpu_ms, 1),
        "memoryPeakBytes": result.memory_peak_bytes,
        "compileCpuTimeMs": None if compile_cpu_ms is None else round(compile_cpu_ms, 1),
        "compileMemoryPeakBytes": result.compile_memory_peak_bytes,
        "language": job.language,
    }


def output_event(job_id: str, stream: Stream, data: str) -> Event:
    return {"type": "output", "jobId": job_id, "stream": stream, "data": data}


def stamped(event: Event) -> tuple[dict[str, Any], list[str]]:
    """The event without the fields a Redis script fills in, and those fields with their source, flat."""
    stamps = STAMPED.get(event["type"], {})
    return {k: v for k, v in event.items() if k not in stamps}, [x for pair in stamps.items() for x in pair]


_NO_RESULT = ExecutionResult()


# -- transitions: each moves the job and returns the event that announces it -----------------------------------


def _move(job: Job, to: JobStatus) -> None:
    if to._value_ not in _NEXT.get(job.status._value_, _NOWHERE):
        raise IllegalTransition(f"job {job.id}: {job.status.value} cannot become {to.value}")
    job.status = to


def enqueue(job: Job) -> Event:
    """A new job waits. Its creation time is the store's clock's (this process's, or Redis's on Redis)."""
    job.status = JobStatus.QUEUED
    return queued_event(job)


def claim(job: Job, now: float) -> Event:
    """A worker takes the job."""
    if job.status is JobStatus.QUEUED:  # the way every job goes, checked without _move's lookups
        job.status = JobStatus.RUNNING
    else:
        _move(job, JobStatus.RUNNING)
    job.started_at = now
    return running_event(job)


def finish(job: Job, status: JobStatus, result: ExecutionResult, now: float) -> Event:
    """The run ended with `status` (completed, failed, timeout, or cancelled by a stop)."""
    if status is JobStatus.QUEUED or status is JobStatus.RUNNING:
        raise IllegalTransition(f"job {job.id}: {status.value} does not end a job")
    if job.status is JobStatus.RUNNING:  # any end may follow a run
        job.status = status
    else:
        _move(job, status)
    job.result = result
    job.finished_at = now
    return terminal_event(job)


def cancel(job: Job, reason: str, now: float) -> Event:
    """A queued job leaves the line unrun."""
    if job.status is not JobStatus.QUEUED:
        raise IllegalTransition(f"job {job.id}: only a queued job is cancelled, this one is {job.status.value}")
    return finish(job, JobStatus.CANCELLED, ExecutionResult(reason=reason), now)


def lose(job: Job, now: float) -> Event:
    """The worker running the job is gone (its lease expired): the job failed, nothing of its run is known."""
    return finish(job, JobStatus.FAILED, ExecutionResult(reason=WORKER_LOST), now)


def requeue(job: Job) -> Event:
    """The worker running the job is gone and the job gets one more try: back in line, as it was."""
    _move(job, JobStatus.QUEUED)
    job.started_at = None
    return queued_event(job, retried=True)


def retries(job_attempts: int, *, retry: bool, stop_requested: bool) -> bool:
    """Whether a job whose worker was lost is requeued: once, when asked, unless someone asked to stop it."""
    return retry and job_attempts <= 1 and not stop_requested
