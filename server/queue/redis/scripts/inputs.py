"""A running job's live input: queue it within its budget, give the bytes read back."""

from __future__ import annotations

from .prelude import PRELUDE

# KEYS: job, stdin, events. ARGV: id, 'd' .. data or 'e' (end of input), budget, maxlen.
# Queues live input for a queued or running interactive job; at most `budget` bytes wait for the program at once.
# Returns {'ok'}, {'missing'}, {'conflict', status} or {'full', bytes waiting}.
STDIN = (
    PRELUDE
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
