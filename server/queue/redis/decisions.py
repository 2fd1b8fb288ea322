"""The Redis store's decisions on a job someone else holds: cancel or stop it, end or requeue it when its worker is
lost. Each is decided in Python from the job as read (`transitions`) and applied by a script only if the job is still
as read; a miss means the job moved on (claimed, finished, requeued) and is decided again."""

from __future__ import annotations

import orjson

from .. import transitions
from ..jobs import Job, JobStatus
from ..records import job_from_hash, record_bytes, result_dict
from .core import LOG_MAXLEN, STREAM_MAXLEN, RedisCore, unavailable_on_redis_error

# Reads and decisions of one stop or cancel at most: each retry means the job changed meanwhile (a claim, a finish).
_DECISION_ATTEMPTS = 5


class RedisDecisions(RedisCore):
    """Cancel, stop and reclaim of the Redis store."""

    @unavailable_on_redis_error
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

    @unavailable_on_redis_error
    async def cancel(self, job_id: str, reason: str) -> tuple[str, Job | None]:
        return await self._stop(job_id, reason, "cancel")

    @unavailable_on_redis_error
    async def request_stop(self, job_id: str, reason: str) -> tuple[str, Job | None]:
        return await self._stop(job_id, reason, "stop")
