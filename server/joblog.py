"""The job log: one info line per finished job, written by a listener on the queue's event emitter."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .events import Event, EventEmitter
from .jobs import TERMINAL_TYPES

logger = logging.getLogger(__name__)

# Figures a terminal event may carry, in the order they are logged: (event field, log label, unit).
_FIGURES = (
    ("waitTimeMs", "wait", "ms"),
    ("compileTimeMs", "compile", "ms"),
    ("executionTimeMs", "exec", "ms"),
    ("cpuTimeMs", "cpu", "ms"),
    ("memoryPeakBytes", "memory", "B"),
)


def format_finished(event: Event) -> str:
    """`job <id> <status> language=<l> reason=<r> wait=<n>ms ...`; figures the event lacks are left out."""
    parts = [
        f"job {event.get('jobId')} {event.get('type')}",
        f"language={event.get('language') or '-'}",
        f"reason={event.get('reason') or '-'}",
    ]
    exit_code = event.get("exitCode")
    if exit_code is not None:
        parts.append(f"exit={exit_code}")
    for name, label, unit in _FIGURES:
        value = event.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{label}={value:.0f}{unit}")
    return " ".join(parts)


def log_finished_jobs(events: EventEmitter, *, log: logging.Logger = logger) -> Callable[[], None]:
    """Subscribe the job log to `events`; returns the unsubscribe function.

    In Redis mode every instance re-emits the cluster's event stream, so each instance logs every finish.
    """

    def on_event(event: Event) -> None:
        if event.get("type") in TERMINAL_TYPES and log.isEnabledFor(logging.INFO):
            log.info("%s", format_finished(event))

    return events.subscribe(on_event)
