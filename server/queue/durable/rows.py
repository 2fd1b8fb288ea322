"""The journal's file: its directory lock, the SQLite schema, and jobs as rows (one JSON blob each)."""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ...errors import SettingsError
from ..jobs import Job, JobStatus, Limits, SourceFile, TestCase
from ..records import record_bytes, result_from
from . import checkpoints

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# One row per job. `state` is what the store last said (queued, running, finished); `job` is the whole Job as JSON
# (submission, status, result, seq), `log` a finished job's event log (the store's newline-joined blob).
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  state TEXT NOT NULL,
  owner TEXT NOT NULL,
  finished_at REAL,
  seq_hi INTEGER NOT NULL DEFAULT 0,
  size INTEGER NOT NULL,
  job BLOB NOT NULL,
  log BLOB
);
CREATE INDEX IF NOT EXISTS jobs_by_age ON jobs (finished_at) WHERE state = 'finished';
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, finished_at) WHERE state = 'finished';
CREATE INDEX IF NOT EXISTS jobs_active ON jobs (state) WHERE state != 'finished';
"""
QUEUED, RUNNING, FINISHED = "queued", "running", "finished"
# What a row costs beside its blobs (key, columns, index entries), for the disk bound.
ROW_OVERHEAD = 256
# A row past this (a job's output, or its code and stdin) is written after the batch's others (`split`).
LARGE_ROW = 64 << 10
# SQLite's primary result codes (the low byte of an extended code).
_CORRUPT = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB

_JOB_FIELDS = frozenset(f.name for f in dataclasses.fields(Job)) - {"position"}
_NESTED: dict[str, Callable[[Any], Any]] = {
    "files": lambda items: None if items is None else [SourceFile(**item) for item in items],
    "limits": lambda item: Limits(**item),
    "tests": lambda items: None if items is None else [TestCase(**item) for item in items],
    "status": JobStatus,
    "result": lambda item: None if item is None else result_from(item),
}


def decode_job(data: bytes) -> Job:
    """A Job from its row's JSON (fields this version does not know are ignored)."""
    raw = orjson.loads(data)
    values = {name: value for name, value in raw.items() if name in _JOB_FIELDS}
    for name, build in _NESTED.items():
        if name in values:
            values[name] = build(values[name])
    return Job(**values)


@dataclass(slots=True)
class Recovered:
    """What the journal held at start: jobs to run again, jobs that were running (lost), finished ones (newest,
    oldest first, with their event logs), and rows that could not be read."""

    queued: list[Job] = field(default_factory=list)
    lost: list[Job] = field(default_factory=list)
    finished: list[tuple[Job, bytes]] = field(default_factory=list)
    unreadable: int = 0
    set_aside: Path | None = None


def cannot(directory: Path, reason: str) -> SettingsError:
    return SettingsError(
        f"DATA_DIR={directory}: cannot keep the job journal there ({reason}); choose a writable DATA_DIR, or set "
        "DURABLE=0 to keep jobs in memory only"
    )


def take_lock(directory: Path) -> int:
    """Make the directory (private: it holds users' code and output) and lock it for this process."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # mkdir's mode is not applied to a directory made beforehand (by an operator, 0755): the callback outbox
        # beside the journal creates its files as the umask allows, so the directory is what keeps them private.
        if directory.stat().st_mode & 0o077:
            directory.chmod(0o700)
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise cannot(directory, exc.strerror or str(exc)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SettingsError(
            f"DATA_DIR={directory}: another Conveyor server (pid {holder}) keeps its jobs there; give each server "
            "its own DATA_DIR"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:
        os.close(fd)
        raise cannot(directory, exc.strerror or str(exc)) from None
    return fd


def connect(path: Path) -> sqlite3.Connection:
    """The database, in WAL mode, its schema in place. Raises sqlite3.DatabaseError (corrupt: see `is_corrupt`)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # private before SQLite creates it
    os.close(fd)
    # Autocommit: the writer opens its own transactions. Used by one thread at a time (the writer).
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect on a new file: deleted rows give disk back
        db.execute("PRAGMA journal_mode = WAL")
        # A commit survives the process (SIGKILL included) without an fsync each: only a power loss can take the
        # last ones, and the WAL is fsynced at every checkpoint.
        db.execute("PRAGMA synchronous = NORMAL")
        # Checkpoints are the Checkpointer's, in a thread of its own; SQLite's in the commit only past the bound.
        db.execute(f"PRAGMA wal_autocheckpoint = {checkpoints.WAL_MAX_PAGES}")
        db.execute(f"PRAGMA journal_size_limit = {checkpoints.CHECKPOINT_BYTES}")
        (check,) = db.execute("PRAGMA quick_check(1)").fetchone()
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise SettingsError(f"{path} was written by a newer Conveyor (schema {version}); upgrade, or move it away")
        db.executescript(SCHEMA)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.close()
        raise
    return db


