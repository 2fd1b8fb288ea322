"""Verdicts: Judge0's output comparison, and the failure that ended a run taking precedence over its output."""

from __future__ import annotations

import pytest

from server.judging.verdicts import Verdict, normalize_output, outputs_match, verdict_of


@pytest.mark.parametrize(
    ("expected", "actual", "match"),
    [
        ("3\n", "3", True),
        ("1 2 3", "1 2 3   \n\n\n", True),
        ("a\nb", "a  \t\nb\r\n", True),  # trailing spaces and CRLF per line
        ("a\n\nb", "a\nb", False),  # blank lines inside the text matter
        ("  a", "a", False),  # leading spaces matter
        ("a", "a\x00", True),  # Ruby's rstrip drops NUL too
        ("a", "a\u00a0", False),  # but not Unicode spaces
        ("", "\n \n", True),
        ("1", "2", False),
    ],
)
def test_judge0_comparison(expected: str, actual: str, match: bool) -> None:
    assert outputs_match(expected, actual) is match


def test_normalize_keeps_inner_structure() -> None:
    assert normalize_output("x  \n y \n\n") == "x\n y"


@pytest.mark.parametrize(
    ("reason", "exit_code", "stdout", "expected", "verdict"),
    [
        (None, 0, "42\n", "42", Verdict.ACCEPTED),
        (None, 0, "41\n", "42", Verdict.WRONG_ANSWER),
        (None, 0, "anything", None, Verdict.ACCEPTED),
        (None, 1, "42", "42", Verdict.RUNTIME_ERROR),  # right answer, but it crashed
        ("runtime_error", 1, "", None, Verdict.RUNTIME_ERROR),
        ("signal", None, "", "x", Verdict.RUNTIME_ERROR),
        ("timeout", None, "42", "42", Verdict.TIME_LIMIT),
        ("cpu_limit", None, "", "42", Verdict.CPU_LIMIT),
        ("memory_limit", None, "", "42", Verdict.MEMORY_LIMIT),
        ("output_limit", None, "", "42", Verdict.OUTPUT_LIMIT),
        ("compile_error", None, "", "42", Verdict.COMPILE_ERROR),
        ("compile_timeout", None, "", "42", Verdict.COMPILE_ERROR),
        ("stopped", None, "", "42", Verdict.CANCELLED),
        ("worker_lost", None, "", "42", Verdict.INTERNAL_ERROR),
        ("internal_error", None, "", None, Verdict.INTERNAL_ERROR),
    ],
)
def test_verdict_of(
    reason: str | None, exit_code: int | None, stdout: str, expected: str | None, verdict: Verdict
) -> None:
    assert verdict_of(reason, exit_code, stdout, expected) is verdict
