"""The Redis store: one queue for N instances; every state change is a Lua script, every event a stream entry."""

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

from ..errors import BackendUnavailable, Conflict, InputBacklog, NotFound, QueueFull, SettingsError
from ..events import Event, EventEmitter
from ..jobs import ExecutionResult, Job, JobStatus, now_ms
from ..redispool import command_pool
from ..stats import build_snapshot, seconds_until_a_place
from . import scripts, transitions
from .base import ControlHandler, InstanceRecord
from .records import (
    LISTED_FIELDS,
    brief_dict,
    job_from_hash,
    job_to_hash,
    listed_job_from_hash,
    record_bytes,
    result_dict,
)

logger = logging.getLogger(__name__)

_M = TypeVar("_M", bound=Callable[..., Awaitable[Any]])

# The shared stream only carries events to live readers (replay reads the per-job logs): a short history bounds
# Redis memory (entries are at most 16 KiB of output: about 160 MB in the worst case, far less in practice).
STREAM_MAXLEN = 10_000
# A job's own log: lifecycle events plus its output chunks, which the executor caps at MAX_OUTPUT_BYTES.
LOG_MAXLEN = 5_000
READ_BLOCK_MS = 2000
# The latest finishes a full queue's Retry-After is estimated from (one gap between them is the wait for a place).
RETRY_FINISHES = 100
PRIORITY_DIGITS = 19
MAX_PRIORITY = 10**PRIORITY_DIGITS - 1
# Reads and decisions of one stop or cancel at most: each retry means the job changed meanwhile (a claim, a finish).
_DECISION_ATTEMPTS = 5
# Instances in the heartbeat records at most: far more than a deployment runs; past it the stalest are dropped.
MAX_INSTANCES = 256


def _unavailable_on_redis_error(method: _M) -> _M:
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
    """What CLAIM makes of each job it pops: the claim transition run on a prototype, as status, event template
    and stamps; the script fills in the job's id and its own clock."""
    prototype = Job(language="", code="")
    template, stamps = transitions.stamped(transitions.claim(prototype, 0.0))
    return [prototype.status.value, orjson.dumps(template), orjson.dumps(stamps)]


