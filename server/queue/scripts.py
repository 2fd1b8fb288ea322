"""Lua scripts of the Redis store: every state change is one atomic script, timed by Redis `TIME`.

Keys, all under a prefix P: `P:queued` (zset, every score 0, member = inverted priority (19 digits) + arrival (16
digits) + ":" + id: `ZPOPMIN` takes the smallest member, i.e. the highest priority and FIFO within it, for any
priority — a double score of priority x 2^32 lost FIFO from 2^21 up), `P:running` (zset, score = lease expiry in
ms), `P:finished` (zset, score = finish time), `P:job:<id>` (hash), `P:log:<id>` (the job's event stream, replayed
by any instance), `P:stdin:<id>` (input not yet taken by the running instance), `P:events` (every event and
control message, for live fan-out), `P:stats` (hash), `P:sizes` (hash: bytes kept per finished job) and
`P:retained` (their sum), `P:heartbeat` (last lease call), `P:instances` (zset, score = an instance's last
heartbeat) and `P:instance_info` (hash: its slots, JSON), `P:recent_wait`, `P:recent_exec`, `P:finish_times` (capped
lists), `P:wake` (list that idle workers BLPOP on).

Every script declares in KEYS the keys it knows before it runs. Two cannot: CLAIM pops ids it did not know and
retention evicts the oldest records; they derive those keys from the prefix (ARGV), so the store is one Redis, not
a Redis Cluster (put the prefix in a hash tag, `{conveyor}`, to keep every key in one slot).
"""

from __future__ import annotations

# Shared helpers, prepended to each script. ORIGIN is the instance that runs the script.
_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function emit(events, job, log, origin, maxlen, logmax, event)
  local seq = redis.call('HINCRBY', job, 'seq', 1)
  redis.call('HINCRBY', job, 'log_bytes', #event + 32)
  redis.call('XADD', log, 'MAXLEN', '~', logmax, '*', 'e', event, 's', seq)
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'e', event, 's', seq, 'o', origin)
  return seq
end
local function control(events, maxlen, message)
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'e', message, 's', 0, 'o', '')
end
local function wake(key)
  redis.call('LPUSH', key, 1)
  redis.call('LTRIM', key, 0, 63)
end
-- Retention by count, age and bytes; zero for any of them keeps nothing in the index. A record evicted at once
-- (the job just finished) lives GRACE seconds more, so waiters on every instance can still read its result.
-- Past its age a record goes, oldest first; past the count or byte bound the owner holding the most (jobs, or bytes)
-- gives up its own oldest (P:owner_count, P:owner_bytes zsets; P:owned:<owner> its records by finish time;
-- P:owners the owner of each record), so one client's flood evicts its own records, not everyone else's.
local GRACE = 10
local function forget(P, finished, sizes, retained, id, known_owner)
  local size = tonumber(redis.call('HGET', sizes, id) or 0)
  redis.call('ZREM', finished, id)
  redis.call('DECRBY', retained, size)
  redis.call('HDEL', sizes, id)
  local owner = redis.call('HGET', P .. ':owners', id) or known_owner
  if owner then
    redis.call('HDEL', P .. ':owners', id)
    redis.call('ZREM', P .. ':owned:' .. owner, id)
    if redis.call('ZINCRBY', P .. ':owner_count', -1, owner) + 0 <= 0 then
      redis.call('ZREM', P .. ':owner_count', owner)
      redis.call('ZREM', P .. ':owner_bytes', owner)
    else
      redis.call('ZINCRBY', P .. ':owner_bytes', -size, owner)
    end
  end
end
local function largest_holders_oldest(P, holders)
  local top = redis.call('ZREVRANGE', P .. holders, 0, 0)[1]
  if not top then return nil, nil end
  return redis.call('ZRANGE', P .. ':owned:' .. top, 0, 0)[1], top
