"""The queue contract every backend (embedded memory, Redis) keeps; handlers and the hub only see this."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypedDict, runtime_checkable

from .events import Event, EventEmitter
from .jobs import ExecutionResult, Job, JobStatus, OutputCallback, Stream

logger = logging.getLogger(__name__)


class InstanceRecord(TypedDict):
    """One instance as its last heartbeat recorded it (epoch ms)."""

    name: str
    slots: int
    running: list[str]
    startedAt: float | None
    lastHeartbeat: float
    here: bool


class QueueBackend(Protocol):
    """A priority job queue with bounded concurrency, bounded waiting room, timeouts and cancellation.

    `server.worker.Worker` is the one implementation; the backends differ only in their `Store`.
    """

    events: EventEmitter
    max_concurrent: int
    max_queue_size: int

    async def start(self) -> None:
        """Start background work (claiming, leases, retention sweeps, Redis readers)."""

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop accepting, give running jobs `grace_s`, then cancel what is left with reason `shutdown`."""

    async def submit(self, job: Job) -> Job:
        """Enqueue; raises QueueFull past max_queue_size and ShuttingDown while closing."""

    async def get(self, job_id: str) -> Job | None:
        """The job (queued, running or retained finished), or None."""

    async def position(self, job: Job) -> int | None:
        """1-based place in line while queued, else None."""

    async def positions(self, job_ids: list[str]) -> dict[str, int | None]:
        """Places in line of several jobs, read in one store call."""

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job (REST DELETE). NotFound if unknown, Conflict when running or finished."""

    async def stop(self, job_id: str, reason: str = "stopped") -> Job:
        """Cancel a queued job or kill a running one (status cancelled). NotFound / Conflict as for cancel."""

    async def wait(self, job_id: str) -> Job:
        """Wait until the job is finished and return it."""

    async def write_stdin(self, job_id: str, data: bytes | None) -> None:
        """Feed live stdin to a queued or running interactive job (None closes it). Conflict if not accepting input,
        InputBacklog past MAX_STDIN_BYTES of input the program has not read yet."""

    async def read_events(self, job_id: str, since: int) -> list[Event]:
        """The job's logged events with seq > since, from the store (any instance can replay any job)."""

    async def recent(self, limit: int = 100, *, whole: bool = True) -> list[Job]:
        """The most recent jobs (finished, then active), oldest first. `whole=False`: metadata only (no code, input
        or output), which is all a summary shows and costs a store no megabytes."""

    async def listing(self, finished: int) -> list[Job]:
        """Every queued and running job and the newest `finished` finished ones, metadata only (no code, input or
        output), in no particular order: what the dashboard's job list pages, sorts and counts."""

    async def instances(self) -> list[InstanceRecord]:
        """The instances working this queue (one embedded; on Redis each live heartbeat), newest beat first."""

    async def stats(self) -> dict[str, Any]:
        """The statistics snapshot (camelCase, as the seed)."""

    def note_rate_limited(self) -> None:
        """Count a 429 (the limiter lives outside the queue, the dashboard shows them together)."""


# What a store tells the worker outside the event stream: ("_stop", job id, reason) or ("_stdin", job id, None).
ControlHandler = Callable[[str, str, str | None], None]


