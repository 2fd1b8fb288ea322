"""Piston's results: a finished native job as Piston's compile and run stages."""

from __future__ import annotations

import re
import signal
from typing import Any

from ...queue.events import Event
from ...queue.jobs import ExecutionResult, Job
from ..common import accounting, signal_number
from .runtimes import PistonRuntime

# Isolate's messages, which Piston passes on.
WALL_TIMEOUT = "Time limit exceeded (wall clock)"
CPU_TIMEOUT = "Time limit exceeded"
STOPPED = frozenset({"cancelled", "stopped", "shutdown"})
_COMPILER_SIGNAL = re.compile(r"\[compiler signal (\d+)\]\s*$")


class OutputTape:
    """A job's output events in the order written, for Piston's `output` (stdout and stderr interleaved).

    Bounded: past `limit` characters it stops recording and `output` falls back to stdout then stderr."""

    def __init__(self, limit: int) -> None:
        self._parts: list[tuple[str, str]] = []
        self._size = 0
        self._limit = limit
        self._overflow = False

    def __call__(self, event: Event) -> None:
        if event["type"] != "output" or self._overflow:
            return
        data: str = event["data"]
        if self._size + len(data) > self._limit:
            self._overflow = True
            self._parts.clear()
            return
        self._parts.append((event["stream"], data))
        self._size += len(data)

    def output(self, result: ExecutionResult) -> str:
        """The interleaved output, when what was recorded is exactly the job's stdout and stderr."""
        if not self._overflow:
            streams = {name: "".join(d for s, d in self._parts if s == name) for name in ("stdout", "stderr")}
            if streams == {"stdout": result.stdout, "stderr": result.stderr}:
                return "".join(data for _, data in self._parts)
        return result.stdout + result.stderr


def run_stage(result: ExecutionResult, output: str, wall_time: float | None) -> dict[str, Any]:
    """The run stage as Piston's job.js reports it, status and message as isolate words them."""
    code: int | None = None
    sig: str | None = None
    status: str | None = None
    message: str | None = None
    if result.reason in ("timeout", "cpu_limit"):
        status, message, sig = "TO", WALL_TIMEOUT if result.reason == "timeout" else CPU_TIMEOUT, "SIGKILL"
    elif result.reason == "output_limit":
        stream = "stderr" if len(result.stderr) > len(result.stdout) else "stdout"
        status, message, sig = ("EL" if stream == "stderr" else "OL"), f"{stream} length exceeded", "SIGKILL"
    elif result.signal is not None or result.reason in STOPPED:
        sig = result.signal or "SIGKILL"
        status, message = "SG", f"Caught fatal signal {signal_number(sig) or 9}"
    elif result.exit_code is None:
        status, message = "XX", f"Internal error ({result.reason or 'no exit status'})"
    else:
        code = result.exit_code
        if code != 0:
            status, message = "RE", f"Exited with error status {code}"
    return {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "code": code,
        "signal": sig,
        "output": output,
        "memory": accounting(result, "memory_peak_bytes"),
        "message": message,
        "status": status,
        "cpu_time": accounting(result, "cpu_time_ms"),
        "wall_time": wall_time,
    }


def compile_stage(result: ExecutionResult) -> dict[str, Any]:
    """The compile stage. Conveyor keeps the compiler's stdout and stderr as one text, shown as stderr and output,
    and no compiler exit status: a failed compile has code null (docs/compat.md)."""
    text = result.compile_output or ""
    failed = result.reason in ("compile_error", "compile_timeout")
    sig = status = message = None
    killed = _COMPILER_SIGNAL.search(text)
    if result.reason == "compile_timeout":
        status, message, sig = "TO", WALL_TIMEOUT, "SIGKILL"
    elif failed and killed:
        number = int(killed.group(1))
        status, message, sig = "SG", f"Caught fatal signal {number}", signal.Signals(number).name
    elif failed:
        status = "RE"
    return {
        "stdout": "",
        "stderr": text,
        "code": None if failed else 0,
        "signal": sig,
        "output": text,
        "memory": accounting(result, "compile_memory_peak_bytes"),
        "message": message,
        "status": status,
        "cpu_time": accounting(result, "compile_cpu_time_ms"),
        "wall_time": result.compile_time_ms,
    }


def render_result(rt: PistonRuntime, job: Job, output: str | None = None) -> dict[str, Any]:
    """`POST /execute`'s answer for a finished job. A failed compile is reported as Piston does: `run` is the
    compile stage again (v2.js keeps that for older clients)."""
    result = job.result or ExecutionResult()
    data: dict[str, Any] = {}
    if rt.compiled and job.started_at is not None:
        data["compile"] = compile_stage(result)
    if "compile" in data and data["compile"]["code"] != 0:
        data["run"] = data["compile"]
    else:
        text = output if output is not None else result.stdout + result.stderr
        data["run"] = run_stage(result, text, job.execution_time_ms)
    data["language"], data["version"] = rt.language, rt.version
    return data
