"""Retention: the finished jobs the embedded store keeps, bounded by age, count and bytes, shared fairly per owner."""

from __future__ import annotations

import itertools
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator

import orjson

from . import transitions
from .allocator import Trimmer
from .events import Event
from .jobs import Job
from .records import held_bytes


class Record:
    """A job and what the store keeps beside it: its event log, pending input, a stop request. Small on purpose:
    a queued job holds one of these, so the input deque comes only with the first input."""

    __slots__ = ("_log", "input", "input_bytes", "job", "log_blob", "size", "stop", "stored_at")

    def __init__(self, job: Job, log: list[Event] | None = None) -> None:
        self.job = job
        # None: the log is the job's queued event alone (seq 1), built again from the job when it is read. A deep
        # queue then holds no event per waiting job; the first event after it (claim, cancel) writes it down.
        self._log = log
        self.log_blob = b""  # once finished: the log as one object, so evicting it gives the memory back
        self.input: deque[bytes | None] | None = None
        self.input_bytes = 0
        self.stop: str | None = None
        self.size = 0
        self.stored_at = 0.0

    def seal(self, stored_at: float) -> int:
        """The job has finished: its log becomes one bytes object, its input goes; returns the bytes it holds."""
        # One bytes object per finished log instead of many small dicts and strings: freed in one piece, and the
        # allocator gives it back (measured in bench/bench_faults.py: RSS after evicting 2,000 1 MiB results).
        self.log_blob = b"\n".join([orjson.dumps(e) for e in self._whole()])
        self._log = []
        self.input = None
        # Counted as it is held (a character of output may take 4 bytes here), not as characters.
        self.size = held_bytes(self.job) + sys.getsizeof(self.log_blob)
        self.stored_at = stored_at
        return self.size

    def append(self, event: Event) -> None:
        if self._log is None:
            self._log = [*self._whole(), event]
        else:
            self._log.append(event)

    def events(self) -> list[Event]:
        """The log, live or sealed."""
        if self.log_blob:
            return [orjson.loads(line) for line in self.log_blob.split(b"\n") if line]
        return self._whole()

    def _whole(self) -> list[Event]:
        if self._log is not None:
            return self._log
        event = transitions.queued_event(self.job)
        event["seq"] = 1
        return [event]


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
        self._finished[job.id] = record
        self.bytes += record.size
        owned = self._owned.get(job.owner)
        if owned is None:
            owned = self._owned[job.owner] = OrderedDict()
        owned[job.id] = record
        self._owned_bytes[job.owner] = self._owned_bytes.get(job.owner, 0) + record.size

    def evict(self) -> None:
        finished = self._finished
        horizon = self.clock() - self.seconds
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
            self._forget(victim)
        self.trimmer.maybe_trim()

    def _most_jobs(self) -> str:
        owned = self._owned
        if len(owned) == 1:
            return next(iter(owned))
        return max(owned, key=lambda owner: len(owned[owner]))

    def _oldest_of(self, owner: str) -> Record:
        return next(iter(self._owned[owner].values()))

    def _forget(self, record: Record) -> None:
        job = record.job
        del self._finished[job.id]
        self.bytes -= record.size
        owned = self._owned[job.owner]
        del owned[job.id]
        self.trimmer.freed(record.size)
        left = self._owned_bytes.pop(job.owner) - record.size
        if owned:
            self._owned_bytes[job.owner] = left
        else:
            del self._owned[job.owner]
