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

The scripts live by what they do: a job's way through the queue (`lifecycle`), decisions on a job someone else holds
and the leases (`decisions`), live input (`inputs`) and the views' reads (`views`); `prelude` holds the Lua helpers
each of them starts with.
"""

from __future__ import annotations

from .decisions import CANCEL, EXPIRED, RECLAIM, RENEW, STOP
from .inputs import ACK_STDIN, STDIN
from .lifecycle import CLAIM, EMIT, ENQUEUE, FINISH
from .views import HEARTBEAT, POSITIONS

__all__ = [
    "ACK_STDIN",
    "CANCEL",
    "CLAIM",
    "EMIT",
    "ENQUEUE",
    "EXPIRED",
    "FINISH",
    "HEARTBEAT",
    "POSITIONS",
    "RECLAIM",
    "RENEW",
    "STDIN",
    "STOP",
]
