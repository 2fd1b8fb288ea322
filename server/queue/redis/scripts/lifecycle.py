"""A job's way through the queue: enqueue, claim, its output events, finish (with the next claim)."""

from __future__ import annotations

from .prelude import PRELUDE

# KEYS: queued, running, stats, events, wake, arrival, job, log.
# ARGV: origin, id, max_queue, max_concurrent, maxlen, logmax, inverted priority (19 digits), status, event template,
# its stamps (JSON), field, value, ... Returns {accepted (1/0), queued count, created_at}. Idempotent: a retried call
# after a lost reply finds the record and accepts once. The creation time is Redis's (after the job's own fields).
ENQUEUE = (
    PRELUDE
    + """
local queued_key, running, stats, events, wake_key, arrival_key, job, log = unpack(KEYS)
local origin, id, maxq, maxc, maxlen, logmax = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6]
if redis.call('EXISTS', job) == 1 then
  return {1, redis.call('ZCARD', queued_key), redis.call('HGET', job, 'created_at')}
end
local queued = redis.call('ZCARD', queued_key)
local free = math.max(0, maxc - redis.call('ZCARD', running))
if queued >= maxq + free then
  redis.call('HINCRBY', stats, 'rejected', 1)
  return {0, queued, 0}
end
local now = now_ms()
local arrival = redis.call('INCR', arrival_key)
local member = ARGV[7] .. string.format('%016d', arrival) .. ':' .. id
redis.call('HSET', job, unpack(ARGV, 11))
redis.call('HSET', job, 'status', ARGV[8], 'qm', member, 'created_at', now)
redis.call('ZADD', queued_key, 0, member)
redis.call('HINCRBY', stats, 'queued', 1)
emit(events, job, log, origin, maxlen, logmax, stamp(ARGV[9], cjson.decode(ARGV[10]), {now = now}))
wake(wake_key)
return {1, queued + 1, now}
"""
)

# KEYS: queued, running, stats, events, recent_wait, wake. ARGV: origin (the worker), lease_ms, max_concurrent, maxlen,
# logmax, count, prefix, status, event template, its stamps (JSON). Claims up to `count` jobs (one call fills every
# free slot of an instance); returns their hashes, each as a flat list (with `stop` if a stop was requested).
CLAIM = (
    PRELUDE
    + """
local count, P, status, template, stamps = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9], cjson.decode(ARGV[10])
return claim_jobs(P, KEYS, ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], count, status, template,
  stamps)
"""
)

# KEYS: job, log, events. ARGV: origin, maxlen, logmax, event JSON (without seq). One output event of a running
# job, with its next seq; nothing once the job has finished (a late publisher must not extend a retired log).
EMIT = (
    PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
return emit(KEYS[3], KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
)

# KEYS: running, finished, stats, events, wake, recent_exec, finish_times, sizes, retained, queued, recent_wait, then
# job, log, stdin of each finished job. ARGV: origin (the worker), maxlen, logmax, retention_s, retention_count,
# retention_bytes, prefix, claim count, lease_ms, max_concurrent, the claim's status, event template and stamps
# (JSON), then 7 per finished job: id, status, result JSON, execution ms, record bytes, event JSON, brief result JSON
# (without output, for listings).
# Finishes every job of the batch: each 1, also for a retry after a lost reply (idempotent for the lease holder), or
# 0 when this worker no longer holds it (its lease was reclaimed). Then, with the slots they freed, claims up to
# `claim count` queued jobs for the same worker, as CLAIM does: a busy worker needs no CLAIM round trip of its own.
# Returns {{flag, ...}, {claimed hash, ...}}.
FINISH = (
    PRELUDE
    + """
local running, finished, stats, events, wake_key, recent_exec, finish_times, sizes, retained, queued, recent_wait =
  unpack(KEYS, 1, 11)
local worker, maxlen, logmax, P = ARGV[1], ARGV[2], ARGV[3], ARGV[7]
local rs, rc, rb = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local function finish_one(job, log, stdin, id, status, result, exec_ms, record_bytes, event, brief)
  if redis.call('HGET', job, 'worker') ~= worker then return 0 end
  if redis.call('HGET', job, 'status') ~= 'running' then
    if redis.call('HGET', job, 'finished_by') == worker then return 1 end
    return 0
  end
  local now = now_ms()
  redis.call('HSET', job, 'status', status, 'finished_at', now, 'result', result, 'finished_by', worker,
    'brief', brief)
  redis.call('HDEL', job, 'stdin_bytes')
  redis.call('DEL', stdin)
  redis.call('ZREM', running, id)
  if status == 'cancelled' then
    redis.call('HINCRBY', stats, 'cancelled', 1)
  else
    redis.call('HINCRBY', stats, 'processed', 1)
    redis.call('HINCRBY', stats, status, 1)
    redis.call('HINCRBYFLOAT', stats, 'exec_sum', exec_ms)
    redis.call('HINCRBY', stats, 'exec_count', 1)
    redis.call('LPUSH', recent_exec, exec_ms)
    redis.call('LTRIM', recent_exec, 0, 999)
  end
  emit(events, job, log, worker, maxlen, logmax, event)
  local size = record_bytes + tonumber(redis.call('HGET', job, 'log_bytes') or 0)
  retire(P, finished, sizes, retained, finish_times, id, job, log, now, size, rs, rc, rb)
  return 1
end
local flags = {}
for i = 0, (#KEYS - 11) / 3 - 1 do
  local k, a = 12 + i * 3, 14 + i * 7
  flags[#flags + 1] = finish_one(KEYS[k], KEYS[k + 1], KEYS[k + 2], ARGV[a], ARGV[a + 1], ARGV[a + 2],
    tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), ARGV[a + 5], ARGV[a + 6])
end
local claimed = claim_jobs(P, {queued, running, stats, events, recent_wait, wake_key}, worker, tonumber(ARGV[9]),
  tonumber(ARGV[10]), maxlen, logmax, tonumber(ARGV[8]), ARGV[11], ARGV[12], cjson.decode(ARGV[13]))
-- Freed places are news only to a worker that can take what is still waiting.
if redis.call('ZCARD', queued) > 0 then wake(wake_key) end
return {flags, claimed}
"""
)
