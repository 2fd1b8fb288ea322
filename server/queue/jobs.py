"""Jobs: the record the queue keeps for each submission, and the executor contract that runs one."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

# The run contract lives with the sandbox that fulfils it; re-exported here for the queue's users.
from ..sandbox.contract import ExecutionResult as ExecutionResult
from ..sandbox.contract import JobIO as JobIO
from ..sandbox.contract import Limits as Limits
from ..sandbox.contract import OutputCallback as OutputCallback
from ..sandbox.contract import SourceFile as SourceFile
from ..sandbox.contract import Stream as Stream
from ..sandbox.contract import TestCase as TestCase


class JobStatus(str, Enum):
    """Lifecycle: queued -> running -> completed | failed | timeout, or cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


FINISHED_STATUSES = frozenset(s for s in JobStatus if s.finished)
# The event types that end a job (one per job): its final status.
TERMINAL_TYPES = frozenset(s.value for s in FINISHED_STATUSES)


# The executor runs one job to its end and returns what happened. The queue cancels the task on timeout or stop;
# an executor must then kill everything it started before letting CancelledError propagate.
Executor = Callable[["Job", JobIO], Awaitable[ExecutionResult]]


class Runner(Protocol):
    """The executor plus what the API needs to know about it (`server.judging.executor.Judge` implements this)."""

    async def __call__(self, job: Job, io: JobIO) -> ExecutionResult: ...

    def runtimes(self) -> list[dict[str, Any]]: ...

    def cache_status(self) -> dict[str, Any]: ...

    def pool_status(self) -> dict[str, Any]: ...

    def resolve(self, name: str) -> str | None: ...

    def describe(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def new_job_id() -> str:
    """A random, unguessable id (128 bits, hex). Ids are what a job's owner reads it by: the OS's CSPRNG, called
    directly (`secrets.token_hex` is this through three Python calls, run once per job), not a buffer of our own (a
    shared buffer is one more thing to get right across threads and forks, for ~0.4 us)."""
    return os.urandom(16).hex()


def now_ms() -> float:
    return time.time() * 1000.0


_NO_LIMITS = Limits()


@dataclass(slots=True, eq=False)
class Job:
    """One submission and, once finished, its result."""

    language: str
    code: str
    stdin: str = ""
    # Sequences, () when none: a job without arguments or options (most) allocates no lists for them, two objects
    # fewer for the garbage collector to walk per waiting job.
    args: Sequence[str] = ()
    priority: int = 0
    owner: str = ""
    timeout_ms: int = 10_000
    interactive: bool = False
    id: str = field(default_factory=new_job_id)
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=now_ms)
    started_at: float | None = None
    finished_at: float | None = None
    result: ExecutionResult | None = None
    # Per-job event sequence number, so subscribers can order and resume.
    seq: int = 0
    # Set by the queue while the job waits: the position among queued jobs is computed on demand.
    position: int | None = None
    # Judge features (all optional): several files, per-run limits, compiler options, an expected output or
    # tests compiled once, a callback, and how output is encoded.
    files: list[SourceFile] | None = None
    # Shared while unset: a Limits is frozen, so one empty one serves every job that asks for none.
    limits: Limits = _NO_LIMITS
    compiler_options: Sequence[str] = ()
    expected_output: str | None = None
    tests: list[TestCase] | None = None
    callback_url: str | None = None
    output_encoding: str = "utf8"
    # What a compat door's submission said that a native job does not keep (Judge0's language_id, its own limits'
    # names...), as JSON: stored with the job by every store, so any instance, and this one after a restart,
    # answers that door the same way.
    dialect: dict[str, Any] | None = None

    @property
    def wait_time_ms(self) -> float | None:
        if self.started_at is not None:
            return self.started_at - self.created_at
        if self.finished_at is not None:  # cancelled while queued
            return self.finished_at - self.created_at
        return None

    @property
    def execution_time_ms(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        if self.result is not None and self.result.run_time_ms is not None:
            return self.result.run_time_ms
        return self.finished_at - self.started_at

    @property
    def runs(self) -> int:
        """How many times the program runs: once per test, else once."""
        return len(self.tests) if self.tests else 1

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def summary(self) -> dict[str, Any]:
        """Metadata only: safe to show anyone (no code, stdin or output)."""
        result = self.result
        return {
            "id": self.id,
            "language": self.language,
            "priority": self.priority,
            "status": self.status.value,
            "createdAt": _iso_ms(self.created_at),
            "startedAt": _iso_ms(self.started_at),
            "finishedAt": _iso_ms(self.finished_at),
            "waitTimeMs": _round(self.wait_time_ms),
            "executionTimeMs": _round(self.execution_time_ms),
            "exitCode": result.exit_code if result else None,
            "signal": result.signal if result else None,
            "reason": result.reason if result else None,
            "truncated": result.truncated if result else False,
            **(result or _NO_RESULT).usage(),
        }

    def to_dict(self) -> dict[str, Any]:
        """The full job, for its owner: includes code, output and compile output."""
        data = self.summary()
        result = self.result or _NO_RESULT  # before it ends: the empty result's fields
        data.update(
            {
                "code": self.code,
                "stdin": self.stdin,
                "args": list(self.args),
                "timeoutMs": self.timeout_ms,
                "stdout": result.stdout,
                "stderr": result.stderr,
                "compileOutput": result.compile_output,
                "compileTimeMs": _round(result.compile_time_ms),
                "compileCached": result.compile_cached,
                "files": [f.to_dict() for f in self.files] if self.files else None,
                "compilerOptions": list(self.compiler_options),
                **self.limits.to_dict(),
                "expectedOutput": self.expected_output,
                "outputEncoding": self.output_encoding,
                "callbackUrl": self.callback_url,
                "verdict": result.verdict,
                "stdoutLossy": result.stdout_lossy,
                "stderrLossy": result.stderr_lossy,
            }
        )
        if self.tests is not None:
            data.update(self._tests_dict(result.tests))
        if self.status is JobStatus.QUEUED:
            data["position"] = self.position
        return data

    def _tests_dict(self, results: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The tests as defined, or once run their results and how many passed."""
        assert self.tests is not None
        if results is None:
            return {"tests": [t.to_dict() for t in self.tests]}
        passed = sum(1 for t in results if t.get("verdict") == "accepted")
        return {
            "tests": results or [t.to_dict() for t in self.tests],
            "summary": {"passed": passed, "total": len(self.tests)},
        }


_NO_RESULT = ExecutionResult()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _iso_ms(value: float | None) -> str | None:
    if value is None:
        return None
    seconds, millis = divmod(int(value), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