end
local function retire(P, finished, sizes, retained, finish_times, id, job, log, now, size, rs, rc, rb)
  local owner = redis.call('HGET', job, 'owner') or '""'
  redis.call('ZADD', finished, now, id)
  redis.call('HSET', sizes, id, size)
  redis.call('INCRBY', retained, size)
  redis.call('HSET', P .. ':owners', id, owner)
  redis.call('ZADD', P .. ':owned:' .. owner, now, id)
  redis.call('ZINCRBY', P .. ':owner_count', 1, owner)
  redis.call('ZINCRBY', P .. ':owner_bytes', size, owner)
  redis.call('EXPIRE', job, math.max(rs, GRACE))
  redis.call('EXPIRE', log, math.max(rs, GRACE))
  while true do
    local first = redis.call('ZRANGE', finished, 0, 0, 'WITHSCORES')
    if #first == 0 then break end
    local victim, holder
    if tonumber(first[2]) <= now - rs * 1000 then
      victim = first[1]
    elseif tonumber(redis.call('GET', retained) or 0) > rb then
      victim, holder = largest_holders_oldest(P, ':owner_bytes')
    elseif redis.call('ZCARD', finished) > rc then
      victim, holder = largest_holders_oldest(P, ':owner_count')
    else
      break
    end
    if not victim then
      if holder then  -- a holder without records: drop it from the ranking
        redis.call('ZREM', P .. ':owner_count', holder)
        redis.call('ZREM', P .. ':owner_bytes', holder)
      end
      victim, holder = first[1], nil
    end
    forget(P, finished, sizes, retained, victim, holder)
    if victim == id then
      redis.call('EXPIRE', job, GRACE)
      redis.call('EXPIRE', log, GRACE)
    else
      redis.call('DEL', P .. ':job:' .. victim, P .. ':log:' .. victim, P .. ':stdin:' .. victim)
    end
  end
  redis.call('LPUSH', finish_times, now)
  redis.call('LTRIM', finish_times, 0, 9999)
end
-- An event decided in Python (server/queue/transitions.py), with the fields only this script knows appended: STAMPS
-- names them with their source in VALUES (the job it popped, its clock). The template is a JSON object.
local function stamp(template, stamps, values)
  local parts = {string.sub(template, 1, -2)}
  for i = 1, #stamps, 2 do
    parts[#parts + 1] = ',' .. cjson.encode(stamps[i]) .. ':' .. cjson.encode(values[stamps[i + 1]])
  end
  parts[#parts + 1] = '}'
  return table.concat(parts)
end
-- Pops up to COUNT queued jobs for WORKER while the cluster runs fewer than MAXC (the highest priority first, FIFO
-- within it), under a lease; returns their hashes. Q: {queued, running, stats, events, recent_wait}.
local function claim_jobs(P, Q, worker, lease, maxc, maxlen, logmax, count, status, template, stamps)
  local queued_key, running_key, stats, events, recent_wait = Q[1], Q[2], Q[3], Q[4], Q[5]
  local running = redis.call('ZCARD', running_key)
  local claimed = {}
  local now = now_ms()
  while #claimed < count and running < maxc do
    local popped = redis.call('ZPOPMIN', queued_key)
    if #popped == 0 then break end
    local id = string.sub(popped[1], 37)
    local job, log = P .. ':job:' .. id, P .. ':log:' .. id
    local wait = now - tonumber(redis.call('HGET', job, 'created_at'))
    redis.call('HSET', job, 'status', status, 'started_at', now, 'worker', worker)
    redis.call('ZADD', running_key, now + lease, id)
    redis.call('HINCRBYFLOAT', stats, 'wait_sum', wait)
    redis.call('HINCRBY', stats, 'wait_count', 1)
    redis.call('LPUSH', recent_wait, wait)
    emit(events, job, log, worker, maxlen, logmax, stamp(template, stamps, {id = id, now = now, wait = wait}))
    claimed[#claimed + 1] = redis.call('HGETALL', job)
    running = running + 1
  end
  if #claimed > 0 then redis.call('LTRIM', recent_wait, 0, 999) end
  return claimed
end
-- Nobody reached Redis for longer than half a lease: Redis itself stalled (SIGSTOP, a long fork) or every instance
-- was down. Leases could not be renewed meanwhile, so move them on by the gap instead of failing finished work.
local function heal_gap(running, heartbeat, now, lease)
  local last = tonumber(redis.call('GET', heartbeat) or now)
  redis.call('SET', heartbeat, now)
  local gap = now - last
  if gap > lease / 2 then
    local leases = redis.call('ZRANGE', running, 0, -1, 'WITHSCORES')
    for i = 1, #leases, 2 do redis.call('ZADD', running, tonumber(leases[i + 1]) + gap, leases[i]) end
  end
  return gap
end
"""

# KEYS: queued, running, stats, events, wake, arrival, job, log.
# ARGV: origin, id, max_queue, max_concurrent, maxlen, logmax, inverted priority (19 digits), status, event template,
# its stamps (JSON), field, value, ... Returns {accepted (1/0), queued count, created_at}. Idempotent: a retried call
# after a lost reply finds the record and accepts once. The creation time is Redis's (after the job's own fields).
ENQUEUE = (
    _PRELUDE
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

# KEYS: queued, running, stats, events, recent_wait. ARGV: origin (the worker), lease_ms, max_concurrent, maxlen,
# logmax, count, prefix, status, event template, its stamps (JSON). Claims up to `count` jobs (one call fills every
# free slot of an instance); returns their hashes, each as a flat list (with `stop` if a stop was requested).
CLAIM = (
    _PRELUDE
    + """
local count, P, status, template, stamps = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9], cjson.decode(ARGV[10])
return claim_jobs(P, KEYS, ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], count, status, template,
  stamps)
"""
)

# KEYS: job, log, events. ARGV: origin, maxlen, logmax, event JSON (without seq). One output event of a running
# job, with its next seq; nothing once the job has finished (a late publisher must not extend a retired log).
EMIT = (
    _PRELUDE
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
    _PRELUDE
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
local claimed = claim_jobs(P, {queued, running, stats, events, recent_wait}, worker, tonumber(ARGV[9]),
  tonumber(ARGV[10]), maxlen, logmax, tonumber(ARGV[8]), ARGV[11], ARGV[12], cjson.decode(ARGV[13]))
-- Freed places are news only to a worker that can take what is still waiting.
if redis.call('ZCARD', queued) > 0 then wake(wake_key) end
return {flags, claimed}
"""
)

