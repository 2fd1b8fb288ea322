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
    logged and skipped, so no listener can break the queue that emits.
    """

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns a function that removes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def emit(self, event: Event) -> None:
        # Iterate over a snapshot: a listener may unsubscribe itself while being called.
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception(
                    "event listener %r failed on %s event for job %s", listener, event.get("type"), event.get("jobId")
                )

    def __len__(self) -> int:
        return len(self._listeners)
