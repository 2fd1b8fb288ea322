"""Result: what one run observed (Outcome), and the ExecutionResult the caller gets from it."""

from __future__ import annotations

import base64
import codecs
import signal
from dataclasses import dataclass

from .artifact import Artifact
from .buildcache import CachedBuild
from .contract import Build, ExecutionResult
from .languages import Language

SIGNAL_REASONS = {"SIGXCPU": "cpu_limit", "SIGXFSZ": "file_size_limit"}


@dataclass(slots=True)
class Outcome:
    """What one run observed, before it is mapped to an ExecutionResult."""

    stdout: str = ""
    stderr: str = ""
    stdout_bytes: bytes = b""  # exactly what the program wrote (within the cap), for binary-safe output
    stderr_bytes: bytes = b""
    compile_output: str = ""
    compile_output_bytes: bytes = b""
    truncated: bool = False
    reason: str | None = None  # timeout, compile_timeout, output_limit: set when the executor stopped the job
    compile_status: str | None = None  # "exit 0", "signal 9", ...
    run_status: str | None = None
    returncode: int | None = None  # of the launcher/bwrap, used only when the driver could not report
    oom_killed: bool = False
    compile_time_ms: float | None = None
    run_time_ms: float | None = None
    # From the job's cgroup, per stage; None without cgroups.
    cpu_time_ms: float | None = None
    memory_peak_bytes: int | None = None
    compile_cpu_time_ms: float | None = None
    compile_memory_peak_bytes: int | None = None


def result_of(lang: Language, out: Outcome, encoding: str = "utf8") -> ExecutionResult:
    """Map what the run observed to the result the caller understands."""
    result = ExecutionResult(
        stdout=out.stdout,
        stderr=out.stderr,
        truncated=out.truncated,
        compile_output=out.compile_output if lang.compile is not None else None,
        compile_time_ms=out.compile_time_ms,
        run_time_ms=out.run_time_ms,
        stdout_lossy=_lossy(out.stdout_bytes, out.truncated),
        stderr_lossy=_lossy(out.stderr_bytes, out.truncated),
        cpu_time_ms=out.cpu_time_ms,
        memory_peak_bytes=out.memory_peak_bytes,
        compile_cpu_time_ms=out.compile_cpu_time_ms,
        compile_memory_peak_bytes=out.compile_memory_peak_bytes,
    )
    if encoding == "base64":
        result.stdout = base64.b64encode(out.stdout_bytes).decode()
        result.stderr = base64.b64encode(out.stderr_bytes).decode()
        if result.compile_output is not None:
            result.compile_output = base64.b64encode(out.compile_output_bytes).decode()
    _end(result, out)
    if out.reason is not None:  # timeout, compile_timeout, output_limit (even if the program exited meanwhile)
        result.reason = out.reason
    failed = result.exit_code not in (None, 0) or result.signal is not None
    if out.oom_killed or (result.reason is None and failed and lang.ran_out_of_memory(out.stderr)):
        result.reason = "memory_limit"
    elif result.reason is None and result.signal in SIGNAL_REASONS:
        result.reason = SIGNAL_REASONS[result.signal]
    return result


def _end(result: ExecutionResult, out: Outcome) -> None:
    """How the program ended: its exit code or signal, else why it never ran to an end."""
    kind, _, number = (_program_status(out) or "").partition(" ")
    if kind == "exit":
        result.exit_code = int(number)
    elif kind == "signal":
        result.signal = _signal_name(int(number))
    elif out.reason is not None:
        result.signal = "SIGKILL"  # we stopped it
    elif out.compile_status not in (None, "exit 0"):
        result.reason = "compile_error"
        if out.compile_status and out.compile_status.startswith("signal"):
            result.compile_output = f"{result.compile_output or ''}\n[compiler {out.compile_status}]\n"
    else:
        result.reason = "internal_error"


def cached_build(cached: CachedBuild, files: Artifact, lookup_ms: float, encoding: str) -> Build:
    """A build from the cache (its tar read into `files`): the compile stage's result as it was (its output), with
    the lookup as its time."""
    output = cached.compile_output
    text = base64.b64encode(output).decode() if encoding == "base64" else output.decode(errors="replace")
    result = ExecutionResult(exit_code=0, compile_output=text, compile_time_ms=lookup_ms, compile_cached=True)
    return Build(result=result, artifact=files)


def text_of(data: bytes, truncated: bool) -> str:
    """Output as text: invalid UTF-8 replaced, and a character the output cap cut in two dropped."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=not truncated)


def _lossy(data: bytes, truncated: bool) -> bool:
    """Whether the bytes are not valid UTF-8 (a character the output cap cut in two does not count)."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=not truncated)
    except UnicodeDecodeError:
        return True
    return False


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def _program_status(out: Outcome) -> str | None:
    """The program's wait status ("exit N" / "signal N"): the driver's report, else what bwrap's exit implies."""
    if out.run_status is not None or out.reason is not None or out.compile_status not in (None, "exit 0"):
        return out.run_status
    code = out.returncode
    if code is not None and code < 0:
        return f"signal {-code}"
    if code is not None and 128 < code <= 128 + 64:
        # The driver itself was killed (say the program ran kill -9 -1): bwrap reports that as 128+N.
        return f"signal {code - 128}"
    return None
