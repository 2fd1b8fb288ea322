"""Events: the emitter the queue announces lifecycle changes on; the hub, metrics and dashboard listen."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# Events are plain dicts already in wire shape: {"type": ..., "jobId": ..., "seq": ..., ...}.
Event = dict[str, Any]
Listener = Callable[[Event], None]


class EventEmitter:
    """Synchronous fan-out to listeners.

    Listeners are plain functions that must not block (they enqueue work of their own). A listener that raises is
    logged and skipped, so no listener can break the queue that emits. On Redis every instance sees every event of
    the cluster; `here` marks those this instance caused, so a counter that must count each job once across the
    cluster (Prometheus) subscribes with `here_only=True`.
    """

    def __init__(self) -> None:
        self._listeners: list[tuple[Listener, bool]] = []

    def subscribe(self, listener: Listener, *, here_only: bool = False) -> Callable[[], None]:
        """Add a listener; returns a function that removes it."""
        entry = (listener, here_only)
        self._listeners.append(entry)

        def unsubscribe() -> None:
            if entry in self._listeners:
                self._listeners.remove(entry)

        return unsubscribe

    def emit(self, event: Event, *, here: bool = True) -> None:
        # Iterate over a snapshot: a listener may unsubscribe itself while being called.
        for listener, here_only in tuple(self._listeners):
            if here_only and not here:
                continue
            try:
                listener(event)
            except Exception:
                logger.exception(
                    "event listener %r failed on %s event for job %s", listener, event.get("type"), event.get("jobId")
                )

    def __len__(self) -> int:
        return len(self._listeners)
