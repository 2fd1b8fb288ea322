"""The job queue: one contract, an embedded backend (default) and a Redis backend chosen by REDIS_URL."""

from __future__ import annotations

from ..events import EventEmitter
from ..jobs import Executor
from ..settings import Settings
from .base import QueueBackend
from .memory import MemoryQueue

__all__ = ["MemoryQueue", "QueueBackend", "create_queue"]


def create_queue(settings: Settings, *, executor: Executor, events: EventEmitter | None = None) -> QueueBackend:
    """The backend the settings ask for. The executor's own limits come first; the queue's timeout is a backstop
    that also covers compilation, so it gets the compile timeout plus a second of grace."""
    grace_ms = settings.compile_timeout_ms + 1000
    return MemoryQueue(
        executor=executor,
        max_concurrent=settings.max_concurrent_jobs,
        max_queue_size=settings.max_queue_size,
        retention_seconds=settings.job_retention_seconds,
        retention_count=settings.job_retention_count,
        timeout_grace_ms=grace_ms,
        events=events,
    )
