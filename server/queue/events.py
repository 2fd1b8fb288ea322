"""Events: the emitter the queue announces lifecycle changes on; the hub, metrics and dashboard listen."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# Events are plain dicts already in wire shape: {"type": ..., "jobId": ..., "seq": ..., ...}.
Event = dict[str, Any]
Listener = Callable[[Event], None]


# What the queue topic (anyone's dashboard) may carry of each event: lifecycle metadata, field by field. Anything
# else (output, a test's stdout/stderr/stdin, a field added later) stays with the job's own watchers, who may read it.
_LIFECYCLE = frozenset({"type", "jobId", "seq"})
_FINAL = frozenset(
    {
        "exitCode",
        "signal",
        "reason",
        "truncated",
        "waitTimeMs",
        "executionTimeMs",
        "compileTimeMs",
        "cpuTimeMs",
        "memoryPeakBytes",
        "compileCpuTimeMs",
        "compileMemoryPeakBytes",
        "language",
    }
)
TOPIC_FIELDS: dict[str, frozenset[str]] = {
    "queued": _LIFECYCLE | {"language", "priority", "createdAt", "retried"},
    "running": _LIFECYCLE | {"startedAt", "waitTimeMs"},
    **{status: _LIFECYCLE | _FINAL for status in ("completed", "failed", "timeout", "cancelled")},
}


def topic_event(event: Event) -> Event | None:
    """The event as the queue topic shows it (its allowed fields), or None when the topic does not carry it."""
    fields = TOPIC_FIELDS.get(event["type"])
    if fields is None:
        return None
    return {key: value for key, value in event.items() if key in fields}


class EventEmitter:
    """Synchronous fan-out to listeners.

    Listeners are plain functions that must not block (they enqueue work of their own). A listener that raises is
    logged and skipped, so no listener can break the queue that emits. On Redis every instance sees every event of
    the cluster; `here` marks those this instance caused, so a counter that must count each job once across the
    cluster (Prometheus) subscribes with `here_only=True`. A listener may ask for some event types only (`types`).
    """

    def __init__(self) -> None:
        self._listeners: list[tuple[Listener, bool, frozenset[str] | None]] = []
        # What emit() iterates, per event type, for events caused here and elsewhere: the listeners that take it,
        # worked out at the first such event after the listeners change, not at every event (a job makes three),
        # so a listener may unsubscribe itself while being called.
        self._here: dict[str, tuple[Listener, ...]] = {}
        self._elsewhere: dict[str, tuple[Listener, ...]] = {}

    def subscribe(
        self, listener: Listener, *, here_only: bool = False, types: frozenset[str] | None = None
    ) -> Callable[[], None]:
        """Add a listener (of every event, or of `types` only); returns a function that removes it."""
        entry = (listener, here_only, types)
        self._listeners.append(entry)
        self._here, self._elsewhere = {}, {}

        def unsubscribe() -> None:
            if entry in self._listeners:
                self._listeners.remove(entry)
                self._here, self._elsewhere = {}, {}

        return unsubscribe

    def emit(self, event: Event, *, here: bool = True) -> None:
        kind = event["type"]
        listeners = (self._here if here else self._elsewhere).get(kind)
        if listeners is None:
            listeners = self._route(here, kind)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                logger.exception(
                    "event listener %r failed on %s event for job %s", listener, event.get("type"), event.get("jobId")
                )

    def _route(self, here: bool, kind: str) -> tuple[Listener, ...]:
        listeners = tuple(
            listener
            for listener, here_only, types in self._listeners
            if (here or not here_only) and (types is None or kind in types)
        )
        routes = self._here if here else self._elsewhere
        # Bounded: a few event types (a stray one from a newer instance on Redis adds one entry).
        if len(routes) < 64:
            routes[kind] = listeners
        return listeners

    def __len__(self) -> int:
        return len(self._listeners)
