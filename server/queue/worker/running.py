"""A run: one job this instance runs, its task, its stop request, its live input and its live output."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from .. import transitions
from ..base import OutputCoalescer, status_of
from ..events import Event
from ..jobs import ExecutionResult, Executor, Job, JobIO, JobStatus, Stream

logger = logging.getLogger(__name__)


class RunState(enum.Enum):
    RUNNING = "running"
    FINISHING = "finishing"


class StdinChannel(asyncio.Queue[bytes | None]):
    """The program's live input. The executor reads it like any asyncio.Queue; each read gives the bytes back to
    the job's budget in the store."""

    def __init__(self, on_read: Callable[[int], None]) -> None:
        super().__init__()
        self._on_read = on_read

    def _get(self) -> bytes | None:
        item: bytes | None = super()._get()
        if item:
            self._on_read(len(item))
        return item


# Publishes one live event of a run to the store (its log, its watchers); `PublishNow` on a store that settles at once.
Publish = Callable[[Job, Event], Awaitable[None]]
PublishNow = Callable[[Job, Event], None]
# Stores a run's final status and result (the worker's finish).
Finish = Callable[["Running", JobStatus, ExecutionResult], Awaitable[None]]


class Running:
    """One job this instance runs: its task (the only one a stop cancels, and only while the work runs), its stop
    reason, and its live side. Most jobs print little or nothing, so the coalescer, the output queue and its
    publishing task come with the first output (on a store that settles at once, none: each event is appended as
    it comes), and the input lock with the first input."""

    __slots__ = (
        "_coalescer",
        "_publish",
        "_publish_now",
        "_stdin_lock",
        "deadline",
        "expired",
        "job",
        "outcome",
        "outputs",
        "publisher",
        "state",
        "stdin",
        "stop_reason",
        "task",
    )

    def __init__(self, job: Job, publish: Publish, publish_now: PublishNow | None = None) -> None:
        self.job = job
        self.state = RunState.RUNNING
        self.stop_reason: str | None = None
        # The queue's backstop (Deadlines): when the run must have ended, and whether it ran past that.
        self.deadline = math.inf
        self.expired = False
        self.task: asyncio.Task[None] | None = None
        self.stdin: StdinChannel | None = None
        # The run's final status and result, once the work ended: what finishing stores (and a retry stores again).
        self.outcome: tuple[JobStatus, ExecutionResult] | None = None
        # Live events (output, a test's result) in the order the run made them, published by one task.
        self.outputs: asyncio.Queue[Event | None] | None = None
        self.publisher: asyncio.Task[None] | None = None
        self._publish = publish
        self._publish_now = publish_now
        self._coalescer: OutputCoalescer | None = None
        self._stdin_lock: asyncio.Lock | None = None

    def stop(self, reason: str) -> None:
        if self.state is not RunState.RUNNING:
            return  # finishing: the result stands, the stop came too late
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def expire(self) -> None:
        """The run outlived the queue's backstop timeout: it is cancelled and ends `timeout`."""
        if self.state is RunState.RUNNING and self.stop_reason is None:  # a stop asked for first stands
            self.expired = True
            self.stop("timeout")

    async def run(self, executor: Executor, finish: Finish, after: Callable[[object], None]) -> None:
        """The job's task: the executor's work (the only part a stop cancels), then `finish` (the worker's), in one
        coroutine (a no-op job's cost is mostly such steps). From the moment the work ends the run is FINISHING,
        which no stop and no shutdown cancels (`stop`), so the finish needs no task of its own. Until it is stored,
        `after` (the worker's) watches the task: cancelled before it began (an early stop) or anyway (from outside),
        or failed, the run is finished in another task.

        Every cancellation of the work is a stop: one asked for (its reason), the backstop's (`timeout`), or the
        process shutting down. An executor that raises is an internal error, logged with the job id, never a
        crashed queue.
        """
        job = self.job
        outcome: tuple[JobStatus, ExecutionResult]
        try:
            # What the executor gets: output and events go out live, input comes from the channel.
            result = await executor(job, JobIO(self._on_output, self.stdin, self._on_event))
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # our own stop (not a cancellation of the caller): reported as a result
            if self.expired:
                outcome = JobStatus.TIMEOUT, ExecutionResult(reason="timeout", signal="SIGKILL")
            else:
                outcome = JobStatus.CANCELLED, ExecutionResult(reason=self.stop_reason or "shutdown", signal="SIGKILL")
        except Exception:
            logger.exception("executor failed on job %s", job.id)
            outcome = JobStatus.FAILED, ExecutionResult(reason="internal_error")
        else:
            if result.reason is None and result.exit_code == 0 and result.signal is None:
                outcome = JobStatus.COMPLETED, result  # status_of's first case, the usual one, without the call
            else:
                outcome = status_of(result), result
        finally:
            if self._coalescer is not None:  # flush(), for the runs that printed
                self._coalescer.flush()
                # The coalescer's emit is this run's own method: dropped, the run and its result are freed by
                # reference counting as soon as the worker lets go of them, not at the next full collection.
                self._coalescer = None
        self.outcome = outcome
        self.state = RunState.FINISHING
        await finish(self, *outcome)
        if self.task is not None:
            self.task.remove_done_callback(after)  # finished here: nothing is left for it

    async def take_input(self, take: Callable[[str], Awaitable[list[bytes | None]]]) -> None:
        """Move the input waiting in the store to the program's channel. One delivery at a time (the lock comes
        with the first): two in flight could hand it over out of order."""
        if self.stdin is None:
            return
        if self._stdin_lock is None:
            self._stdin_lock = asyncio.Lock()
        async with self._stdin_lock:
            try:
                items = await take(self.job.id)
            except Exception:
                logger.warning("job %s: could not take its input from the store", self.job.id)
                return
            for item in items:
                self.stdin.put_nowait(item)

    # -- live output -----------------------------------------------------------------------------------------

    def _on_output(self, stream: Stream, data: str) -> None:
        if self._coalescer is None:
            self._coalescer = OutputCoalescer(self._output)
        self._coalescer(stream, data)

    def _on_event(self, event: dict[str, Any]) -> None:
        self.flush()  # output printed before the event goes before it
        self._live({**event, "jobId": self.job.id})

    def flush(self) -> None:
        if self._coalescer is not None:
            self._coalescer.flush()

    def _output(self, stream: Stream, data: str) -> None:
        if data:
            self._live(transitions.output_event(self.job.id, stream, data))

    def _live(self, event: Event) -> None:
        if self._publish_now is not None:
            try:
                self._publish_now(self.job, event)
            except Exception as exc:
                logger.warning("job %s: an output event was not published (%s)", self.job.id, exc)
            return
        # Bounded by the run itself: its output within MAX_OUTPUT_BYTES, one event per test.
        if self.outputs is None:
            self.outputs = asyncio.Queue()
            self.publisher = asyncio.create_task(self._publish_output(self.outputs))
        self.outputs.put_nowait(event)

    async def _publish_output(self, outputs: asyncio.Queue[Event | None]) -> None:
        job = self.job
        while (event := await outputs.get()) is not None:
            try:
                await self._publish(job, event)
            except Exception as exc:
                # Live output is best effort; the result (with the whole output) is what must not be lost.
                logger.warning("job %s: an output event was not published (%s)", job.id, exc)

    async def output_sent(self) -> None:
        """Every live event out, before the terminal one (under shield: a cancelled caller leaves it running)."""
        if self.outputs is not None and self.publisher is not None:
            self.outputs.put_nowait(None)
            await asyncio.shield(self.publisher)
