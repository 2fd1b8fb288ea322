"""Decisions on a job someone else holds (cancel, stop) and the leases: renew, find the expired, reclaim."""

from __future__ import annotations

from .prelude import PRELUDE

# KEYS: queued, finished, stats, events, sizes, retained, finish_times, job, log, stdin.
# ARGV: origin, status, result JSON, event JSON, finished_at (Redis time, read with the job), maxlen, logmax,
# retention_s, retention_count, retention_bytes, prefix, record bytes, id. A queued job leaves the line as Python
# decided, only if it is still queued (a claim may have won the race): returns 1, else 0.
CANCEL = (
    PRELUDE
    + """
local queued, finished, stats, events, sizes, retained, finish_times, job, log, stdin = unpack(KEYS)
local origin, status, result, event, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if redis.call('HGET', job, 'status') ~= 'queued' then return 0 end
redis.call('ZREM', queued, redis.call('HGET', job, 'qm'))
redis.call('HSET', job, 'status', status, 'finished_at', now, 'result', result, 'brief', result)
redis.call('HINCRBY', stats, 'cancelled', 1)
redis.call('HDEL', job, 'stdin_bytes')
redis.call('DEL', stdin)  -- input sent while it waited
emit(events, job, log, origin, ARGV[6], ARGV[7], event)
local size = tonumber(ARGV[12]) + tonumber(redis.call('HGET', job, 'log_bytes') or 0)
retire(ARGV[11], finished, sizes, retained, finish_times, ARGV[13], job, log, now, size, tonumber(ARGV[8]),
  tonumber(ARGV[9]), tonumber(ARGV[10]))
return 1
"""
)

# KEYS: job, events. ARGV: id, reason, maxlen. A durable stop request on a job that is still running (the instance
# running it reads it at claim and at every renewal), and a `_stop` control message for a prompt kill. Returns 1, or
# 0 when the job is no longer running.
STOP = (
    PRELUDE
    + """
local job, events = unpack(KEYS)
local id, reason, maxlen = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', job, 'status') ~= 'running' then return 0 end
redis.call('HSETNX', job, 'stop', reason)
control(events, maxlen, cjson.encode({type = '_stop', jobId = id, reason = reason}))
return 1
"""
)

# KEYS: running, heartbeat, job, job, ... ARGV: lease_ms, id, id, ... Extends the leases this instance holds;
# returns {id, stop reason, ...} for those of its jobs that have a stop request recorded.
RENEW = (
    PRELUDE
    + """
local now = now_ms()
local lease = tonumber(ARGV[1])
heal_gap(KEYS[1], KEYS[2], now, lease)
local stops = {}
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i])
  local stop = redis.call('HGET', KEYS[i + 1], 'stop')
  if stop then
    stops[#stops + 1] = ARGV[i]
    stops[#stops + 1] = stop
  end
end
return stops
"""
)

# KEYS: running, heartbeat. ARGV: lease_ms, prefix. Jobs whose lease expired (their instance died): returns {now,
# {hash, ...}}, at most 100, for Python to decide each one's fate. Ids whose record is gone leave the running set.
EXPIRED = (
    PRELUDE
    + """
local running, heartbeat = unpack(KEYS)
local lease, P = tonumber(ARGV[1]), ARGV[2]
local now = now_ms()
if heal_gap(running, heartbeat, now, lease) > lease / 2 then return {now, {}} end
local found = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', running, '-inf', now, 'LIMIT', 0, 100)) do
  local hash = redis.call('HGETALL', P .. ':job:' .. id)
  if #hash == 0 then redis.call('ZREM', running, id) else found[#found + 1] = hash end
end
return {now, found}
"""
)

# KEYS: running, queued, finished, stats, events, wake, sizes, retained, finish_times, job, log.
# ARGV: origin, id, worker (who held the lease), attempts, status ('queued': requeue, else the final one), result
# JSON, event JSON, finished_at, maxlen, logmax, retention_s, retention_count, retention_bytes, prefix, record bytes.
# Applies Python's decision on a lost job, only if that worker's lease is still expired: returns 1, else 0.
RECLAIM = (
    PRELUDE
    + """
local running, queued, finished, stats, events, wake_key, sizes, retained, finish_times, job, log = unpack(KEYS)
local origin, id, worker, status, event, now = ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[7], tonumber(ARGV[8])
local lease = redis.call('ZSCORE', running, id)
if not lease or tonumber(lease) > now_ms() or redis.call('HGET', job, 'worker') ~= worker
  or redis.call('HGET', job, 'status') ~= 'running' then
  return 0
end
redis.call('ZREM', running, id)
redis.call('HSET', job, 'attempts', ARGV[4])
if status == 'queued' then
  redis.call('HSET', job, 'status', status)
  redis.call('HDEL', job, 'worker', 'started_at')
  redis.call('ZADD', queued, 0, redis.call('HGET', job, 'qm'))
  emit(events, job, log, origin, ARGV[9], ARGV[10], event)
  wake(wake_key)
  return 1
end
redis.call('HSET', job, 'status', status, 'finished_at', now, 'result', ARGV[6], 'brief', ARGV[6])
redis.call('HINCRBY', stats, 'processed', 1)
redis.call('HINCRBY', stats, status, 1)
emit(events, job, log, origin, ARGV[9], ARGV[10], event)
local size = tonumber(ARGV[15]) + tonumber(redis.call('HGET', job, 'log_bytes') or 0)
retire(ARGV[14], finished, sizes, retained, finish_times, id, job, log, now, size, tonumber(ARGV[11]),
  tonumber(ARGV[12]), tonumber(ARGV[13]))
return 1
"""
)
