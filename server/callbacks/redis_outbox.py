"""The callbacks' outbox on Redis: one outbox shared by every instance with the same REDIS_URL and REDIS_PREFIX.

Keys, under the prefix: `P:callbacks:due` (sorted set of keys, score = due time, or the end of a claim's lease),
`P:callbacks:entries` (hash: key -> the delivery as JSON), `P:callbacks:hosts` (hash: key -> host, what a claim
counts by without decoding bodies) and `P:callbacks:attempts` (hash: key -> attempts so far) hold filled entries;
`P:callbacks:armed` (hash: key -> the armed callback as JSON) and `P:callbacks:checks` (sorted set of keys, score =
when an instance looks at its job next) armed ones. Each change is one script. Times are the instances' clocks
(seconds since the epoch): a lease is as good as their agreement.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..queue.redispool import command_client
from .outbox import CLAIM_SCAN, Armed, Claim, Delivery, Entry, OutboxStore

# KEYS: due, entries, hosts, attempts, armed, checks (every script takes them all, in this order).
# ARGV: key, entry, host, due_at, capacity, attempts.
_ADD = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then return 1 end
if redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[6]) >= tonumber(ARGV[5]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[6])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return 1
"""

# ARGV: key, armed, check_at, capacity.
_ARM = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then return 1 end
if redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[6]) >= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
return 1
"""

# ARGV: key, entry, host, due_at. Only an armed entry is filled: a second fill, or one after delivery, is a no-op.
_FILL = """
if redis.call('HDEL', KEYS[5], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1], 0)
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return 1
"""

_DISARM = """
redis.call('ZREM', KEYS[6], ARGV[1])
return redis.call('HDEL', KEYS[5], ARGV[1])
"""

# ARGV: now, limit. Returns key, armed pairs.
_ARMED_DUE = """
local out = {}
for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))) do
  local armed = redis.call('HGET', KEYS[5], key)
  if armed then
    out[#out + 1] = key
    out[#out + 1] = armed
  else
    redis.call('ZREM', KEYS[6], key)
  end
end
return out
"""

_RECHECK = """
if redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1]) end
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
        self._redis: Any = command_client(pool)
        self._now = now
        p = f"{prefix}:callbacks"
        self._due, self._entries = f"{p}:due", f"{p}:entries"
        self._hosts, self._attempts = f"{p}:hosts", f"{p}:attempts"
        self._armed, self._checks = f"{p}:armed", f"{p}:checks"
        self._all = [self._due, self._entries, self._hosts, self._attempts, self._armed, self._checks]
        scripts = {"add": _ADD, "claim": _CLAIM, "reschedule": _RESCHEDULE, "remove": _REMOVE, "arm": _ARM}
        scripts |= {"fill": _FILL, "disarm": _DISARM, "armed_due": _ARMED_DUE, "recheck": _RECHECK}
        self._scripts = {name: self._redis.register_script(text) for name, text in scripts.items()}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def add(self, entry: Entry, capacity: int) -> bool:
        d = entry.delivery
        added = await self._scripts["add"](
            keys=self._all, args=[d.key, _record(entry), d.host, self._now(), capacity, entry.attempts]
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

    async def arm(self, armed: Armed, capacity: int, check_at: float) -> bool:
        fields = {"jobId": armed.job_id, "url": armed.url, "method": armed.method, "format": armed.body_format}
        record = orjson.dumps({**fields, "createdAt": armed.created_at})
        return bool(await self._scripts["arm"](keys=self._all, args=[armed.key, record, check_at, capacity]))

    async def fill(self, armed: Armed, body: bytes, now: float) -> bool:
        entry = Entry(armed.delivery(body), now)
        args: list[bytes | str | float] = [armed.key, _record(entry), entry.delivery.host, now]
        return bool(await self._scripts["fill"](keys=self._all, args=args))

    async def disarm(self, key: str) -> bool:
        return bool(await self._scripts["disarm"](keys=self._all, args=[key]))

    async def armed_due(self, now: float, limit: int) -> list[Armed]:
        reply = await self._scripts["armed_due"](keys=self._all, args=[now, limit])
        found = []
        for i in range(0, len(reply), 2):
            record = orjson.loads(reply[i + 1])
            found.append(
                Armed(record["jobId"], record["url"], record["method"], record["format"], float(record["createdAt"]))
            )
        return found

    async def recheck(self, key: str, check_at: float) -> None:
        await self._scripts["recheck"](keys=self._all, args=[key, check_at])

    async def count_armed(self) -> int:
        return int(await self._redis.zcard(self._checks))


def _record(entry: Entry) -> bytes:
    """A filled entry as kept: bodies are JSON (UTF-8), so they travel as text in it; the pool decodes replies."""
    d = entry.delivery
    return orjson.dumps(
        {"jobId": d.job_id, "url": d.url, "method": d.method, "body": d.body.decode(), "createdAt": entry.created_at}
    )
