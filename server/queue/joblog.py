"""The job log: one info line per job submitted (its user and door) and per job finished (its figures)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar

from .events import Event, EventEmitter
from .jobs import TERMINAL_TYPES, Job

logger = logging.getLogger(__name__)

# The front door of the request being served (set by server/doors/accesslog.py; a WebSocket's for its whole life).
DOOR: ContextVar[str] = ContextVar("door", default="-")
# Jobs whose submitter is remembered until they finish (per instance).
MAX_SUBMITTERS = 10_000

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


def user_of(owner: str) -> str:
    """The user a job's owner names: the key's user, `anonymous` for an owner token, `-` when unknown."""
    if owner.startswith("key:"):
        return owner.removeprefix("key:")
    return "anonymous" if owner else "-"


class Submitters:
    """Who submitted the jobs this instance accepted and through which door, until each finishes: the job log's
    finished line names them. At most `size` jobs (the oldest forgotten first: their finish is logged without)."""

    def __init__(self, size: int = MAX_SUBMITTERS) -> None:
        self.size = size
        self._who: OrderedDict[str, str] = OrderedDict()

    def remember(self, job: Job) -> None:
        """Before the job is queued (it may finish before its submission returns)."""
        self._who[job.id] = f"user={user_of(job.owner)} door={DOOR.get()}"
        while len(self._who) > self.size:
            self._who.popitem(last=False)

    def submitted(self, job: Job, *, log: logging.Logger = logger) -> None:
        """Once queued: `job <id> submitted language=<l> user=<u> door=<d>`."""
        who = self._who.get(job.id) or f"user={user_of(job.owner)} door={DOOR.get()}"
        log.info("job %s submitted language=%s %s", job.id, job.language, who)

    def pop(self, job_id: object) -> str | None:
        """Forget a job (finished, or refused): who submitted it, if remembered."""
        return self._who.pop(job_id, None) if isinstance(job_id, str) else None

    def __len__(self) -> int:
        return len(self._who)


def log_finished_jobs(
    events: EventEmitter, *, log: logging.Logger = logger, submitters: Submitters | None = None
) -> Callable[[], None]:
    """Subscribe the job log to `events`; returns the unsubscribe function.

    In Redis mode every instance re-emits the cluster's event stream, so each instance logs every finish (with its
    user and door on the instance that accepted the job).
    """

    def on_event(event: Event) -> None:
        who = submitters.pop(event.get("jobId")) if submitters is not None else None
        if log.isEnabledFor(logging.INFO):
            log.info("%s%s", format_finished(event), f" {who}" if who else "")

    return events.subscribe(on_event, types=TERMINAL_TYPES)
