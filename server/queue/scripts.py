"""Lua scripts of the Redis queue: every state change is one atomic script, timed by Redis `TIME`.

Keys, all under a prefix P: `P:queued` (zset, score = priority * 2^32 + (2^32 - 1 - arrival), so ZPOPMAX gives the
highest priority and FIFO within it — BullMQ's encoding), `P:running` (zset, score = lease expiry in ms),
`P:finished` (zset, score = finish time), `P:job:<id>` (hash), `P:events` (stream), `P:stats` (hash),
`P:recent_wait`, `P:recent_exec`, `P:finish_times` (capped lists), `P:wake` (list that idle workers BLPOP on).
"""

from __future__ import annotations

# Shared helpers, prepended to each script.
_PRELUDE = """
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function emit(maxlen, key, event)
  local seq = redis.call('HINCRBY', key, 'seq', 1)
  redis.call('XADD', P .. ':events', 'MAXLEN', '~', maxlen, '*', 'e', event, 's', seq)
  return seq
end
local function wake()
  redis.call('LPUSH', P .. ':wake', 1)
  redis.call('LTRIM', P .. ':wake', 0, 63)
end
local function retire(id, key, now, retention_s, retention_count)
  redis.call('ZADD', P .. ':finished', now, id)
  redis.call('EXPIRE', key, retention_s)
  redis.call('ZREMRANGEBYSCORE', P .. ':finished', '-inf', now - retention_s * 1000)
  local extra = redis.call('ZCARD', P .. ':finished') - retention_count
  if extra > 0 then
    local old = redis.call('ZPOPMIN', P .. ':finished', extra)
    for i = 1, #old, 2 do redis.call('DEL', P .. ':job:' .. old[i]) end
  end
  redis.call('LPUSH', P .. ':finish_times', now)
  redis.call('LTRIM', P .. ':finish_times', 0, 9999)
end
local function terminal_event(id, key, status, reason, wait, now)
  return cjson.encode({type = status, jobId = id, exitCode = cjson.null, signal = cjson.null, reason = reason,
    truncated = false, waitTimeMs = wait, executionTimeMs = cjson.null, compileTimeMs = cjson.null,
    language = redis.call('HGET', key, 'language')})
end
"""

# ARGV: P, id, max_queue, max_concurrent, maxlen, priority, field, value, ...
# Returns {accepted (1/0), queued count, created_at}.
ENQUEUE = (
    _PRELUDE
    + """
local id, maxq, maxc, maxlen = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local priority = tonumber(ARGV[6])
local queued = redis.call('ZCARD', P .. ':queued')
local free = math.max(0, maxc - redis.call('ZCARD', P .. ':running'))
if queued >= maxq + free then
  redis.call('HINCRBY', P .. ':stats', 'rejected', 1)
  return {0, queued, 0}
end
local now = now_ms()
local arrival = redis.call('INCR', P .. ':arrival') % 4294967296
local score = priority * 4294967296 + (4294967295 - arrival)
local key = P .. ':job:' .. id
redis.call('HSET', key, 'status', 'queued', 'score', score, 'created_at', now, unpack(ARGV, 7))
redis.call('ZADD', P .. ':queued', score, id)
redis.call('HINCRBY', P .. ':stats', 'queued', 1)
emit(maxlen, key, cjson.encode({type = 'queued', jobId = id, language = redis.call('HGET', key, 'language'),
  priority = priority, createdAt = now}))
wake()
return {1, queued + 1, now}
"""
)

# ARGV: P, worker, lease_ms, max_concurrent, maxlen, count. Claims up to `count` jobs (one call fills every free
# slot of an instance); returns their hashes, each as a flat list.
CLAIM = (
    _PRELUDE
    + """
local worker, lease, maxc, maxlen, count = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local running = redis.call('ZCARD', P .. ':running')
local claimed = {}
local now = now_ms()
while #claimed < count and running < maxc do
  local popped = redis.call('ZPOPMAX', P .. ':queued')
  if #popped == 0 then break end
  local id = popped[1]
  local key = P .. ':job:' .. id
  local wait = now - tonumber(redis.call('HGET', key, 'created_at'))
  redis.call('HSET', key, 'status', 'running', 'started_at', now, 'worker', worker)
  redis.call('ZADD', P .. ':running', now + lease, id)
  redis.call('HINCRBYFLOAT', P .. ':stats', 'wait_sum', wait)
  redis.call('HINCRBY', P .. ':stats', 'wait_count', 1)
  redis.call('LPUSH', P .. ':recent_wait', wait)
  emit(maxlen, key, cjson.encode({type = 'running', jobId = id, startedAt = now, waitTimeMs = wait}))
  claimed[#claimed + 1] = redis.call('HGETALL', key)
  running = running + 1
end
if #claimed > 0 then redis.call('LTRIM', P .. ':recent_wait', 0, 999) end
return claimed
"""
)

