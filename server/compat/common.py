"""What the Piston and Judge0 APIs share: submitting a job as a native one, and reading a result's accounting."""

from __future__ import annotations

import signal

from ..queue.jobs import ExecutionResult


def accounting(result: ExecutionResult, name: str) -> float | None:
    """`cpu_time_ms`, `memory_peak_bytes`, `compile_cpu_time_ms`, `compile_memory_peak_bytes`: the sandbox's
    accounting, which comes with the sandbox hardening issue; until then these read as null."""
    value = getattr(result, name, None)
    return value if isinstance(value, int | float) else None


def signal_number(name: str | None) -> int | None:
    """`SIGSEGV` -> 11; None for no or an unknown signal."""
    if name is None:
        return None
    try:
        return int(signal.Signals[name])
    except KeyError:
        return None
