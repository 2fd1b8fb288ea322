"""The callbacks' outbox on Redis: one outbox shared by every instance with the same REDIS_URL and REDIS_PREFIX.

Keys, under the prefix: `P:callbacks:due` (sorted set of keys, score = due time, or the end of a claim's lease),
`P:callbacks:entries` (hash: key -> the delivery as JSON), `P:callbacks:hosts` (hash: key -> host, what a claim
counts by without decoding bodies) and `P:callbacks:attempts` (hash: key -> attempts so far). Each change is one
script. Times are the instances' clocks (seconds since the epoch): a lease is as good as their agreement.
"""

from __future__ import annotations

from typing import Any

import orjson

from .outbox import CLAIM_SCAN, Claim, Delivery, Entry, OutboxStore

_ADD = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[6])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return 1
"""

# ARGV: now, lease_until, limit, per_host, scan, then (host, busy) pairs. Returns key, entry, attempts triples.
_CLAIM = """
local busy = {}
for i = 6, #ARGV, 2 do busy[ARGV[i]] = tonumber(ARGV[i + 1]) end
local limit, per_host = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[5]))
for _, key in ipairs(due) do
  if #out >= 3 * limit then break end
  local host = redis.call('HGET', KEYS[2], key)
  local entry = redis.call('HGET', KEYS[3], key)
  if not host or not entry then
    redis.call('ZREM', KEYS[1], key)  -- half an entry (its removal was cut short): nothing to deliver
  elseif (busy[host] or 0) < per_host then
    busy[host] = (busy[host] or 0) + 1
    redis.call('ZADD', KEYS[1], ARGV[2], key)
    out[#out + 1] = key
    out[#out + 1] = entry
    out[#out + 1] = redis.call('HGET', KEYS[4], key) or '0'
  end
end
return out
"""

_RESCHEDULE = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
return 1
"""

_REMOVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
"""


class RedisOutbox(OutboxStore):
    """The shared outbox. `pool` is the instance's Redis pool (its owner closes it)."""

    def __init__(self, pool: Any, *, prefix: str, now: Any) -> None:
        import redis.asyncio as aioredis  # the redis client is an optional extra

        self._redis: Any = aioredis.Redis(connection_pool=pool)
        self._now = now
        p = f"{prefix}:callbacks"
        self._due, self._entries = f"{p}:due", f"{p}:entries"
        self._hosts, self._attempts = f"{p}:hosts", f"{p}:attempts"
        self._scripts = {
            name: self._redis.register_script(text)
            for name, text in (("add", _ADD), ("claim", _CLAIM), ("reschedule", _RESCHEDULE), ("remove", _REMOVE))
        }

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def add(self, entry: Entry, capacity: int) -> bool:
        d = entry.delivery
        # Bodies are JSON (UTF-8), so they travel as text in the entry's JSON; the pool decodes replies.
        fields = {"jobId": d.job_id, "url": d.url, "method": d.method, "body": d.body.decode()}
        record = orjson.dumps({**fields, "createdAt": entry.created_at})
        added = await self._scripts["add"](
            keys=[self._due, self._entries, self._hosts, self._attempts],
            args=[d.key, record, d.host, self._now(), capacity, entry.attempts],
        )
        return bool(added)

    async def claim(self, claim: Claim) -> list[Entry]:
        busy = [item for host, n in claim.busy.items() for item in (host, n)]
        reply = await self._scripts["claim"](
            keys=[self._due, self._hosts, self._entries, self._attempts],
            args=[claim.now, claim.lease_until, claim.limit, claim.per_host, CLAIM_SCAN, *busy],
        )
        entries = []
        for i in range(0, len(reply), 3):
            record = orjson.loads(reply[i + 1])
            delivery = Delivery(record["jobId"], record["url"], record["body"].encode(), record["method"])
            entries.append(Entry(delivery, float(record["createdAt"]), int(reply[i + 2])))
        return entries

    async def remove(self, key: str) -> None:
        await self._scripts["remove"](keys=[self._due, self._entries, self._hosts, self._attempts], args=[key])

    async def reschedule(self, key: str, due_at: float, attempts: int) -> None:
        await self._scripts["reschedule"](keys=[self._due, self._entries, self._attempts], args=[key, due_at, attempts])

    async def count(self) -> int:
        return int(await self._redis.zcard(self._due))