def is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # ours (quick_check) or one without a code: anything but an operational failure
        return not isinstance(exc, sqlite3.OperationalError)
    return code & 0xFF in _CORRUPT


def set_aside(path: Path) -> Path:
    """Move a corrupt database (and its WAL, which must not be replayed into a new one) out of the way."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(moved.with_name(moved.name + suffix))
    return moved


def recover(db: sqlite3.Connection, *, now_ms: float, horizon_ms: float, preload: int, preload_bytes: int) -> Recovered:
    """Read what a previous run left: active rows (queued to run again, running ones lost) and the newest `preload`
    finished rows within retention and `preload_bytes` (memory's budget: the rest is read from disk when asked).
    A row whose JSON is newer than its state (the process died between the two writes) is judged by its JSON: a
    job that has its result is finished, one that had started was running."""
    out = Recovered()
    _recover_active(db, out, now_ms)
    _recover_finished(db, out, horizon_ms, preload, preload_bytes)
    out.queued.sort(key=lambda job: (-job.priority, job.created_at))
    return out


def _recover_active(db: sqlite3.Connection, out: Recovered, now_ms: float) -> None:
    finished_late: list[tuple[str, float | None]] = []
    for job_id, state, seq_hi, data in db.execute("SELECT id, state, seq_hi, job FROM jobs WHERE state != 'finished'"):
        try:
            job = decode_job(data)
        except (ValueError, TypeError, KeyError):
            logger.error("job %s: its journal row cannot be read; skipped", job_id)
            out.unreadable += 1
            continue
        if job.status.finished and job.result is not None:
            finished_late.append((job_id, job.finished_at or now_ms))  # read back with the finished ones below
        else:
            # Numbered above any seq it may have sent: one claimed just before the crash (its claim not yet
            # written) runs again, and its watchers must not take its new events for ones they have seen.
            job.seq = max(job.seq, seq_hi)
            (out.lost if job.status is JobStatus.RUNNING or state == RUNNING else out.queued).append(job)
    if finished_late:
        db.executemany(
            "UPDATE jobs SET state = 'finished', finished_at = ? WHERE id = ?", [(t, i) for i, t in finished_late]
        )


def _recover_finished(
    db: sqlite3.Connection, out: Recovered, horizon_ms: float, preload: int, preload_bytes: int
) -> None:
    # Sizes first (the blobs stay on disk): the disk may hold far more than memory keeps (DATA_MAX_MB, a GB).
    chosen, held = [], 0
    for job_id, size in db.execute(
        "SELECT id, size FROM jobs WHERE state = 'finished' AND finished_at >= ? ORDER BY finished_at DESC LIMIT ?",
        (horizon_ms, preload),
    ):
        held += size
        if held > preload_bytes:
            break
        chosen.append(job_id)
    rows = [db.execute("SELECT id, job, log FROM jobs WHERE id = ?", (job_id,)).fetchone() for job_id in chosen]
    for job_id, data, log in reversed(rows):
        try:
            out.finished.append((decode_job(data), log or b""))
        except (ValueError, TypeError, KeyError):
            logger.error("job %s: its journal row cannot be read; skipped", job_id)
            out.unreadable += 1


# -- writing --------------------------------------------------------------------------------------------------

_UPSERT = (
    "INSERT INTO jobs (id, state, owner, finished_at, seq_hi, size, job, log) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET state = excluded.state, finished_at = excluded.finished_at, "
    "seq_hi = max(seq_hi, excluded.seq_hi), size = excluded.size, job = excluded.job, log = excluded.log"
)
_RESERVE = "UPDATE jobs SET state = ?, seq_hi = max(seq_hi, ?) WHERE id = ? AND state != 'finished'"


@dataclass(slots=True)
class Op:
    """A job's pending write: the whole row (`job` set) or only its state and reserved seq (`job` None)."""

    state: str
    job: Job | None
    log: bytes | None
    seq_hi: int
    awaited: bool = False  # a submission waits until it is written (Journal.queued), merged writes included


def split(batch: dict[str, Op]) -> tuple[dict[str, Op], dict[str, Op]]:
    """A batch as two transactions: what submissions wait for and every small write, then the large rows nobody
    waits for. A finished job's megabyte of output took 10-25 ms to write here, and a submission gathered into the
    same batch was answered only after it."""
    later = {
        job_id: op
        for job_id, op in batch.items()
        if not op.awaited and op.job is not None and len(op.log or b"") + record_bytes(op.job) > LARGE_ROW
    }
    if not later:
        return batch, later
    return {job_id: op for job_id, op in batch.items() if job_id not in later}, later


def write_batch(db: sqlite3.Connection, batch: dict[str, Op], *, keep_finished: bool) -> int:
    """One transaction for a batch of pending writes: whole rows, state-only updates, and (when nothing finished is
    kept) deletes; returns about how many bytes it wrote. A job that cannot be encoded is logged and left out;
    sqlite3.Error rolls nothing back here."""
    puts, states, deletes = [], [], []
    written = 0
    for job_id, op in batch.items():
        if op.job is None:
            states.append((op.state, op.seq_hi, job_id))
        elif op.state == FINISHED and not keep_finished:
            deletes.append((job_id,))
        else:
            try:
                data = orjson.dumps(op.job)  # one C call under the GIL: a consistent snapshot of the job
            except TypeError as exc:
                logger.error("job %s: cannot be journaled (%s)", job_id, exc)
                continue
            size = len(data) + len(op.log or b"") + ROW_OVERHEAD
            done = op.job.finished_at if op.state == FINISHED else None
            puts.append((job_id, op.state, op.job.owner, done, op.seq_hi, size, data, op.log))
            written += size
    db.execute("BEGIN IMMEDIATE")
    for statement, values in ((_UPSERT, puts), (_RESERVE, states), ("DELETE FROM jobs WHERE id = ?", deletes)):
        if values:
            db.executemany(statement, values)
    db.execute("COMMIT")
    return written + ROW_OVERHEAD * (len(states) + len(deletes))


def sweep(db: sqlite3.Connection, *, horizon_ms: float, max_bytes: int) -> int:
    """Retention on disk: finished rows past their age go, then, past `max_bytes`, the oldest of the owner holding
    the most (down to the next holder), until the rest fits. Returns how many rows went."""
    db.execute("BEGIN IMMEDIATE")
    deleted = db.execute("DELETE FROM jobs WHERE state = 'finished' AND finished_at < ?", (horizon_ms,))
    swept = max(0, deleted.rowcount)
    (total,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM jobs WHERE state = 'finished'").fetchone()
    while total > max_bytes:
        holders = db.execute(
            "SELECT owner, SUM(size) AS held FROM jobs WHERE state = 'finished' GROUP BY owner "
            "ORDER BY held DESC LIMIT 2"
        ).fetchall()
        (owner, held), floor = holders[0], holders[1][1] if len(holders) > 1 else 0
        victims = []
        for job_id, size in db.execute(
            "SELECT id, size FROM jobs WHERE state = 'finished' AND owner = ? ORDER BY finished_at",
            (owner,),
        ):
            victims.append((job_id,))
            total, held = total - size, held - size
            if total <= max_bytes or held < floor:
                break
        db.executemany("DELETE FROM jobs WHERE id = ?", victims)
        swept += len(victims)
    db.execute("COMMIT")
    if swept:
        db.execute("PRAGMA incremental_vacuum")  # the freed pages go back to the disk
    return swept
