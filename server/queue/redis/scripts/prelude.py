"""The Lua helpers every script of the Redis store starts with: the clock, events, wake-ups, retention, claims."""

from __future__ import annotations

# Shared helpers, prepended to each script. ORIGIN is the instance that runs the script.
PRELUDE = """
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
-- within it), under a lease; returns their hashes. Q: {queued, running, stats, events, recent_wait, wake}.
local function claim_jobs(P, Q, worker, lease, maxc, maxlen, logmax, count, status, template, stamps)
  local queued_key, running_key, stats, events, recent_wait, wake_key = Q[1], Q[2], Q[3], Q[4], Q[5], Q[6]
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
  -- An empty queue leaves no wake-ups behind: a stale one sends an idle instance to claim nothing (with two
  -- instances, a round trip for each job an enqueue announced and the other one took).
  if redis.call('EXISTS', queued_key) == 0 then redis.call('DEL', wake_key) end
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