_CLAIM_EVENT = _claim_event()


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisStore:
    """A `Store` on Redis, shared by every instance with the same URL and prefix.

    Every instance reads the shared event stream (XREAD BLOCK) and re-emits it on its local EventEmitter, so the
    hub and the waiters see the whole cluster; `_stop` and `_stdin` control messages go to the worker. Commands have
    a timeout and come from a bounded pool: an outage or a burst past the pool is a 503 within `timeout_ms`.
    """

    keeps_queue = True

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
        self._redis: Any = aioredis.Redis(connection_pool=pool)
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
        self._retention = (retention_seconds, retention_count, retention_bytes)
        self._p = prefix
        self._scripts = {
            name: self._redis.register_script(getattr(scripts, name))
            for name in ("ENQUEUE", "CLAIM", "EMIT", "FINISH", "CANCEL", "STOP", "RENEW", "EXPIRED", "RECLAIM")
        }
        self._scripts["STDIN"] = self._redis.register_script(scripts.STDIN)
        self._scripts["ACK_STDIN"] = self._redis.register_script(scripts.ACK_STDIN)
        self._scripts["HEARTBEAT"] = self._redis.register_script(scripts.HEARTBEAT)
        self._scripts["POSITIONS"] = self._redis.register_script(scripts.POSITIONS)
        self._reader: asyncio.Task[None] | None = None
        self._seen = (0, 0)
        self._seen_changed = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._started_at = now_ms()

    def _key(self, name: str) -> str:
        return f"{self._p}:{name}"

    def _keys(self, *names: str) -> list[str]:
        return [f"{self._p}:{name}" for name in names]

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._redis.ping()
            last_id = await self._stream_end()
        except RedisError as exc:
            raise SettingsError(f"REDIS_URL: cannot reach Redis ({exc})") from None
        self._reader = asyncio.create_task(self._read_events(last_id), name="conveyor-redis-events")

    async def close(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
        await self._blocking.connection_pool.disconnect()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        try:  # gone from the instances view at once, rather than when the heartbeat expires
            pipe = self._redis.pipeline(transaction=True)
            pipe.zrem(self._key("instances"), self.instance)
            pipe.hdel(self._key("instance_info"), self.instance)
            await pipe.execute()
        except (RedisError, OSError):
            pass
        # Our pools were passed in, so the clients would leave them open: close them explicitly.
        await self._blocking.aclose()
        await self._redis.aclose(close_connection_pool=self._owns_pool)

    async def abandon_queued(self, reason: str) -> None:
        return None  # queued jobs wait in Redis for the other (or the restarted) instances

    async def _stream_end(self) -> str:
        entries = await self._redis.xrevrange(self._key("events"), count=1)
        return str(entries[0][0]) if entries else "0-0"

    async def drain(self, timeout: float) -> None:
        """Wait until the reader has passed the stream's current end (our terminal events included)."""
        target = _stream_id(await self._stream_end())
        try:
            async with asyncio.timeout(timeout):
                while self._seen < target:
                    self._seen_changed.clear()
                    await self._seen_changed.wait()
        except TimeoutError:
            logger.warning("events published at shutdown did not all come back within %.1f s", timeout)

    # -- jobs ------------------------------------------------------------------------------------------------

    @_unavailable_on_redis_error
    async def enqueue(self, job: Job, *, max_queue_size: int, max_concurrent: int) -> Job:
        fields = job_to_hash(job)
        flat: list[Any] = [x for pair in fields.items() for x in pair]
        inverted = MAX_PRIORITY - min(max(job.priority, 0), MAX_PRIORITY)
        template, stamps = transitions.stamped(transitions.enqueue(job))
        accepted, queued, created = await self._scripts["ENQUEUE"](
            keys=[*self._keys("queued", "running", "stats", "events", "wake", "arrival"), *self._job_keys(job.id)[:2]],
            args=[
                self.instance,
                job.id,
                max_queue_size,
                max_concurrent,
                STREAM_MAXLEN,
                LOG_MAXLEN,
                f"{inverted:0{PRIORITY_DIGITS}d}",
                job.status.value,
                orjson.dumps(template),
                orjson.dumps(stamps),
                *flat,
            ],
        )
        if not accepted:
            retry = await self._retry_after()
            raise QueueFull(
                f"The queue holds {queued} jobs, its maximum. Try again in {retry} seconds.",
                headers={"Retry-After": str(retry)},
                retryAfter=retry,
            )
        job.status = JobStatus.QUEUED
        job.created_at = float(created)
        job.seq = 1
        return job

    def _job_keys(self, job_id: str) -> list[str]:
        return [self._key(f"job:{job_id}"), self._key(f"log:{job_id}"), self._key(f"stdin:{job_id}")]

    @_unavailable_on_redis_error
    async def claim(self, count: int, *, lease_ms: int, max_concurrent: int) -> list[tuple[Job, str | None]]:
        batch = await self._scripts["CLAIM"](
            keys=self._keys("queued", "running", "stats", "events", "recent_wait"),
            args=[self.instance, lease_ms, max_concurrent, STREAM_MAXLEN, LOG_MAXLEN, count, self._p, *_CLAIM_EVENT],
        )
        claimed = []
        for flat in batch:
            data = dict(zip(flat[::2], flat[1::2], strict=True))
            claimed.append((job_from_hash(data), data.get("stop")))
        return claimed

    @_unavailable_on_redis_error
    async def renew(self, job_ids: list[str], *, lease_ms: int) -> dict[str, str]:
        flat = await self._scripts["RENEW"](
            keys=[*self._keys("running", "heartbeat"), *(self._key(f"job:{i}") for i in job_ids)],
            args=[lease_ms, *job_ids],
        )
        return dict(zip(flat[::2], flat[1::2], strict=True))

    @_unavailable_on_redis_error
    async def reclaim(self, *, retry: bool, lease_ms: int) -> list[str]:
        now, found = await self._scripts["EXPIRED"](keys=self._keys("running", "heartbeat"), args=[lease_ms, self._p])
        handled = []
        for flat in found:
            data = dict(zip(flat[::2], flat[1::2], strict=True))
            job = job_from_hash(data)
            if await self._reclaim_one(job, data, float(now), retry=retry):
                handled.append(job.id)
        return handled

    async def _reclaim_one(self, job: Job, data: dict[str, str], now: float, *, retry: bool) -> bool:
        """A job whose worker was lost: requeued once when asked, else failed. Applied only if that worker's lease
        is still expired (it may have renewed meanwhile)."""
        attempts = int(data.get("attempts") or 0) + 1
        if transitions.retries(attempts, retry=retry, stop_requested=bool(data.get("stop"))):
            event = transitions.requeue(job)
        else:
            event = transitions.lose(job, now)
        result = orjson.dumps(result_dict(job.result)) if job.result is not None else b""
        done = await self._scripts["RECLAIM"](
            keys=[
                *self._keys("running", "queued", "finished", "stats", "events", "wake", "sizes", "retained"),
                self._key("finish_times"),
                *self._job_keys(job.id)[:2],
            ],
            args=[
                self.instance,
                job.id,
                data.get("worker", ""),
                attempts,
                job.status.value,
                result,
                orjson.dumps(event),
                now,
                STREAM_MAXLEN,
                LOG_MAXLEN,
                *self._retention,
                self._p,
                record_bytes(job),
            ],
        )
        return bool(done)

    async def wait_for_work(self, timeout: float) -> None:
        # Workers wake on a blocking pop: every enqueue and every finish pushes a token.
        await self._blocking.blpop([self._key("wake")], timeout=timeout)

    @_unavailable_on_redis_error
    async def finish(self, job: Job, status: JobStatus, result: ExecutionResult) -> bool:
        if job.status is JobStatus.RUNNING:
            started = job.started_at or job.created_at
            event = transitions.finish(job, status, result, max(now_ms(), started))
        else:  # a retry after a lost reply: the decision stands
            event = transitions.terminal_event(job)
        execution = job.execution_time_ms or 0.0
        done = await self._scripts["FINISH"](
            keys=[
                *self._keys("running", "finished", "stats", "events", "wake", "recent_exec", "finish_times"),
                *self._keys("sizes", "retained"),
                *self._job_keys(job.id),
            ],
            args=[
                self.instance,
                job.id,
                job.status.value,
                orjson.dumps(result_dict(result)),
                execution,
                STREAM_MAXLEN,
                LOG_MAXLEN,
                *self._retention,
                record_bytes(job),
                orjson.dumps(event),
                self._p,
                orjson.dumps(brief_dict(result)),
            ],
        )
        return bool(done)

    async def _read(self, job_id: str) -> tuple[Job | None, float]:
        """The job as stored and Redis's clock, in one round trip: what a decision is made from."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(self._key(f"job:{job_id}"))
        pipe.time()
        data, (secs, micros) = await pipe.execute()
        job = job_from_hash(data) if data.get("status") else None
        return job, float(secs * 1000 + micros // 1000)

    async def _stop(self, job_id: str, reason: str, mode: str) -> tuple[str, Job | None]:
        """Decide from the job as read; the script applies it only if the job is still as read, else read again
        (each miss means the job moved on: claimed, finished, requeued)."""
        for _ in range(_DECISION_ATTEMPTS):
            job, now = await self._read(job_id)
            if job is None:
                return "missing", None
            status = job.status.value
            if job.status is JobStatus.QUEUED:
                if await self._cancel_queued(job, reason, now):
                    return status, job
            elif job.status is JobStatus.RUNNING and mode == "stop":
                if await self._scripts["STOP"](
                    keys=[self._key(f"job:{job_id}"), self._key("events")], args=[job_id, reason, STREAM_MAXLEN]
                ):
                    return status, job
            else:
                return status, job
        job, _ = await self._read(job_id)  # still changing: answer with the job as it is now
        return ("missing", None) if job is None else (job.status.value, job)

    async def _cancel_queued(self, job: Job, reason: str, now: float) -> bool:
        event = transitions.cancel(job, reason, now)
        assert job.result is not None
        done = await self._scripts["CANCEL"](
            keys=[
                *self._keys("queued", "finished", "stats", "events", "sizes", "retained", "finish_times"),
                *self._job_keys(job.id),
            ],
            args=[
                self.instance,
                job.status.value,
                orjson.dumps(result_dict(job.result)),
                orjson.dumps(event),
                now,
                STREAM_MAXLEN,
                LOG_MAXLEN,
                *self._retention,
                self._p,
                record_bytes(job),
                job.id,
            ],
        )
        return bool(done)

    @_unavailable_on_redis_error
    async def cancel(self, job_id: str, reason: str) -> tuple[str, Job | None]:
        return await self._stop(job_id, reason, "cancel")

    @_unavailable_on_redis_error
    async def request_stop(self, job_id: str, reason: str) -> tuple[str, Job | None]:
        return await self._stop(job_id, reason, "stop")

    # -- events and input ------------------------------------------------------------------------------------

    @_unavailable_on_redis_error
    async def append_event(self, job: Job, event: Event) -> None:
        await self._scripts["EMIT"](
            keys=[*self._job_keys(job.id)[:2], self._key("events")],
            args=[self.instance, STREAM_MAXLEN, LOG_MAXLEN, orjson.dumps(event)],
        )

    @_unavailable_on_redis_error
    async def read_events(self, job_id: str, since: int) -> list[Event]:
        entries = await self._redis.xrange(self._key(f"log:{job_id}"))
        events = []
        for _, fields in entries:
            seq = int(fields["s"])
            if seq > since:
                event = orjson.loads(fields["e"])
                event["seq"] = seq
                events.append(event)
        return events

    @_unavailable_on_redis_error
    async def push_stdin(self, job_id: str, data: bytes | None, budget: int) -> None:
        item = "e" if data is None else "d" + data.decode("utf-8", "replace")
        keys = self._job_keys(job_id)
        reply = await self._scripts["STDIN"](
            keys=[keys[0], keys[2], self._key("events")], args=[job_id, item, budget, STREAM_MAXLEN]
        )
        if reply[0] == "missing":
            raise NotFound(f"No job with id {job_id!r}.")
        if reply[0] == "conflict":
            raise Conflict(f"Job {job_id} is {reply[1]} and does not accept input.", status=reply[1])
        if reply[0] == "full":
            raise InputBacklog(
                f"Job {job_id} has {reply[1]} bytes of input it has not read yet; at most {budget} may wait. Send "
                "more once the program reads.",
                maxBytes=budget,
                pendingBytes=int(reply[1]),
            )

    @_unavailable_on_redis_error
    async def take_stdin(self, job_id: str) -> list[bytes | None]:
        key = self._key(f"stdin:{job_id}")
        pipe = self._redis.pipeline(transaction=True)
        pipe.lrange(key, 0, -1)
        pipe.delete(key)
        items, _ = await pipe.execute()
        return [None if item == "e" else item[1:].encode() for item in items]

    @_unavailable_on_redis_error
    async def ack_stdin(self, job_id: str, size: int) -> None:
        await self._scripts["ACK_STDIN"](keys=[self._key(f"job:{job_id}")], args=[size])

    async def _read_events(self, last_id: str) -> None:
        key = self._key("events")
        while True:
            try:
                batches = await self._blocking.xread({key: last_id}, count=500, block=READ_BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # redis-py may turn our own cancellation into a connection error: never retry while closing.
                if self._closing:
                    return
                logger.warning("reading the event stream failed (%s); retrying", exc)
                await asyncio.sleep(1)
                last_id = await self._resume_from(last_id)
                continue
            for _, entries in batches:
                for entry_id, fields in entries:
                    last_id = entry_id
                    self._dispatch(fields)
                self._seen = _stream_id(last_id)
                self._seen_changed.set()

    async def _resume_from(self, last_id: str) -> str:
        """After an error: a Redis that restarted without its data has a stream that ends before our last id, and
        XREAD from there would wait forever. Start again from its end."""
        try:
            end = await self._stream_end()
        except Exception:
            return last_id
        return end if _stream_id(end) < _stream_id(last_id) else last_id

    def _dispatch(self, fields: dict[str, str]) -> None:
        try:
            event: Event = orjson.loads(fields["e"])
            kind = event["type"]
            if kind.startswith("_"):
                if self.on_control is not None:
                    self.on_control(kind, event["jobId"], event.get("reason"))
                return
            event["seq"] = int(fields["s"])
        except Exception:
            logger.exception("unreadable event stream entry %r", fields)
            return
        self.events.emit(event, here=fields.get("o") == self.instance)

    # -- reads -----------------------------------------------------------------------------------------------

    @_unavailable_on_redis_error
    async def get(self, job_id: str) -> Job | None:
        data = await self._redis.hgetall(self._key(f"job:{job_id}"))
        return job_from_hash(data) if data.get("status") else None

    @_unavailable_on_redis_error
    async def positions(self, job_ids: list[str]) -> dict[str, int | None]:
        if not job_ids:
            return {}
        places = await self._scripts["POSITIONS"](
            keys=[self._key("queued"), *(self._key(f"job:{i}") for i in job_ids)], args=[]
        )
        return {job_id: (int(p) if p is not None else None) for job_id, p in zip(job_ids, places, strict=True)}

    @_unavailable_on_redis_error
    async def recent(self, limit: int, *, whole: bool = True) -> list[Job]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrevrange(self._key("finished"), 0, limit - 1)
        pipe.zrange(self._key("running"), 0, -1)
        pipe.zrange(self._key("queued"), 0, limit - 1)
        finished, running, queued = await pipe.execute()
        ids = list(dict.fromkeys([*finished, *running, *(member[36:] for member in queued)]))
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            if whole:
                pipe.hgetall(self._key(f"job:{job_id}"))
            else:  # metadata only: a job's hash holds its code and output, megabytes each
                pipe.hmget(self._key(f"job:{job_id}"), LISTED_FIELDS)
        rows = await pipe.execute()
        if whole:
            jobs = [job_from_hash(data) for data in rows if data.get("status")]
        else:
            listed = (listed_job_from_hash(dict(zip(LISTED_FIELDS, row, strict=True))) for row in rows)
            jobs = [job for job in listed if job is not None]
        jobs.sort(key=lambda j: j.created_at)
        return jobs[-limit:]

    @_unavailable_on_redis_error
    async def listing(self, finished: int) -> list[Job]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrevrange(self._key("finished"), 0, finished - 1)
        pipe.zrange(self._key("running"), 0, -1)
        pipe.zrange(self._key("queued"), 0, -1)
        done, running, queued = await pipe.execute()
        ids = list(dict.fromkeys([*(member[36:] for member in queued), *running, *done]))
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._key(f"job:{job_id}"), LISTED_FIELDS)
        jobs = (listed_job_from_hash(dict(zip(LISTED_FIELDS, row, strict=True))) for row in await pipe.execute())
        return [job for job in jobs if job is not None]

    @_unavailable_on_redis_error
    async def heartbeat(self, *, slots: int, ttl_ms: int) -> None:
        record = orjson.dumps({"slots": slots, "startedAt": self._started_at})
        await self._scripts["HEARTBEAT"](
            keys=self._keys("instances", "instance_info"), args=[self.instance, record, ttl_ms, MAX_INSTANCES]
        )

    @_unavailable_on_redis_error
    async def instances(self) -> list[InstanceRecord]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrevrange(self._key("instances"), 0, MAX_INSTANCES - 1, withscores=True)
        pipe.hgetall(self._key("instance_info"))
        pipe.zrange(self._key("running"), 0, -1)
        beats, info, running = await pipe.execute()
        # Running jobs by the instance that claimed them, read live (a heartbeat is up to a third of a lease old).
        pipe = self._redis.pipeline(transaction=False)
        for job_id in running:
            pipe.hget(self._key(f"job:{job_id}"), "worker")
        by_worker: dict[str, list[str]] = {}
        for job_id, worker in zip(running, await pipe.execute(), strict=True):
            if worker is not None:
                by_worker.setdefault(worker, []).append(job_id)
        records: list[InstanceRecord] = []
        for name, beat in beats:
            data = orjson.loads(info[name]) if name in info else {}
            records.append(
                {
                    "name": name,
                    "slots": int(data.get("slots", 0)),
                    "running": by_worker.get(name, []),
                    "startedAt": data.get("startedAt"),
                    "lastHeartbeat": float(beat),
                    "here": name == self.instance,
                }
            )
        return records

    async def _retry_after(self) -> int:
        """Seconds until a place frees, from the cluster's latest finishes (newest first in the list)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.lrange(self._key("finish_times"), 0, RETRY_FINISHES - 1)
        pipe.time()
        finishes, (secs, micros) = await pipe.execute()
        return seconds_until_a_place((float(t) for t in finishes), secs * 1000 + micros // 1000, unit_s=0.001)

    @_unavailable_on_redis_error
    async def stats(self, *, max_concurrent: int, max_queue_size: int) -> dict[str, Any]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self._key("stats"))
        pipe.zcard(self._key("queued"))
        pipe.zcard(self._key("running"))
        pipe.lrange(self._key("recent_wait"), 0, -1)
        pipe.lrange(self._key("recent_exec"), 0, -1)
        pipe.lrange(self._key("finish_times"), 0, -1)
        pipe.time()
        raw, queued, running, waits, execs, finishes, (secs, micros) = await pipe.execute()
        now_ms = secs * 1000 + micros // 1000
        recent_finishes = sum(1 for t in finishes if float(t) >= now_ms - 60_000)
        return build_snapshot(
            {k: float(v) for k, v in raw.items()},
            waits=(float(w) for w in waits),
            execs=(float(e) for e in execs),
            jobs_per_second=recent_finishes / 60.0,
            queue_length=int(queued),
            running=int(running),
            max_concurrent=max_concurrent,
            max_queue_size=max_queue_size,
        )

    def note_rate_limited(self) -> None:
        task = asyncio.ensure_future(self._count_rate_limited())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _count_rate_limited(self) -> None:
        try:
            await self._redis.hincrby(self._key("stats"), "rate_limited", 1)
        except (RedisError, OSError):
            pass  # a statistic, not worth a failed request
