"""What the views read: an instance's heartbeat record, jobs' places in line."""

from __future__ import annotations

from .prelude import PRELUDE

# KEYS: instances, instance_info. ARGV: instance, record JSON, ttl_ms, max instances.
# This instance's heartbeat; records older than the TTL are dropped, and past `max` the stalest: both keys stay
# bounded, and expire with the last instance.
HEARTBEAT = (
    PRELUDE
    + """
local beats, info = unpack(KEYS)
local me, record, ttl, max = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
redis.call('ZADD', beats, now, me)
redis.call('HSET', info, me, record)
local stale = redis.call('ZRANGEBYSCORE', beats, '-inf', '(' .. (now - ttl))
local over = redis.call('ZCARD', beats) - #stale - max
if over > 0 then
  for _, name in ipairs(redis.call('ZRANGEBYSCORE', beats, now - ttl, '+inf', 'LIMIT', 0, over)) do
    stale[#stale + 1] = name
  end
end
for _, name in ipairs(stale) do
  redis.call('ZREM', beats, name)
  redis.call('HDEL', info, name)
end
redis.call('PEXPIRE', beats, ttl)
redis.call('PEXPIRE', info, ttl)
return now
"""
)

# KEYS: queued, job, job, ... Returns each job's 1-based place in line, or false when it is not queued.
POSITIONS = """
local places = {}
for i = 2, #KEYS do
  local place = false
  if redis.call('HGET', KEYS[i], 'status') == 'queued' then
    local rank = redis.call('ZRANK', KEYS[1], redis.call('HGET', KEYS[i], 'qm'))
    if rank then place = rank + 1 end
  end
  places[#places + 1] = place
end
return places
"""
