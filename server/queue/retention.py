"""Retention: the finished jobs the embedded store keeps, bounded by age, count and bytes, shared fairly per owner."""

from __future__ import annotations

import itertools
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping

import orjson

from . import transitions
from .allocator import Trimmer
from .events import Event
from .jobs import Job
from .records import held_bytes


class Record:
    """A job and what the store keeps beside it: its event log, pending input, a stop request. Small on purpose:
    a queued job holds one of these, so the input deque comes only with the first input."""

    __slots__ = ("_blob", "_derived", "_log", "input", "input_bytes", "job", "size", "stop", "stored_at")

    def __init__(self, job: Job, log: list[Event] | None = None) -> None:
        self.job = job
        # None: the log is the job's lifecycle alone (queued, running, its end: `_derived` of them, seq 1 on), each
        # built again from the job when it is read. Most jobs print nothing, so a store then holds no event per
        # waiting job and writes none down per finished one; the first other event (output) writes the log down.
        self._log = log
        self._derived = 1 if log is None else 0
        self._blob = b""  # once finished: a written-down log as one object, so evicting it gives the memory back
        self.input: deque[bytes | None] | None = None
        self.input_bytes = 0
        self.stop: str | None = None
        self.size = 0
        self.stored_at = 0.0

    @property
    def log_blob(self) -> bytes:
        """The log as JSON lines (what the durable store journals): the sealed one, or built from the job."""
        if self._blob or self._log is not None:
            return self._blob
        return b"\n".join([orjson.dumps(e) for e in self._whole()])

    @log_blob.setter
    def log_blob(self, blob: bytes) -> None:
        self._blob = blob
        self._log, self._derived = [], 0

    def seal(self, stored_at: float) -> int:
        """The job has finished: a written-down log becomes one bytes object, its input goes; returns the bytes it
        holds. A lifecycle-only log stays derived: the job is all it holds."""
        if self._log is not None:
            # One bytes object per finished log instead of many small dicts and strings: freed in one piece, and
            # the allocator gives it back (bench/bench_faults.py: RSS after evicting 2,000 1 MiB results).
            self._blob = b"\n".join([orjson.dumps(e) for e in self._log])
            self._log = []
        self.input = None
        # Counted as it is held (a character of output may take 4 bytes here), not as characters.
        self.size = held_bytes(self.job) + (sys.getsizeof(self._blob) if self._blob else 0)
        self.stored_at = stored_at
        return self.size

    def lifecycle(self, event: Event) -> None:
        """Log a lifecycle event (a claim, an end) just built from the job as it is now: kept derived while it
        follows on the ones before it (the job's fields it shows do not change after), else written down."""
        if self._log is None and event["seq"] == self._derived + 1:
            self._derived += 1
        else:
            self.append(event)

    def append(self, event: Event) -> None:
        if self._log is None:
            self._log = [*self._whole(), event]
            self._derived = 0
        else:
            self._log.append(event)

    def events(self) -> list[Event]:
        """The log, live or sealed."""
        if self._blob:
            return [orjson.loads(line) for line in self._blob.split(b"\n") if line]
        return self._whole()

    def _whole(self) -> list[Event]:
        if self._log is not None:
            return self._log
        job = self.job
        event = transitions.queued_event(job)
        event["seq"] = 1
        events = [event]
        if self._derived > 1:
            # The second: the claim, or the end of a job cancelled while it waited (it never started).
            kinds = [transitions.running_event, transitions.terminal_event]
            if job.started_at is None:
                kinds = kinds[1:]
            for seq, build in enumerate(kinds[: self._derived - 1], 2):
                event = build(job)
                event["seq"] = seq
                events.append(event)
        return events


class Retention:
    """Finished records, oldest first. Past its age a job goes, oldest first. Past the count or byte bound the
    owner holding the most (jobs, or bytes) gives up its own oldest: one client's flood evicts its own jobs, not
    everyone else's. Zero for any bound keeps nothing."""

    def __init__(
        self, *, seconds: float, count: int, max_bytes: int, clock: Callable[[], float], trimmer: Trimmer
    ) -> None:
        self.seconds = seconds
        self.count = count
        self.max_bytes = max_bytes
        self.clock = clock
        self.trimmer = trimmer
        self.bytes = 0
        self._finished: OrderedDict[str, Record] = OrderedDict()
        # Read-only for others (`job_id in records`): the records kept, oldest first.
        self.records: Mapping[str, Record] = self._finished
        # Each owner's finished jobs (oldest first) and their bytes: past a bound the largest holder gives way.
        self._owned: dict[str, OrderedDict[str, Record]] = {}
        self._owned_bytes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._finished)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._finished

    def get(self, job_id: str) -> Record | None:
        return self._finished.get(job_id)

    def newest(self, limit: int) -> Iterator[Record]:
        """The newest `limit` records, newest first."""
        return itertools.islice(reversed(self._finished.values()), limit)

    def keep(self, record: Record) -> None:
        """Hold a sealed record (its size and time set); the caller evicts when it is done adding."""
        job = record.job
        job_id, owner, size = job.id, job.owner, record.size
        self._finished[job_id] = record
        self.bytes += size
        owned = self._owned.get(owner)
        if owned is None:
            owned = self._owned[owner] = OrderedDict()
            self._owned_bytes[owner] = 0
        owned[job_id] = record
        self._owned_bytes[owner] += size

    def evict(self, now: float | None = None) -> None:
        """Let go of what is past a bound; `now` is this clock's time, when the caller has read it already."""
        finished = self._finished
        horizon = (self.clock() if now is None else now) - self.seconds
        freed = 0
        if len(self._owned) == 1:
            # One owner (the usual case: one client, or none): whichever bound is passed, the oldest goes first, so
            # past the count or bytes it goes without a look at its age.
            while finished and (len(finished) > self.count or self.bytes > self.max_bytes):
                freed += self._forget(finished.popitem(last=False)[1], listed=False)
        while finished:
            record = next(iter(finished.values()))
            if record.stored_at <= horizon:
                victim = record
            elif self.bytes > self.max_bytes:
                victim = self._oldest_of(max(self._owned_bytes, key=self._owned_bytes.__getitem__))
            elif len(finished) > self.count:
                victim = self._oldest_of(self._most_jobs())
            else:
                break
            freed += self._forget(victim)
        if freed:
            self.trimmer.freed(freed)  # and trims if they add up

    def _most_jobs(self) -> str:
        owned = self._owned
        if len(owned) == 1:
            return next(iter(owned))
        return max(owned, key=lambda owner: len(owned[owner]))

    def _oldest_of(self, owner: str) -> Record:
        return next(iter(self._owned[owner].values()))

    def _forget(self, record: Record, *, listed: bool = True) -> int:
        """Let go of `record` (`listed`: still in `_finished`); returns its bytes."""
        job = record.job
        job_id, owner, size = job.id, job.owner, record.size
        if listed:
            del self._finished[job_id]
        self.bytes -= size
        owned = self._owned[owner]
        del owned[job_id]
        if owned:
            self._owned_bytes[owner] -= size
        else:
            del self._owned[owner], self._owned_bytes[owner]
        return size
