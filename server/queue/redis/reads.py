"""The Redis store's reads for the views: a job, places in line, the recent jobs, the dashboard's listing and the
statistics. None of them changes anything."""

from __future__ import annotations

from typing import Any

from ..jobs import Job
from ..records import LISTED_FIELDS, job_from_hash, listed_job_from_hash
from ..stats import build_snapshot, seconds_until_a_place
from .core import RedisCore, unavailable_on_redis_error

# The latest finishes a full queue's Retry-After is estimated from (one gap between them is the wait for a place).
RETRY_FINISHES = 100


class RedisReads(RedisCore):
    """Jobs, listings and statistics as the Redis store holds them."""

    @unavailable_on_redis_error
    async def get(self, job_id: str) -> Job | None:
        data = await self._redis.hgetall(self._key(f"job:{job_id}"))
        return job_from_hash(data) if data.get("status") else None

    @unavailable_on_redis_error
    async def positions(self, job_ids: list[str]) -> dict[str, int | None]:
        if not job_ids:
            return {}
        places = await self._scripts["POSITIONS"](
            keys=[self._key("queued"), *(self._key(f"job:{i}") for i in job_ids)], args=[]
        )
        return {job_id: (int(p) if p is not None else None) for job_id, p in zip(job_ids, places, strict=True)}

    @unavailable_on_redis_error
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

    @unavailable_on_redis_error
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

    async def _retry_after(self) -> int:
        """Seconds until a place frees, from the cluster's latest finishes (newest first in the list)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.lrange(self._key("finish_times"), 0, RETRY_FINISHES - 1)
        pipe.time()
        finishes, (secs, micros) = await pipe.execute()
        return seconds_until_a_place((float(t) for t in finishes), secs * 1000 + micros // 1000, unit_s=0.001)

    @unavailable_on_redis_error
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
