"""Judge0's statuses for a finished job: isolate_job.rb's mapping of what ended the run, and its attributes."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ...judging.verdicts import outputs_match
from ...queue.jobs import ExecutionResult, Job, JobStatus
from ..common import accounting, signal_number
from .attributes import Extras

# Status ids (app/enumerations/status.rb) and the runtime errors isolate's signals map to.
QUEUED, PROCESSING, ACCEPTED, WRONG_ANSWER, TLE, COMPILE_ERROR = 1, 2, 3, 4, 5, 6
SIGXFSZ_ERROR, NZEC, OTHER, INTERNAL = 8, 11, 12, 13
_BY_SIGNAL = {11: 7, 25: 8, 8: 9, 6: 10}
_VERDICT_STATUS = {
    "accepted": ACCEPTED,
    "wrong_answer": WRONG_ANSWER,
    "time_limit": TLE,
    "cpu_limit": TLE,
    "compile_error": COMPILE_ERROR,
    "output_limit": SIGXFSZ_ERROR,
    "runtime_error": NZEC,
    "memory_limit": OTHER,
}


@dataclass(slots=True)
class Outcome:
    """The result attributes of a submission."""

    status: int
    stdout: str | None = None
    stderr: str | None = None
    compile_output: str | None = None
    time: float | None = None
    wall_time: float | None = None
    memory: float | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    message: str | None = None
    lossy: bool = False


def outcome(job: Job, extras: Extras) -> Outcome:
    """isolate_job.rb's statuses and attributes for a job: TLE, compile error, signals 11/25/8/6 to 7/8/9/10,
    NZEC, Internal Error, and Accepted or Wrong Answer by Judge0's comparison."""
    if job.status is JobStatus.QUEUED:
        return Outcome(QUEUED)
    if job.status is JobStatus.RUNNING:
        return Outcome(PROCESSING)
    result = job.result or ExecutionResult()
    if result.reason in ("compile_error", "compile_timeout"):
        text = "Compilation time limit exceeded." if result.reason == "compile_timeout" else result.compile_output
        return Outcome(COMPILE_ERROR, compile_output=text or None)
    if job.tests is not None and result.tests:
        return _tests_outcome(job, result)
    return _run_outcome(job, result, extras)


def _run_outcome(job: Job, result: ExecutionResult, extras: Extras) -> Outcome:
    """One run's attributes, its status by isolate's words or Judge0's comparison."""
    stdout, stderr = result.stdout, result.stderr
    if extras.redirect_stderr_to_stdout:
        stdout, stderr = stdout + stderr, ""
    cpu = accounting(result, "cpu_time_ms")
    memory = accounting(result, "memory_peak_bytes")
    found = Outcome(
        status=ACCEPTED,
        stdout=stdout or None,
        stderr=stderr or None,
        compile_output=result.compile_output or None,
        time=cpu / 1000 if cpu is not None else None,
        wall_time=job.execution_time_ms / 1000 if job.execution_time_ms is not None else None,
        memory=memory // 1024 if memory is not None else None,
        exit_code=result.exit_code if result.exit_code is not None else 0,
        exit_signal=signal_number(result.signal),
        lossy=result.stdout_lossy or result.stderr_lossy,
    )
    found.status, found.message = _status(result, job.expected_output, stdout)
    return found


def listed_status(job: Job, extras: Extras) -> int:
    """The status of a job as a listing reads it (no output, expected output or tests: server/queue/records.py):
    the result's verdict tells what the output would have."""
    status = outcome(job, extras).status
    verdict = job.result.verdict if job.result is not None else None
    if status == ACCEPTED and verdict is not None and verdict != "accepted":
        return _VERDICT_STATUS.get(verdict, INTERNAL)
    return status


def _status(result: ExecutionResult, expected: str | None, stdout: str) -> tuple[int, str | None]:
    number = signal_number(result.signal)
    if result.reason == "timeout":
        return TLE, "Time limit exceeded (wall clock)"
    if result.reason == "cpu_limit":
        return TLE, "Time limit exceeded"
    if result.reason == "output_limit":  # isolate's file size limit on the stdout file: SIGXFSZ
        return SIGXFSZ_ERROR, "Caught fatal signal 25"
    if number is not None:
        return _BY_SIGNAL.get(number, OTHER), f"Caught fatal signal {number}"
    if result.exit_code is None:
        return INTERNAL, f"Internal error: {result.reason or 'no exit status'}"
    if result.exit_code != 0:
        return NZEC, f"Exited with error status {result.exit_code}"
    if expected is None or outputs_match(expected, stdout):
        return ACCEPTED, None
    return WRONG_ANSWER, None


def _tests_outcome(job: Job, result: ExecutionResult) -> Outcome:
    """number_of_runs: Judge0 stops at the first run that is not accepted and averages time and memory."""
    ran = []
    for test in result.tests or []:
        ran.append(test)
        if test.get("verdict") != "accepted":
            break
    last = ran[-1]
    cpu, wall, memory = (_mean(ran, key) for key in ("cpuTimeMs", "timeMs", "memoryPeakBytes"))
    status = _VERDICT_STATUS.get(str(last.get("verdict")), INTERNAL)
    number = signal_number(last.get("signal"))
    if number is not None:
        status = _BY_SIGNAL.get(number, OTHER)
    return Outcome(
        status=status,
        stdout=last.get("stdout") or None,
        stderr=last.get("stderr") or None,
        compile_output=result.compile_output or None,
        time=cpu / 1000 if cpu is not None else None,
        wall_time=wall / 1000 if wall is not None else None,
        memory=memory // 1024 if memory is not None else None,
        exit_code=last.get("exitCode") if last.get("exitCode") is not None else 0,
        exit_signal=number,
    )


def _mean(tests: list[dict[str, Any]], key: str) -> float | None:
    """The mean of a numeric field over the tests that have it."""
    values = [t[key] for t in tests if isinstance(t.get(key), int | float)]
    return sum(values) / len(values) if values else None


def decimal_text(seconds: float | Decimal | None) -> str | None:
    """A Rails decimal column as JSON: a string, milliseconds at most ("0.002", "1.5", "5.0")."""
    if seconds is None:
        return None
    text = f"{Decimal(str(seconds)).quantize(Decimal('0.001')):f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
