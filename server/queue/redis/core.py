"""What every part of the Redis store shares: its clients, its scripts, its key names and the limits of its keys."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ...errors import BackendUnavailable
from .. import transitions
from ..base import ControlHandler
from ..events import EventEmitter
from ..jobs import Job, now_ms
from ..records import job_from_hash
from ..redispool import command_client, command_pool, packing_in_c
from . import scripts
from .autopipeline import AutoPipeline

logger = logging.getLogger(__name__)

_M = TypeVar("_M", bound=Callable[..., Awaitable[Any]])

# The shared stream only carries events to live readers (replay reads the per-job logs): a short history bounds
# Redis memory (entries are at most 16 KiB of output: about 160 MB in the worst case, far less in practice).
STREAM_MAXLEN = 10_000
# A job's own log: lifecycle events plus its output chunks, which the executor caps at MAX_OUTPUT_BYTES.
LOG_MAXLEN = 5_000
READ_BLOCK_MS = 2000
SCRIPTS = ("ENQUEUE", "CLAIM", "EMIT", "FINISH", "CANCEL", "STOP", "RENEW", "EXPIRED", "RECLAIM")
SCRIPTS_OF_INPUT_AND_VIEWS = ("STDIN", "ACK_STDIN", "HEARTBEAT", "POSITIONS")


def unavailable_on_redis_error(method: _M) -> _M:
    """A Redis outage, timeout or exhausted pool becomes a clear 503 for the client, never a traceback and a 500."""

    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except (RedisError, OSError) as exc:
            logger.warning("Redis unavailable: %s", exc)
            raise BackendUnavailable("The job store is unreachable; try again shortly.", retryAfter=5) from None

    return wrapper  # type: ignore[return-value]


def _claim_event() -> list[Any]:
    """What a claim makes of each job it pops: the claim transition run on a prototype, as status, event template
    and stamps; the script fills in the job's id and its own clock."""
    prototype = Job(language="", code="")
    template, stamps = transitions.stamped(transitions.claim(prototype, 0.0))
    return [prototype.status.value, orjson.dumps(template), orjson.dumps(stamps)]


CLAIM_EVENT = _claim_event()


def claimed_jobs(batch: list[list[str]]) -> list[tuple[Job, str | None]]:
    """The hashes a claim returned, as jobs, each with its recorded stop request, if any."""
    claimed = []
    for flat in batch:
        data = dict(zip(flat[::2], flat[1::2], strict=True))
        claimed.append((job_from_hash(data), data.get("stop")))
    return claimed


class RedisCore:
    """The clients, scripts and keys of one `RedisStore`; the store's parts (decisions, reads) build on it."""

    def __init__(
        self,
        url: str,
        *,
        retention_seconds: int = 3600,
        retention_count: int = 10_000,
        retention_bytes: int = 256 * 1024 * 1024,
        prefix: str = "conveyor",
        pool_size: int = 64,
        timeout_ms: int = 3000,
        events: EventEmitter | None = None,
        pool: Any = None,
    ) -> None:
        self.events = events if events is not None else EventEmitter()
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.on_control: ControlHandler | None = None
        timeout_s = timeout_ms / 1000.0
        # The instance's shared pool when given (its owner closes it), else one of our own. The worker retries
        # what is idempotent (FINISH, ENQUEUE of the same id); everything else is a 503 the client may retry.
        self._owns_pool = pool is None
        if pool is None:
            pool = command_pool(url, pool_size=pool_size, timeout_ms=timeout_ms)
        # Typed loosely: redis-py's stubs union sync/async and bytes/str returns for every command.
        self._redis: Any = command_client(pool)
        # Blocking reads (XREAD BLOCK, BLPOP) get their own client, with room for the block in the timeout
        # (a plain pool: two users, the event reader and the idle claim loop; cancelling a wait for a pooled
        # connection of a BlockingConnectionPool was seen to hang).
        self._blocking: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=READ_BLOCK_MS / 1000.0 + timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
        )
        packing_in_c(self._blocking.connection_pool)
        self._retention = (retention_seconds, retention_count, retention_bytes)
        self._p = prefix
        self._scripts = {
            name: self._redis.register_script(getattr(scripts, name)) for name in SCRIPTS + SCRIPTS_OF_INPUT_AND_VIEWS
        }
        # Submissions arrive together (a burst, a batch): their ENQUEUEs share round trips.
        self._enqueues = AutoPipeline(self._redis, self._scripts["ENQUEUE"])
        self._started_at = now_ms()
        self._reader: asyncio.Task[None] | None = None
        self._seen = (0, 0)
        self._seen_changed = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False

    def _key(self, name: str) -> str:
        return f"{self._p}:{name}"

    def _keys(self, *names: str) -> list[str]:
        return [f"{self._p}:{name}" for name in names]

    def _job_keys(self, job_id: str) -> list[str]:
        return [self._key(f"job:{job_id}"), self._key(f"log:{job_id}"), self._key(f"stdin:{job_id}")]

    async def _read(self, job_id: str) -> tuple[Job | None, float]:
        """The job as stored and Redis's clock, in one round trip: what a decision is made from."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(self._key(f"job:{job_id}"))
        pipe.time()
        data, (secs, micros) = await pipe.execute()
        job = job_from_hash(data) if data.get("status") else None
        return job, float(secs * 1000 + micros // 1000)