# KEYS: queued, finished, stats, events, sizes, retained, finish_times, job, log, stdin.
# ARGV: origin, status, result JSON, event JSON, finished_at (Redis time, read with the job), maxlen, logmax,
# retention_s, retention_count, retention_bytes, prefix, record bytes, id. A queued job leaves the line as Python
# decided, only if it is still queued (a claim may have won the race): returns 1, else 0.
CANCEL = (
    _PRELUDE
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
    _PRELUDE
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
    _PRELUDE
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
    _PRELUDE
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
    _PRELUDE
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

# KEYS: job, stdin, events. ARGV: id, 'd' .. data or 'e' (end of input), budget, maxlen.
# Queues live input for a queued or running interactive job; at most `budget` bytes wait for the program at once.
# Returns {'ok'}, {'missing'}, {'conflict', status} or {'full', bytes waiting}.
STDIN = (
    _PRELUDE
    + """
local job, stdin, events = unpack(KEYS)
local id, item, budget, maxlen = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local status = redis.call('HGET', job, 'status')
if not status then return {'missing'} end
if (status ~= 'running' and status ~= 'queued') or redis.call('HGET', job, 'interactive') ~= 'true' then
  return {'conflict', status}
end
local size = #item - 1
local waiting = tonumber(redis.call('HGET', job, 'stdin_bytes') or 0)
if waiting + size > budget then return {'full', waiting} end
redis.call('HINCRBY', job, 'stdin_bytes', size)
redis.call('RPUSH', stdin, item)
redis.call('EXPIRE', stdin, 86400)
control(events, maxlen, cjson.encode({type = '_stdin', jobId = id}))
return {'ok'}
"""
)

# KEYS: job. ARGV: bytes the program read. They leave the job's input budget (nothing if the job is gone: a
# HINCRBY on a missing hash would create one without a TTL).
ACK_STDIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local left = redis.call('HINCRBY', KEYS[1], 'stdin_bytes', -tonumber(ARGV[1]))
if left < 0 then redis.call('HSET', KEYS[1], 'stdin_bytes', 0) end
return 1
"""

# KEYS: instances, instance_info. ARGV: instance, record JSON, ttl_ms, max instances.
# This instance's heartbeat; records older than the TTL are dropped, and past `max` the stalest: both keys stay
# bounded, and expire with the last instance.
HEARTBEAT = (
    _PRELUDE
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
