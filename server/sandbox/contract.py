"""The run contract: what a caller hands the sandbox (files, limits, tests, live I/O) and the result it gets back."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .artifact import Artifact

Stream = Literal["stdout", "stderr"]


@dataclass(slots=True)
class ExecutionResult:
    """What an executor reports for one job.

    `reason` is None for a normal exit; otherwise a machine-readable cause: "timeout" (the executor enforced the
    wall time itself), "memory_limit", "output_limit", "compile_error", "compile_timeout", "signal",
    "internal_error", ... The queue maps it to a status: exit 0 and no reason -> completed, reason "timeout" ->
    timeout, anything else -> failed (reason defaulting to "runtime_error" or "signal").
    """

    exit_code: int | None = None
    signal: str | None = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    reason: str | None = None
    compile_output: str | None = None
    compile_time_ms: float | None = None
    # The compile stage was skipped: its build came from the build cache (compile_time_ms is the lookup).
    compile_cached: bool = False
    # Time the program itself ran (excluding compilation); None lets the queue use its own clock.
    run_time_ms: float | None = None
    # Judge features: the verdict, each test's own result, and whether output bytes had to be replaced to be text.
    verdict: str | None = None
    tests: list[dict[str, Any]] | None = None
    stdout_lossy: bool = False
    stderr_lossy: bool = False
    # CPU time and peak memory of each stage's whole process tree, from the job's cgroup (None without one).
    cpu_time_ms: float | None = None
    memory_peak_bytes: int | None = None
    compile_cpu_time_ms: float | None = None
    compile_memory_peak_bytes: int | None = None

    def usage(self) -> dict[str, Any]:
        """The resource figures as the API spells them (REST job, WebSocket terminal event)."""
        return {
            "cpuTimeMs": _round(self.cpu_time_ms),
            "memoryPeakBytes": self.memory_peak_bytes,
            "compileCpuTimeMs": _round(self.compile_cpu_time_ms),
            "compileMemoryPeakBytes": self.compile_memory_peak_bytes,
        }


class OutputCallback(Protocol):
    """Receives ordered output chunks while the program runs. Must not block."""

    def __call__(self, stream: Stream, data: str) -> None: ...


@dataclass(slots=True)
class JobIO:
    """The live side of a running job handed to the executor.

    `stdin` is set for interactive jobs: the executor writes each item to the program's stdin and closes it on
    `None` (end of input). For non-interactive jobs the whole `job.stdin` is written and stdin closed.
    """

    on_output: OutputCallback
    stdin: asyncio.Queue[bytes | None] | None = None
    # Other live events of the run (a test's result), emitted by the queue as they come: {"type": ..., ...}.
    on_event: Callable[[dict[str, Any]], None] | None = None


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file of a submission as sent: `content` is text (utf8) or base64; an empty name means the language's
    own source name (the `code` shorthand)."""

    name: str
    content: str
    encoding: str = "utf8"

    @property
    def raw(self) -> bytes:
        if self.encoding == "base64":
            return base64.b64decode(self.content)
        return self.content.encode("utf-8", "surrogatepass")

    @property
    def text(self) -> str:
        """For display: the content, or for a binary file a note of its size."""
        return self.content if self.encoding == "utf8" else f"<{self.size} bytes, base64>"

    @property
    def size(self) -> int:
        if self.encoding == "base64":
            return len(self.content) // 4 * 3 - self.content[-2:].count("=")
        return len(self.content.encode("utf-8", "surrogatepass"))

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "content": self.content, "encoding": self.encoding}


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-run limits a submission asked for, each at most the server's (None: the server's)."""

    cpu_time_ms: int | None = None
    memory_mb: int | None = None
    compile_timeout_ms: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return {
            "cpuTimeLimitMs": self.cpu_time_ms,
            "memoryLimitMb": self.memory_mb,
            "compileTimeoutMs": self.compile_timeout_ms,
        }


@dataclass(frozen=True, slots=True)
class TestCase:
    """One test of a submission: its stdin and, optionally, the output it must print."""

    __test__ = False  # not a pytest test class

    stdin: str = ""
    expected_output: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"stdin": self.stdin, "expectedOutput": self.expected_output}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass(frozen=True, slots=True)
class Request:
    """What the caller asks the sandbox to run: a job's program and its per-run limits (the sandbox makes a RunSpec
    of it, server/sandbox/spec.py)."""

    name: str  # the job's id: names its cgroup and (SANDBOX=none) its temp dir when it is a safe file name
    language: str
    code: str
    files: tuple[SourceFile, ...] | None = None
    args: tuple[str, ...] = ()
    compiler_options: tuple[str, ...] = ()
    interactive: bool = False
    timeout_ms: int = 10_000
    limits: Limits = Limits()
    owner: str = ""
    output_encoding: str = "utf8"


@dataclass(slots=True)
class Build:
    """A compiled program: the compile stage's result, and the work dir's files when it succeeded."""

    result: ExecutionResult
    artifact: Artifact | None
