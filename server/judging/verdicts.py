"""Verdicts: a judge's view of a finished run (accepted, wrong answer, or the failure that ended it)."""

from __future__ import annotations

from enum import Enum

# Ruby's String#rstrip, which Judge0's comparison uses: ASCII whitespace and NUL, nothing else. Python's own
# rstrip() would also drop Unicode spaces (U+00A0, U+3000) and accept answers Judge0 rejects.
_RUBY_WHITESPACE = " \t\n\v\f\r\x00"


class Verdict(str, Enum):
    """The outcome of one run against its expected output (or without one, of the run alone)."""

    ACCEPTED = "accepted"
    WRONG_ANSWER = "wrong_answer"
    TIME_LIMIT = "time_limit"
    CPU_LIMIT = "cpu_limit"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    RUNTIME_ERROR = "runtime_error"
    COMPILE_ERROR = "compile_error"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"


def normalize_output(text: str) -> str:
    """Judge0's rule (isolate_job.rb `strip`): right-strip every line, then the whole text."""
    return "\n".join(line.rstrip(_RUBY_WHITESPACE) for line in text.split("\n")).rstrip(_RUBY_WHITESPACE)


def outputs_match(expected: str, actual: str) -> bool:
    return normalize_output(expected) == normalize_output(actual)


# What ended a run, by the reason the sandbox or the queue gave, as a verdict.
_BY_REASON = {
    "timeout": Verdict.TIME_LIMIT,
    "compile_timeout": Verdict.COMPILE_ERROR,
    "compile_error": Verdict.COMPILE_ERROR,
    "cpu_limit": Verdict.CPU_LIMIT,
    "memory_limit": Verdict.MEMORY_LIMIT,
    "output_limit": Verdict.OUTPUT_LIMIT,
    "runtime_error": Verdict.RUNTIME_ERROR,
    "signal": Verdict.RUNTIME_ERROR,
    "cancelled": Verdict.CANCELLED,
    "stopped": Verdict.CANCELLED,
    "shutdown": Verdict.CANCELLED,
}


def verdict_of(reason: str | None, exit_code: int | None, stdout: str, expected: str | None) -> Verdict:
    """A run that ended normally with exit 0 is judged on its output when there is an expected output; anything
    that ended it otherwise (a limit, a crash, a non-zero exit) is that failure, whatever it printed."""
    if reason is not None:
        return _BY_REASON.get(reason, Verdict.INTERNAL_ERROR)
    if exit_code != 0:
        return Verdict.RUNTIME_ERROR
    if expected is None or outputs_match(expected, stdout):
        return Verdict.ACCEPTED
    return Verdict.WRONG_ANSWER
