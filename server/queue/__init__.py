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
    if settings.redis_url:
        # Imported lazily: the redis client is an optional extra, and the embedded default needs none of it.
        from .redis import RedisQueue

        return RedisQueue(
            settings.redis_url,
            executor=executor,
            max_concurrent=settings.max_concurrent_jobs,
            max_queue_size=settings.max_queue_size,
            worker_slots=settings.worker_slots,
            lease_timeout_ms=settings.lease_timeout_ms,
            retry_lost_jobs=settings.retry_lost_jobs,
            retention_seconds=settings.job_retention_seconds,
            retention_count=settings.job_retention_count,
            timeout_grace_ms=grace_ms,
            prefix=settings.redis_prefix,
            events=events,
        )
    return MemoryQueue(
        executor=executor,
        max_concurrent=settings.max_concurrent_jobs,
        max_queue_size=settings.max_queue_size,
        retention_seconds=settings.job_retention_seconds,
        retention_count=settings.job_retention_count,
        timeout_grace_ms=grace_ms,
        events=events,
    )
