"""The Redis store: one queue for N instances; every state change is a Lua script, every event a stream entry."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from redis.exceptions import RedisError

from ...errors import Conflict, InputBacklog, NotFound, QueueFull, SettingsError
from .. import transitions
from ..base import InstanceRecord
from ..events import Event
from ..jobs import ExecutionResult, Job, JobStatus, now_ms
from ..records import brief_dict, job_to_hash, record_bytes, result_dict
from ..worker.handoff import Finished
from .core import (
    CLAIM_EVENT,
    LOG_MAXLEN,
    READ_BLOCK_MS,
    STREAM_MAXLEN,
    claimed_jobs,
    unavailable_on_redis_error,
)
from .decisions import RedisDecisions
from .reads import RedisReads

logger = logging.getLogger(__name__)

PRIORITY_DIGITS = 19
MAX_PRIORITY = 10**PRIORITY_DIGITS - 1
# Instances in the heartbeat records at most: far more than a deployment runs; past it the stalest are dropped.
MAX_INSTANCES = 256


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisStore(RedisDecisions, RedisReads):
    """A `Store` on Redis, shared by every instance with the same URL and prefix.

    Every instance reads the shared event stream (XREAD BLOCK) and re-emits it on its local EventEmitter, so the
    hub and the waiters see the whole cluster; `_stop` and `_stdin` control messages go to the worker. Commands have
    a timeout and come from a bounded pool: an outage or a burst past the pool is a 503 within `timeout_ms`.
    """

    keeps_queue = True

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

    @unavailable_on_redis_error
    async def enqueue(self, job: Job, *, max_queue_size: int, max_concurrent: int) -> Job:
        fields = job_to_hash(job)
        flat: list[Any] = [x for pair in fields.items() for x in pair]
        inverted = MAX_PRIORITY - min(max(job.priority, 0), MAX_PRIORITY)
        template, stamps = transitions.stamped(transitions.enqueue(job))
        accepted, queued, created = await self._enqueues(
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

    @unavailable_on_redis_error
    async def claim(self, count: int, *, lease_ms: int, max_concurrent: int) -> list[tuple[Job, str | None]]:
        batch = await self._scripts["CLAIM"](
            keys=self._keys("queued", "running", "stats", "events", "recent_wait", "wake"),
            args=[self.instance, lease_ms, max_concurrent, STREAM_MAXLEN, LOG_MAXLEN, count, self._p, *CLAIM_EVENT],
        )
        return claimed_jobs(batch)

    @unavailable_on_redis_error
    async def renew(self, job_ids: list[str], *, lease_ms: int) -> dict[str, str]:
        flat = await self._scripts["RENEW"](
            keys=[*self._keys("running", "heartbeat"), *(self._key(f"job:{i}") for i in job_ids)],
            args=[lease_ms, *job_ids],
        )
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def wait_for_work(self, timeout: float) -> None:
        # Workers wake on a blocking pop: every enqueue and every finish pushes a token.
        await self._blocking.blpop([self._key("wake")], timeout=timeout)

    @unavailable_on_redis_error
    async def finish(self, job: Job, status: JobStatus, result: ExecutionResult) -> bool:
        done, _ = await self.finish_and_claim([(job, status, result)], claim=0, lease_ms=0, max_concurrent=0)
        return done[0]

    @unavailable_on_redis_error
    async def finish_and_claim(
        self, finished: list[Finished], *, claim: int, lease_ms: int, max_concurrent: int
    ) -> tuple[list[bool], list[tuple[Job, str | None]]]:
        """Finish several jobs of this instance in one script call, then claim up to `claim` queued jobs with the
        slots they freed (the global `max_concurrent` bound checked as CLAIM does). Returns whether each finish
        was applied (as `finish`) and the jobs claimed. Retrying after a lost reply finishes nothing twice, but
        the jobs that reply claimed are lost to their lease, like a lost CLAIM reply: retry with `claim=0`."""
        keys = self._keys("running", "finished", "stats", "events", "wake", "recent_exec", "finish_times")
        keys += self._keys("sizes", "retained", "queued", "recent_wait")
        args: list[Any] = [self.instance, STREAM_MAXLEN, LOG_MAXLEN, *self._retention, self._p]
        args += [claim, lease_ms, max_concurrent, *CLAIM_EVENT]
        for job, status, result in finished:
            keys += self._job_keys(job.id)
            args += _finish_args(job, status, result)
        flags, batch = await self._scripts["FINISH"](keys=keys, args=args)
        return [bool(flag) for flag in flags], claimed_jobs(batch)

    # -- events and input ------------------------------------------------------------------------------------

    @unavailable_on_redis_error
    async def append_event(self, job: Job, event: Event) -> None:
        await self._scripts["EMIT"](
            keys=[*self._job_keys(job.id)[:2], self._key("events")],
            args=[self.instance, STREAM_MAXLEN, LOG_MAXLEN, orjson.dumps(event)],
        )

    @unavailable_on_redis_error
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

    @unavailable_on_redis_error
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

    @unavailable_on_redis_error
    async def take_stdin(self, job_id: str) -> list[bytes | None]:
        key = self._key(f"stdin:{job_id}")
        pipe = self._redis.pipeline(transaction=True)
        pipe.lrange(key, 0, -1)
        pipe.delete(key)
        items, _ = await pipe.execute()
        return [None if item == "e" else item[1:].encode() for item in items]

    @unavailable_on_redis_error
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

    @unavailable_on_redis_error
    async def heartbeat(self, *, slots: int, ttl_ms: int) -> None:
        record = orjson.dumps({"slots": slots, "startedAt": self._started_at})
        await self._scripts["HEARTBEAT"](
            keys=self._keys("instances", "instance_info"), args=[self.instance, record, ttl_ms, MAX_INSTANCES]
        )

    @unavailable_on_redis_error
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

    def note_rate_limited(self) -> None:
        task = asyncio.ensure_future(self._count_rate_limited())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _count_rate_limited(self) -> None:
        try:
            await self._redis.hincrby(self._key("stats"), "rate_limited", 1)
        except (RedisError, OSError):
            pass  # a statistic, not worth a failed request


def _finish_args(job: Job, status: JobStatus, result: ExecutionResult) -> list[Any]:
    """FINISH's 7 arguments for one job: the decision (status, result, terminal event) made here, in Python."""
    if job.status is JobStatus.RUNNING:
        started = job.started_at or job.created_at
        event = transitions.finish(job, status, result, max(now_ms(), started))
    else:  # a retry after a lost reply: the decision stands
        event = transitions.terminal_event(job)
    return [
        job.id,
        job.status.value,
        orjson.dumps(result_dict(result)),
        job.execution_time_ms or 0.0,
        record_bytes(job),
        orjson.dumps(event),
        orjson.dumps(brief_dict(result)),
    ]