class Store(Protocol):
    """Where jobs live: the embedded `MemoryStore` or the Lua scripts of `RedisStore`. Every method is one atomic
    step; the worker composes them. `events` carries every event of the store (the whole cluster's on Redis),
    each with its seq, and `here=True` when this instance caused it."""

    events: EventEmitter
    instance: str
    on_control: ControlHandler | None
    # Queued jobs end with the process (memory) or wait in the store for another instance (Redis).
    keeps_queue: bool

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def enqueue(self, job: Job, *, max_queue_size: int, max_concurrent: int) -> Job:
        """Add a queued job (idempotent per id); QueueFull past the size."""

    async def claim(self, count: int, *, lease_ms: int, max_concurrent: int) -> list[tuple[Job, str | None]]:
        """Take up to `count` queued jobs for this instance under a lease; each with its recorded stop, if any."""

    async def renew(self, job_ids: list[str], *, lease_ms: int) -> dict[str, str]:
        """Extend this instance's leases; returns the stop requests recorded on those jobs (id -> reason)."""

    async def finish(self, job: Job, status: JobStatus, result: ExecutionResult) -> bool:
        """Record the final state and emit the terminal event. Idempotent for the lease holder (a retry after a
        lost reply returns True); False when the lease was lost to another instance."""

    async def cancel(self, job_id: str, reason: str) -> tuple[str, Job | None]:
        """Cancel a queued job. Returns the status it had ("missing" if unknown) and the job as it is now."""

    async def request_stop(self, job_id: str, reason: str) -> tuple[str, Job | None]:
        """Cancel a queued job, or record a stop request on a running one (durable: read at claim and at every
        renewal) and notify the instance running it. Returns the status it had and the job."""

    async def append_event(self, job: Job, event: Event) -> None:
        """Log and publish one event of a running job (output), with the job's next seq."""

    async def read_events(self, job_id: str, since: int) -> list[Event]: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def positions(self, job_ids: list[str]) -> dict[str, int | None]: ...

    async def recent(self, limit: int, *, whole: bool = True) -> list[Job]: ...

    async def listing(self, finished: int) -> list[Job]: ...

    async def heartbeat(self, *, slots: int, ttl_ms: int) -> None:
        """Record this instance and its slots; the record expires `ttl_ms` after the last beat."""

    async def instances(self) -> list[InstanceRecord]: ...

    async def stats(self, *, max_concurrent: int, max_queue_size: int) -> dict[str, Any]: ...

    def note_rate_limited(self) -> None: ...

    async def reclaim(self, *, retry: bool, lease_ms: int) -> list[str]:
        """End (or requeue once) jobs whose lease expired: their instance died."""

    async def wait_for_work(self, timeout: float) -> None:
        """Return when a job may be claimable (an enqueue or a finish), or after `timeout`."""

    async def abandon_queued(self, reason: str) -> None:
        """At shutdown: cancel queued jobs if they die with this process (memory); nothing on Redis."""

    async def push_stdin(self, job_id: str, data: bytes | None, budget: int) -> None:
        """Queue input for a running interactive job; Conflict if it takes none, InputBacklog past `budget`
        bytes not yet read by the program."""

    async def take_stdin(self, job_id: str) -> list[bytes | None]:
        """Move queued input to the running instance (its bytes stay counted until `ack_stdin`)."""

    async def ack_stdin(self, job_id: str, size: int) -> None:
        """The program read `size` bytes: they leave the job's budget."""

    async def drain(self, timeout: float) -> None:
        """Wait until events this instance published have come back through `events` (Redis), at most `timeout`."""


@runtime_checkable
class SettlesAtOnce(Protocol):
    """A store whose claim is done before it returns (the embedded ones): a worker's finish claims the next jobs
    from it without a coroutine (two a job fewer), the worker hears of new work through `on_work`, called at once
    by the store, rather than through a claim loop woken by `wait_for_work`, and a run's live events are appended
    as they come, in their order, with no task to publish them."""

    on_work: Callable[[], None] | None

    def append_event_now(self, job: Job, event: Event) -> None: ...

    def claim_now(self, count: int, *, lease_ms: int, max_concurrent: int) -> list[tuple[Job, str | None]]: ...


def backstop_s(job: Job, grace_s: float) -> float:
    """The queue's own timeout for a run, a backstop behind the executor's limits: each test runs within the job's
    timeout, and their build (compile, then pack) within the grace."""
    return job.timeout_ms * job.runs / 1000.0 + grace_s * (2 if job.tests else 1)


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
    per ~8 ms and stream, and splits large ones, so a chatty program costs few events and none waits long. A whole
    line written 8 ms or more after the last event (a run's first line, a line after a pause) goes at once: a
    watcher sees it as it is printed, not up to 8 ms later. Still at most one event per 8 ms and stream, but for a
    change of stream and chunks past MAX_CHUNK."""

    def __init__(self, emit: OutputCallback) -> None:
        self._emit = emit
        self._stream: Stream | None = None
        self._parts: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._quiet_from = 0.0  # time.monotonic() from which a whole line may go at once

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
            return
        if data[-1] == "\n" and time.monotonic() >= self._quiet_from:
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
        self._quiet_from = time.monotonic() + COALESCE_S
        for start in range(0, len(text), MAX_CHUNK):
            self._emit(stream, text[start : start + MAX_CHUNK])
