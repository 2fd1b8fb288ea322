"""The job journal: every job's latest state in SQLite, written off the event loop by one thread in batched commits.

The store tells the journal about each change (a cheap dict update on the loop); the writer thread takes whatever
has piled up, serializes it and commits it in one transaction. A job that changed several times between two
commits is written once, in its latest state (a no-op job is usually queued, run and finished within one batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..jobs import Job
from ..loops import settle
from . import rows
from .checkpoints import Checkpointer
from .rows import FINISHED, QUEUED, RUNNING, Op, Recovered

logger = logging.getLogger(__name__)

# Writes waiting for the writer (or taken and not yet committed): past this many, new jobs are kept in memory only
# (logged) until it catches up. Jobs already journaled are followed to their end: at most this plus the active jobs.
MAX_PENDING = 10_000
# Sequence numbers reserved ahead for a running job: after a crash its `worker_lost` event takes a number above
# any the job may have sent (the reservation is renewed when half of it is used).
SEQ_RESERVE = 1024
SWEEP_S = 5.0
# The writer lets writes gather this long after a wake-up: one commit for many jobs (and one write for a job that
# is queued, run and finished meanwhile). Each SQLite call also waits for the GIL, which a busy loop holds for up
# to 5 ms: fewer, larger batches are what keeps the journal's cost per job small.
GATHER_S = 0.02
# A submission is answered once its job is written, or after this long (a stalled disk: served from memory, logged).
ACK_TIMEOUT_S = 2.0
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
# At close, a failing journal is retried this long before what it holds is given up (logged).
CLOSE_TIMEOUT_S = 5.0


@dataclass(slots=True)
class JournalStats:
    commits: int = 0
    rows: int = 0
    dropped: int = 0  # jobs not journaled because the writer was behind by MAX_PENDING
    failures: int = 0  # commits that failed (disk full, I/O error); their writes were kept and retried
    failing: bool = False
    sweeps: int = 0
    swept: int = 0  # finished rows deleted by retention


class Journal:
    """Queued, running and finished jobs in `directory/jobs.db`, finished ones kept for `retention_seconds` within
    `max_bytes` (past it the owner holding the most loses its own oldest first, as in memory)."""

    def __init__(
        self,
        directory: Path,
        *,
        retention_seconds: float,
        max_bytes: int,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.path = directory / "jobs.db"
        self.stats = JournalStats()
        self._retention_s = retention_seconds
        self._max_bytes = max_bytes
        self._max_pending = max_pending
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, Op] = {}
        self._inflight = 0  # writes the writer has taken and not yet committed (they return on a failure)
        self._wake = threading.Event()
        self._closing = False
        # Acknowledged submissions: the writer numbers the batches it takes; a new job's submission is answered
        # once the batch that carries it is written (or ACK_TIMEOUT_S passed: a stalled disk degrades, as logged).
        self._taken = 0
        self._written = 0
        self._acks: list[tuple[int, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._urgent = threading.Event()  # a submission waits: no gathering for this batch (it ends one under way)
        self._known: set[str] = set()  # active jobs with a row (or a pending one): followed to their end
        self._ceilings: dict[str, int] = {}  # running jobs' reserved seqs
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._thread: threading.Thread | None = None
        self.checkpointer: Checkpointer | None = None  # the writer's, while it runs
        self._reader: ThreadPoolExecutor | None = None
        self._reader_db: sqlite3.Connection | None = None

    # -- lifecycle (blocking ones run in a thread) -----------------------------------------------------------

    def open(self, preload: int, preload_bytes: int) -> Recovered:
        """Lock the directory, open (or create) the database and read what the last run left. A corrupt file is
        set aside and a new one started (logged); anything else that stops it is a SettingsError, one line."""
        self._lock_fd = rows.take_lock(self.directory)
        now_ms = self._clock() * 1000.0
        horizon_ms = now_ms - self._retention_s * 1000.0
        moved = None
        try:
            try:
                self._db = rows.connect(self.path)
            except sqlite3.DatabaseError as exc:
                if not rows.is_corrupt(exc):
                    raise
                moved = rows.set_aside(self.path)
                logger.error("job journal %s is corrupt (%s): moved to %s, starting a new one", self.path, exc, moved)
                self._db = rows.connect(self.path)
            recovered = rows.recover(
                self._db, now_ms=now_ms, horizon_ms=horizon_ms, preload=preload, preload_bytes=preload_bytes
            )
        except (sqlite3.Error, OSError) as exc:
            self._release()
            raise rows.cannot(self.directory, str(exc)) from None
        except BaseException:
            self._release()
            raise
        recovered.set_aside = moved
        self._known.update(job.id for job in (*recovered.queued, *recovered.lost))
        return recovered

    def start(self) -> None:
        self.checkpointer = Checkpointer(self.path)
        self._thread = threading.Thread(target=self._run, name="conveyor-journal", daemon=True)
        self._thread.start()
        # Reads of evicted results: one thread with its own connection (WAL lets it read while the writer writes).
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="conveyor-journal-read")

    async def close(self) -> None:
        """Write what is pending (a failing disk is retried CLOSE_TIMEOUT_S), then close the files."""
        with self._lock:
            self._closing = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(self._reader, self._close_reader)
            self._reader.shutdown(wait=True)
        self._release()

    def _release(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # and with it the directory's lock
            self._lock_fd = None

    # -- what the store tells it (on the event loop; never blocks) -------------------------------------------

    def queued(self, job: Job) -> int | None:
        """A new job: its whole row (submission, limits, owner, tests, callback...), unless the writer is behind.
        Returns the number of the batch that will carry it (see `written`), None when it was left out."""
        with self._lock:
            if self._behind():
                self._drop(job)
                return None
            self._known.add(job.id)
            # Seqs reserved from the first write: a job that starts before its claim is written still has them.
            self._merge(job.id, Op(QUEUED, job, None, job.seq + SEQ_RESERVE, awaited=True))
            self._urgent.set()
            batch = self._taken + 1
        self._wake.set()
        return batch

    async def written(self, batch: int) -> bool:
        """Wait until batch number `batch` is in the file (True), or ACK_TIMEOUT_S (False: the disk is behind)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._written >= batch:
                return True
            future: asyncio.Future[None] = loop.create_future()
            self._acks.append((batch, future))
            self._loop = loop
        timer = loop.call_later(ACK_TIMEOUT_S, settle, future)  # a timer, not asyncio.timeout: cheaper, once per job
        try:
            await future
        finally:
            timer.cancel()
        return self._written >= batch

    def _acknowledge(self, batch: int) -> None:
        """In the writer: batch number `batch` is written; wake the submissions waiting for it or an earlier one."""
        with self._lock:
            self._written = batch
            ready = [future for number, future in self._acks if number <= batch]
            self._acks = [(number, future) for number, future in self._acks if number > batch]
            loop = self._loop
        if ready and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, *ready)

    def running(self, job: Job) -> None:
        """Claimed (or past half its reserved seqs): the row says running, with seqs reserved ahead."""
        ceiling = job.seq + SEQ_RESERVE
        self._ceilings[job.id] = ceiling
        if job.id in self._known:
            with self._lock:
                self._merge(job.id, Op(RUNNING, None, None, ceiling))
            self._wake.set()

    def emitted(self, job: Job) -> None:
        """An event of a running job took a seq: renew the reservation when half of it is used."""
        ceiling = self._ceilings.get(job.id)
        if ceiling is not None and job.seq > ceiling - SEQ_RESERVE // 2:
            self.running(job)

    def finished(self, job: Job, log: bytes) -> None:
        """The job's final row with its event log (a job never journaled is left out while the writer is behind)."""
        self._ceilings.pop(job.id, None)
        with self._lock:
            if job.id not in self._known and self._behind():
                self._drop(job)
                return
            self._known.discard(job.id)
            self._merge(job.id, Op(FINISHED, job, log, 0))
        self._wake.set()

    def _behind(self) -> bool:
        return len(self._pending) + self._inflight >= self._max_pending

    def _drop(self, job: Job) -> None:
        self.stats.dropped += 1
        if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
            logger.error(
                "job %s: the job journal is %d writes behind (%d jobs kept in memory only so far): it would not "
                "survive a restart",
                job.id,
                len(self._pending) + self._inflight,
                self.stats.dropped,
            )

    def _merge(self, job_id: str, op: Op) -> None:
        """Under the lock: a job's newer write over its older pending one. A whole row stays whole (its row may
        not exist yet); a state-only write then only moves its state and reservation."""
        old = self._pending.get(job_id)
        if old is not None:
            if op.job is None and old.job is not None:
                old.seq_hi = max(old.seq_hi, op.seq_hi)
                if old.state == QUEUED:
                    old.state = op.state
                return
            op.seq_hi = max(op.seq_hi, old.seq_hi)
            op.awaited = op.awaited or old.awaited
        self._pending[job_id] = op

    # -- reads -----------------------------------------------------------------------------------------------

    async def read(self, job_id: str) -> tuple[Job, bytes] | None:
        """A finished job within retention and its event log, pending or written, or None."""
        with self._lock:
            op = self._pending.get(job_id)
        if op is not None and op.job is not None and op.state == FINISHED:
            return op.job, op.log or b""
        if self._reader is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._read, job_id)

    def _read(self, job_id: str) -> tuple[Job, bytes] | None:
        horizon_ms = (self._clock() - self._retention_s) * 1000.0
        try:
            if self._reader_db is None:
                self._reader_db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            row = self._reader_db.execute(
                "SELECT job, log FROM jobs WHERE id = ? AND state = 'finished' AND finished_at >= ?",
                (job_id, horizon_ms),
            ).fetchone()
            return None if row is None else (rows.decode_job(row[0]), row[1] or b"")
        except (sqlite3.Error, ValueError, TypeError, KeyError) as exc:
            logger.warning("job %s: could not be read from the job journal (%s)", job_id, exc)
            return None

    def _close_reader(self) -> None:
        if self._reader_db is not None:
            self._reader_db.close()
            self._reader_db = None

    # -- the writer thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        next_sweep = 0.0  # at once: rows that expired while the server was down go first
        failures = 0
        gave_up_at: float | None = None
        while True:
            if not self._closing and self._wake.wait(SWEEP_S):
                self._urgent.wait(GATHER_S)  # gather state changes, unless a submission waits (now or meanwhile)
            self._wake.clear()
            batch, closing, number = self._take()
            first, later = rows.split(batch)
            ok = self._commit(first, later) if first else True
            if ok:
                self._acknowledge(number)
            if ok and later:
                ok = self._commit(later, {})
            if ok and time.monotonic() >= next_sweep:
                ok = self._sweep()
                next_sweep = time.monotonic() + SWEEP_S
            if ok:
                failures = 0
                with self._lock:
                    if closing and not self._pending:
                        break
                continue
            failures += 1
            if closing:
                gave_up_at = gave_up_at or time.monotonic() + CLOSE_TIMEOUT_S
                if time.monotonic() >= gave_up_at:
                    logger.error("job journal: %d writes could not be stored before exit", len(self._pending))
                    break
            time.sleep(BACKOFF_S[min(failures, len(BACKOFF_S)) - 1])
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Fold the write-ahead log into the file, leaving it empty (a clean close)."""
        if self.checkpointer is not None:
            self.checkpointer.close()
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _take(self) -> tuple[dict[str, Op], bool, int]:
        """The pending writes (now in flight), whether the journal is closing, and the batch's number."""
        with self._lock:
            batch, self._pending = self._pending, {}
            self._inflight = len(batch)
            self._urgent.clear()
            self._taken += 1
            return batch, self._closing, self._taken

    def _commit(self, batch: dict[str, Op], after: dict[str, Op]) -> bool:
        """One transaction; `after` is the rest of the batch taken, still to write (returned with it on a failure)."""
        try:
            assert self._db is not None
            size = rows.write_batch(self._db, batch, keep_finished=self._retention_s > 0 and self._max_bytes > 0)
        except sqlite3.Error as exc:
            self._failed(exc)
            with self._lock:  # back under the writes that came meanwhile, to be retried
                newer, self._pending = self._pending, {**batch, **after}
                for job_id, op in newer.items():
                    self._merge(job_id, op)
                self._inflight = 0
            return False
        with self._lock:
            self._inflight = len(after)
        if self.checkpointer is not None:
            self.checkpointer.committed(size)
        self.stats.commits += 1
        self.stats.rows += len(batch)
        self._succeeded()
        return True

    def _sweep(self) -> bool:
        """Retention on disk (rows.sweep)."""
        assert self._db is not None
        try:
            swept = rows.sweep(
                self._db, horizon_ms=(self._clock() - self._retention_s) * 1000.0, max_bytes=self._max_bytes
            )
        except sqlite3.Error as exc:
            self._failed(exc)
            return False
        self.stats.sweeps += 1
        self.stats.swept += swept
        self._succeeded()
        return True

    def _failed(self, exc: sqlite3.Error) -> None:
        assert self._db is not None
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")
        self.stats.failures += 1
        if not self.stats.failing:
            self.stats.failing = True
            logger.error(
                "job journal %s: writing failed (%s); jobs are served from memory and the writes retried, but "
                "what finishes meanwhile survives a restart only once they succeed",
                self.path,
                exc,
            )

    def _succeeded(self) -> None:
        if self.stats.failing:
            self.stats.failing = False
            logger.warning("job journal %s: writing again (after %d failed attempts)", self.path, self.stats.failures)
