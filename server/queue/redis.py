"""The Redis backend: one global queue for N instances; state changes are Lua scripts, events a Redis Stream."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..errors import BackendUnavailable, Conflict, NotFound, QueueFull, SettingsError, ShuttingDown
from ..events import Event, EventEmitter
from ..jobs import ExecutionResult, Executor, Job, JobIO, JobStatus, Stream
from ..stats import build_snapshot
from . import scripts
from .base import OutputCoalescer, execute
from .records import job_from_hash, result_dict

logger = logging.getLogger(__name__)

_M = TypeVar("_M", bound=Callable[..., Awaitable[Any]])

STREAM_MAXLEN = 100_000
WAKE_TIMEOUT_S = 1.0  # BLPOP's bound: a missed wake-up costs at most this, it is not a polling interval
READ_BLOCK_MS = 5000
TERMINAL = frozenset(s.value for s in JobStatus if s.finished)


def _unavailable_on_redis_error(method: _M) -> _M:
    """A Redis outage becomes a clear 503 for the client, not a traceback and a 500."""

    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except RedisError as exc:
            logger.error("Redis unavailable: %s", exc)
            raise BackendUnavailable("The job store is unreachable; try again shortly.", retryAfter=5) from None

    return wrapper  # type: ignore[return-value]


class RedisQueue:
    """A `QueueBackend` on Redis. This instance runs at most `worker_slots` jobs; `max_concurrent` is global.

    Every instance reads the one event stream (XREAD BLOCK) and re-emits it on its local EventEmitter, so the hub
    and the metrics see the whole cluster. Control messages (stop, stdin) travel on the same stream to the
    instance that runs the job. A running job holds a lease that its instance renews; any instance's sweeper
    fails (or requeues once) jobs whose lease expired.
    """

    def __init__(
        self,
        url: str,
        *,
        executor: Executor,
        max_concurrent: int = 5,
        max_queue_size: int = 100,
        worker_slots: int = 1,
        lease_timeout_ms: int = 15_000,
        retry_lost_jobs: bool = False,
        retention_seconds: int = 3600,
        retention_count: int = 10_000,
        timeout_grace_ms: float = 0.0,
        prefix: str = "conveyor",
        events: EventEmitter | None = None,
    ) -> None:
        self.events = events if events is not None else EventEmitter()
        self.max_concurrent = max_concurrent
        self.max_queue_size = max_queue_size
        # Typed loosely: redis-py's stubs union sync/async and bytes/str returns for every command.
        # No socket_timeout on the command client: redis-py wraps every read in a timer for it, a third of the
        # client's CPU per job (bench/bench_redis.py). An unreachable Redis still fails fast at connect.
        self._redis: Any = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5)
        # Blocking reads (XREAD BLOCK, BLPOP) get their own client: closing it is what interrupts them on shutdown.
        self._blocking: Any = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=30)
        self._executor = executor
        self._free = worker_slots
        self._freed = asyncio.Event()
        self._worker_slots = worker_slots
        self._lease_ms = lease_timeout_ms
        self._retry = retry_lost_jobs
        self._retention = (retention_seconds, retention_count)
        self._grace_s = timeout_grace_ms / 1000.0
        self._p = prefix
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._scripts = {
            name: self._redis.register_script(getattr(scripts, name))
            for name in ("ENQUEUE", "CLAIM", "EMIT", "FINISH", "CANCEL", "RENEW", "RECLAIM")
        }
        self._local: dict[str, asyncio.Task[None]] = {}
        self._stdin: dict[str, asyncio.Queue[bytes | None]] = {}
        self._stop_reasons: dict[str, str] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._redis.ping()
        except RedisError as exc:
            raise SettingsError(f"REDIS_URL: cannot reach Redis ({exc})") from None
        # Read from the stream's current end (entries before we started are history, not news).
        last_id = "0-0"
        if await self._redis.exists(self._key("events")):
            last_id = (await self._redis.xinfo_stream(self._key("events")))["last-generated-id"]
        self._tasks = [
            asyncio.create_task(self._read_events(last_id), name="conveyor-redis-events"),
            asyncio.create_task(self._lease_loop(), name="conveyor-redis-leases"),
        ]
        if self._worker_slots > 0:
            self._tasks.append(asyncio.create_task(self._claim_loop(), name="conveyor-redis-claim"))

    async def close(self, grace_s: float = 0.0) -> None:
        if self._closing:
            return
        self._closing = True
        # Queued jobs stay in Redis for the other (or the restarted) instances; only our running ones end here.
        for task in self._tasks[2:]:  # the claim loop: take no new work
            task.cancel()
        if self._local and grace_s > 0:
            await asyncio.wait(list(self._local.values()), timeout=grace_s)
        for job_id, task in list(self._local.items()):
            self._stop_reasons[job_id] = "shutdown"
            task.cancel()
        if self._local:
            await asyncio.gather(*self._local.values(), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await self._blocking.connection_pool.disconnect()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        await self._blocking.aclose()
        await self._redis.aclose()

    def _key(self, name: str) -> str:
        return f"{self._p}:{name}"

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- submission and lookup -------------------------------------------------------------------------------

    @_unavailable_on_redis_error
    async def submit(self, job: Job) -> Job:
        if self._closing:
            raise ShuttingDown("The server is shutting down; try another instance or retry shortly.", retryAfter=5)
        fields = {
            "id": job.id,
            "language": job.language,
            "code": job.code,
            "stdin": job.stdin,
            "args": orjson.dumps(job.args).decode(),
            "priority": job.priority,
            "owner": job.owner,
            "timeout_ms": job.timeout_ms,
            "interactive": int(job.interactive),
        }
        flat: list[Any] = [x for pair in fields.items() for x in pair]
        accepted, queued, created = await self._scripts["ENQUEUE"](
            args=[self._p, job.id, self.max_queue_size, self.max_concurrent, STREAM_MAXLEN, job.priority, *flat]
        )
        if not accepted:
            retry = 5
            raise QueueFull(
                f"The queue holds {queued} jobs, its maximum. Try again in {retry} seconds.",
                headers={"Retry-After": str(retry)},
                retryAfter=retry,
            )
        job.created_at = float(created)
        job.seq = 1
        return job

    @_unavailable_on_redis_error
    async def get(self, job_id: str) -> Job | None:
        data = await self._redis.hgetall(self._key(f"job:{job_id}"))
        return job_from_hash(data) if data else None

    @_unavailable_on_redis_error
    async def position(self, job: Job) -> int | None:
        rank = await self._redis.zrevrank(self._key("queued"), job.id)
        return None if rank is None else int(rank) + 1

    @_unavailable_on_redis_error
    async def recent(self, limit: int = 100) -> list[Job]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrevrange(self._key("finished"), 0, limit - 1)
        pipe.zrange(self._key("running"), 0, -1)
        pipe.zrevrange(self._key("queued"), 0, limit - 1)
        finished, running, queued = await pipe.execute()
        ids = list(dict.fromkeys([*finished, *running, *queued]))
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._key(f"job:{job_id}"))
        jobs = [job_from_hash(data) for data in await pipe.execute() if data]
        jobs.sort(key=lambda j: j.created_at)
        return jobs[-limit:]

    async def wait(self, job_id: str) -> Job:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        try:
            # Registered before looking, so a terminal event between the look and the await is not missed.
            job = await self.get(job_id)
            if job is None:
                raise NotFound(f"No job with id {job_id!r}.")
            if not job.status.finished:
                await future
                job = await self.get(job_id) or job
            return job
        finally:
            waiters = self._waiters.get(job_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(job_id, None)

    @_unavailable_on_redis_error
    async def stats(self) -> dict[str, Any]:
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
            max_concurrent=self.max_concurrent,
            max_queue_size=self.max_queue_size,
        )

    def note_rate_limited(self) -> None:
        self._spawn(self._redis.hincrby(self._key("stats"), "rate_limited", 1))

    # -- cancellation and input ------------------------------------------------------------------------------

    @_unavailable_on_redis_error
    async def cancel(self, job_id: str) -> Job:
        status = await self._cancel_queued(job_id, "cancelled")
        if status != "queued":
            raise Conflict(f"Job {job_id} is {status}; only queued jobs can be cancelled.", status=status)
        return await self._require(job_id)

    @_unavailable_on_redis_error
    async def stop(self, job_id: str, reason: str = "stopped") -> Job:
        status = await self._cancel_queued(job_id, reason)
        if status == "running":
            if job_id in self._local:
                self._stop_local(job_id, reason)
            else:
                await self._control({"type": "_stop", "jobId": job_id, "reason": reason})
            # The instance running it tears the process tree down and records the final status.
            async with asyncio.timeout(self._lease_ms / 1000.0 + 5):
                return await self.wait(job_id)
        if status != "queued":
            raise Conflict(f"Job {job_id} is already {status}.", status=status)
        return await self._require(job_id)

    @_unavailable_on_redis_error
    async def write_stdin(self, job_id: str, data: bytes | None) -> None:
        channel = self._stdin.get(job_id)
        if channel is not None:
            channel.put_nowait(data)
            return
        job = await self._require(job_id)
        if job.status is not JobStatus.RUNNING or not job.interactive:
            raise Conflict(f"Job {job.id} is {job.status.value} and does not accept input.", status=job.status.value)
        text = None if data is None else data.decode("utf-8", "replace")
        await self._control({"type": "_stdin", "jobId": job_id, "data": text})

    async def _cancel_queued(self, job_id: str, reason: str) -> str:
        status: str = await self._scripts["CANCEL"](args=[self._p, job_id, reason, STREAM_MAXLEN, *self._retention])
        if status == "missing":
            raise NotFound(f"No job with id {job_id!r}.")
        return status

    async def _require(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job is None:
            raise NotFound(f"No job with id {job_id!r}.")
        return job

    async def _control(self, message: dict[str, Any]) -> None:
        await self._redis.xadd(self._key("events"), {"e": orjson.dumps(message), "s": 0}, maxlen=STREAM_MAXLEN)

    def _stop_local(self, job_id: str, reason: str) -> None:
        task = self._local.get(job_id)
        if task is not None:
            self._stop_reasons[job_id] = reason
            task.cancel()

    # -- the event stream ------------------------------------------------------------------------------------

    async def _read_events(self, last_id: str) -> None:
        key = self._key("events")
        while True:
            try:
                batches = await self._blocking.xread({key: last_id}, count=500, block=READ_BLOCK_MS)
            except Exception:
                # redis-py may turn our own cancellation into a connection error: never retry while closing.
                if self._closing:
                    return
                logger.exception("reading the event stream failed; retrying")
                await asyncio.sleep(1)
                continue
            for _, entries in batches:
                for entry_id, fields in entries:
                    last_id = entry_id
                    self._dispatch_entry(fields)

    def _dispatch_entry(self, fields: dict[str, str]) -> None:
        event: Event = orjson.loads(fields["e"])
        kind = event["type"]
        job_id = event["jobId"]
        if kind == "_stop":
            self._stop_local(job_id, event["reason"])
        elif kind == "_stdin":
            channel = self._stdin.get(job_id)
            if channel is not None:
                channel.put_nowait(None if event["data"] is None else event["data"].encode())
        else:
            event["seq"] = int(fields["s"])
            self.events.emit(event)
            if kind in TERMINAL:
                self._resolve(job_id)

    def _resolve(self, job_id: str) -> None:
        for future in self._waiters.get(job_id, ()):
            if not future.done():
                future.set_result(None)

    # -- claiming and running --------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while True:
            while self._free <= 0:
                self._freed.clear()
                await self._freed.wait()
            try:
                batch = await self._scripts["CLAIM"](
                    args=[self._p, self.worker_id, self._lease_ms, self.max_concurrent, STREAM_MAXLEN, self._free]
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._closing:
                    return
                logger.exception("claiming a job failed; retrying")
                await asyncio.sleep(1)
                continue
            if not batch:
                # Workers wake on a blocking pop: every enqueue and every finish pushes a token.
                with suppress(Exception):
                    await self._blocking.blpop([self._key("wake")], timeout=WAKE_TIMEOUT_S)
                if self._closing:  # redis-py may have turned our cancellation into a connection error
                    return
                continue
            for data in batch:
                self._free -= 1
                self._start(job_from_hash(dict(zip(data[::2], data[1::2], strict=True))))

    def _start(self, job: Job) -> None:
        if job.interactive:
            channel: asyncio.Queue[bytes | None] = asyncio.Queue()
            if job.stdin:
                channel.put_nowait(job.stdin.encode())
            self._stdin[job.id] = channel
        self._local[job.id] = asyncio.create_task(self._run(job), name=f"job-{job.id}")

    async def _run(self, job: Job) -> None:
        pending: asyncio.Queue[tuple[Stream, str] | None] = asyncio.Queue()
        publisher: asyncio.Task[None] | None = None

        def on_output(stream: Stream, data: str) -> None:
            nonlocal publisher
            if not data:
                return
            pending.put_nowait((stream, data))
            if publisher is None:  # most jobs print little or nothing: no task until they do
                publisher = asyncio.create_task(self._publish_output(job.id, pending))

        started = time.monotonic()
        try:
            coalescer = OutputCoalescer(on_output)
            io = JobIO(on_output=coalescer, stdin=self._stdin.get(job.id))
            status, result = await execute(
                self._executor, job, io, self._grace_s, lambda: self._stop_reasons.pop(job.id, None)
            )
            coalescer.flush()
            if publisher is not None:
                pending.put_nowait(None)
                await publisher  # output events go out before the terminal one
            await self._finish(job, status, result, (time.monotonic() - started) * 1000.0)
        except Exception:
            logger.exception("finishing job %s failed", job.id)
        finally:
            if publisher is not None:
                publisher.cancel()
            self._local.pop(job.id, None)
            self._stdin.pop(job.id, None)
            self._stop_reasons.pop(job.id, None)
            self._free += 1
            self._freed.set()

    async def _publish_output(self, job_id: str, pending: asyncio.Queue[tuple[Stream, str] | None]) -> None:
        while (item := await pending.get()) is not None:
            stream, data = item
            event = orjson.dumps({"type": "output", "jobId": job_id, "stream": stream, "data": data})
            await self._scripts["EMIT"](args=[self._p, job_id, STREAM_MAXLEN, event])

    async def _finish(self, job: Job, status: JobStatus, result: ExecutionResult, elapsed_ms: float) -> None:
        execution = result.run_time_ms if result.run_time_ms is not None else elapsed_ms
        wait = (job.started_at or job.created_at) - job.created_at
        event = orjson.dumps(
            {
                "type": status.value,
                "jobId": job.id,
                "exitCode": result.exit_code,
                "signal": result.signal,
                "reason": result.reason,
                "truncated": result.truncated,
                "waitTimeMs": wait,
                "executionTimeMs": round(execution, 1),
                "compileTimeMs": result.compile_time_ms,
                **result.usage(),
                "language": job.language,
            }
        )
        stored = orjson.dumps(result_dict(result))
        await self._scripts["FINISH"](
            args=[
                self._p,
                job.id,
                self.worker_id,
                status.value,
                stored,
                execution,
                STREAM_MAXLEN,
                *self._retention,
                event,
            ]
        )

    async def _lease_loop(self) -> None:
        """Renew our leases and reclaim expired ones, three times per lease period."""
        while True:
            await asyncio.sleep(self._lease_ms / 3000.0)
            try:
                if self._local:
                    await self._scripts["RENEW"](args=[self._p, self._lease_ms, *self._local])
                lost = await self._scripts["RECLAIM"](args=[self._p, int(self._retry), STREAM_MAXLEN, *self._retention])
                for job_id in lost:
                    logger.warning("job %s lost its worker (lease expired)", job_id)
            except Exception:
                logger.exception("lease renewal or reclaim failed")