# ARGV: P, id, maxlen, event JSON (without seq). Appends one output event with the job's next seq.
EMIT = (
    _PRELUDE
    + """
return emit(ARGV[3], P .. ':job:' .. ARGV[2], ARGV[4])
"""
)

# ARGV: P, id, worker, status, result JSON, execution ms, maxlen, retention_s, retention_count, event JSON.
# Returns 1, or 0 when this worker no longer holds the job (its lease was reclaimed).
FINISH = (
    _PRELUDE
    + """
local id, worker, status, result = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local exec_ms, maxlen = tonumber(ARGV[6]), ARGV[7]
local key = P .. ':job:' .. id
if redis.call('HGET', key, 'status') ~= 'running' or redis.call('HGET', key, 'worker') ~= worker then return 0 end
local now = now_ms()
redis.call('HSET', key, 'status', status, 'finished_at', now, 'result', result)
redis.call('ZREM', P .. ':running', id)
if status == 'cancelled' then
  redis.call('HINCRBY', P .. ':stats', 'cancelled', 1)
else
  redis.call('HINCRBY', P .. ':stats', 'processed', 1)
  redis.call('HINCRBY', P .. ':stats', status, 1)
  redis.call('HINCRBYFLOAT', P .. ':stats', 'exec_sum', exec_ms)
  redis.call('HINCRBY', P .. ':stats', 'exec_count', 1)
  redis.call('LPUSH', P .. ':recent_exec', exec_ms)
  redis.call('LTRIM', P .. ':recent_exec', 0, 999)
end
retire(id, key, now, tonumber(ARGV[8]), tonumber(ARGV[9]))
emit(maxlen, key, ARGV[10])
wake()
return 1
"""
)

# ARGV: P, id, reason, maxlen, retention_s, retention_count. Cancels a queued job.
# Returns the status the job had ('queued' means it is now cancelled), or 'missing'.
CANCEL = (
    _PRELUDE
    + """
local id, reason, maxlen = ARGV[2], ARGV[3], ARGV[4]
local key = P .. ':job:' .. id
local status = redis.call('HGET', key, 'status')
if not status then return 'missing' end
if status ~= 'queued' then return status end
redis.call('ZREM', P .. ':queued', id)
local now = now_ms()
redis.call('HSET', key, 'status', 'cancelled', 'finished_at', now, 'result', cjson.encode({reason = reason}))
redis.call('HINCRBY', P .. ':stats', 'cancelled', 1)
retire(id, key, now, tonumber(ARGV[5]), tonumber(ARGV[6]))
local wait = now - tonumber(redis.call('HGET', key, 'created_at'))
emit(maxlen, key, terminal_event(id, key, 'cancelled', reason, wait, now))
return 'queued'
"""
)

# ARGV: P, lease_ms, id, id, ... Extends the leases this instance still holds.
RENEW = (
    _PRELUDE
    + """
local expiry = now_ms() + tonumber(ARGV[2])
for i = 3, #ARGV do redis.call('ZADD', P .. ':running', 'XX', expiry, ARGV[i]) end
return 1
"""
)

# ARGV: P, retry (1/0), maxlen, retention_s, retention_count. Jobs whose lease expired: their instance died.
# Each is requeued once (retry) or failed with reason worker_lost. Returns the ids handled.
RECLAIM = (
    _PRELUDE
    + """
local retry, maxlen = ARGV[2] == '1', ARGV[3]
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', P .. ':running', '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(ids) do
  local key = P .. ':job:' .. id
  redis.call('ZREM', P .. ':running', id)
  local attempts = redis.call('HINCRBY', key, 'attempts', 1)
  if retry and attempts <= 1 then
    redis.call('HSET', key, 'status', 'queued')
    redis.call('HDEL', key, 'worker', 'started_at')
    redis.call('ZADD', P .. ':queued', redis.call('HGET', key, 'score'), id)
    emit(maxlen, key, cjson.encode({type = 'queued', jobId = id, retried = true,
      language = redis.call('HGET', key, 'language'), priority = tonumber(redis.call('HGET', key, 'priority'))}))
    wake()
  else
    redis.call('HSET', key, 'status', 'failed', 'finished_at', now, 'result', cjson.encode({reason = 'worker_lost'}))
    redis.call('HINCRBY', P .. ':stats', 'processed', 1)
    redis.call('HINCRBY', P .. ':stats', 'failed', 1)
    retire(id, key, now, tonumber(ARGV[4]), tonumber(ARGV[5]))
    local started = tonumber(redis.call('HGET', key, 'started_at') or now)
    local wait = started - tonumber(redis.call('HGET', key, 'created_at'))
    emit(maxlen, key, terminal_event(id, key, 'failed', 'worker_lost', wait, now))
  end
end
return ids
"""
)
