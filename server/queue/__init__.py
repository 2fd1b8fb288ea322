"""The job queue: one worker (`Worker`) over a store, embedded (default) or Redis (chosen by REDIS_URL)."""

from __future__ import annotations

from typing import Any

from ..settings import Settings
from .base import QueueBackend, Store
from .events import EventEmitter
from .jobs import Executor
from .memory import MemoryStore
from .worker.worker import Worker

__all__ = ["MemoryStore", "QueueBackend", "Store", "Worker", "create_queue", "create_store"]


def create_store(settings: Settings, *, events: EventEmitter | None = None, redis_pool: Any = None) -> Store:
    """The store the settings ask for; on Redis, commands go through `redis_pool` (the instance's) when given."""
    retention: dict[str, int] = {
        "retention_seconds": settings.job_retention_seconds,
        "retention_count": settings.job_retention_count,
        "retention_bytes": settings.job_retention_max_mb * 1024 * 1024,
    }
    if settings.redis_url:
        # Imported lazily: the redis client is an optional extra, and the embedded default needs none of it.
        from .redis.store import RedisStore

        return RedisStore(
            settings.redis_url,
            prefix=settings.redis_prefix,
            pool_size=settings.redis_pool_size,
            timeout_ms=settings.redis_timeout_ms,
            events=events,
            pool=redis_pool,
            **retention,
        )
    if settings.durable:
        from .durable import DurableStore, Journal

        journal = Journal(
            settings.data_path,
            retention_seconds=settings.job_retention_seconds,
            max_bytes=settings.data_max_mb * 1024 * 1024,
        )
        return DurableStore(
            journal,
            events=events,
            retention_seconds=settings.job_retention_seconds,
            retention_count=settings.job_retention_count,
            retention_bytes=retention["retention_bytes"],
        )
    return MemoryStore(
        events=events,
        retention_seconds=settings.job_retention_seconds,
        retention_count=settings.job_retention_count,
        retention_bytes=retention["retention_bytes"],
    )


def create_queue(
    settings: Settings, *, executor: Executor, events: EventEmitter | None = None, redis_pool: Any = None
) -> QueueBackend:
    """The worker over the store the settings ask for. The executor's own limits come first; the queue's timeout is
    a backstop that also covers compilation, so it gets the compile timeout plus a second of grace."""
    return Worker(
        create_store(settings, events=events, redis_pool=redis_pool),
        executor=executor,
        max_concurrent=settings.max_concurrent_jobs,
        max_queue_size=settings.max_queue_size,
        # Embedded, this process runs every job; on Redis, WORKER_SLOTS of the cluster-wide MAX_CONCURRENT_JOBS.
        slots=settings.worker_slots if settings.redis_url else settings.max_concurrent_jobs,
        lease_timeout_ms=settings.lease_timeout_ms,
        retry_lost_jobs=settings.retry_lost_jobs,
        timeout_grace_ms=settings.compile_timeout_ms + 1000,
        max_stdin_bytes=settings.max_stdin_bytes,
    )
