"""The embedded store's callback outbox: one SQLite file in DATA_DIR, synced to disk on every change."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from ..errors import SettingsError
from .outbox import CLAIM_SCAN, Armed, Claim, Delivery, Entry, OutboxStore

T = TypeVar("T")
DB_NAME = "callbacks.sqlite3"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    method TEXT NOT NULL,
    host TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    due_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner INTEGER NOT NULL DEFAULT 0  -- the pid of the process whose claim it is, 0 when unclaimed
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (due_at);
CREATE TABLE IF NOT EXISTS armed (
    key TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    method TEXT NOT NULL,
    format TEXT NOT NULL,
    created_at REAL NOT NULL,
    check_at REAL NOT NULL,
    owner INTEGER NOT NULL  -- the pid of the process that armed it: its follower fills it while it lives
);
CREATE INDEX IF NOT EXISTS armed_check ON armed (check_at);
"""


class SqliteOutbox(OutboxStore):
    """The embedded store's outbox: one SQLite file in DATA_DIR.

    Every statement runs on one thread of its own, off the event loop; each change is an immediate transaction
    synced to disk (synchronous=FULL) before the call returns, so what was added survives a SIGKILL or a power cut.
    Servers of one host sharing a DATA_DIR share the outbox as instances on Redis do; a claim names its process, and
    one whose process is gone is freed when a server opens the file (on another host a lease would have to run out).
    """

    def __init__(self, directory: Path, *, now: Callable[[], float]) -> None:
        self._directory = directory
        self._now = now
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callback-outbox")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            assert self._db is not None, "open() first"
            return _transaction(self._db, fn)

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._open)

    def _open(self) -> None:
        try:
            # Callback bodies are jobs' output: private to the server's user, however the directory came to be
            # (the job journal does the same when it is on); SQLite gives its -wal and -shm files the file's mode.
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._directory.chmod(0o700)
            os.close(os.open(self._directory / DB_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            # Autocommit: _transaction opens each one itself, BEGIN IMMEDIATE (a writer's lock from its start).
            db = sqlite3.connect(self._directory / DB_NAME, isolation_level=None, timeout=30.0)
        except (OSError, sqlite3.Error) as exc:
            raise SettingsError(f"DATA_DIR={str(self._directory)!r} is not usable: {exc}") from None
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        _transaction(db, self._free_dead_claims)
        self._db = db

    def _free_dead_claims(self, db: sqlite3.Connection) -> None:
        """Claims of processes gone (SIGKILLed mid-attempt) are due now; our own pid's are a predecessor's."""
        owners = [owner for (owner,) in db.execute("SELECT DISTINCT owner FROM outbox WHERE owner != 0")]
        for owner in owners:
            if owner == os.getpid() or not _alive(owner):
                db.execute("UPDATE outbox SET due_at = ?, owner = 0 WHERE owner = ?", (self._now(), owner))

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, shut)
        self._thread.shutdown(wait=True)

    async def add(self, entry: Entry, capacity: int) -> bool:
        d = entry.delivery

        def add(db: sqlite3.Connection) -> bool:
            if _kept(db, d.key):
                return True
            if _held(db) >= capacity:
                return False
            _insert(db, entry, self._now())
            return True

        return await self._run(add)

    async def claim(self, claim: Claim) -> list[Entry]:
        def take(db: sqlite3.Connection) -> list[Entry]:
            due = db.execute(
                "SELECT key, host FROM outbox WHERE due_at <= ? ORDER BY due_at LIMIT ?", (claim.now, CLAIM_SCAN)
            ).fetchall()
            picked = claim.pick(due)
            entries = []
            for key in picked:
                db.execute(
                    "UPDATE outbox SET due_at = ?, owner = ? WHERE key = ?", (claim.lease_until, os.getpid(), key)
                )
                job_id, url, method, body, created_at, attempts = db.execute(
                    "SELECT job_id, url, method, body, created_at, attempts FROM outbox WHERE key = ?", (key,)
                ).fetchone()
                entries.append(Entry(Delivery(job_id, url, bytes(body), method), created_at, attempts))
            return entries

        return await self._run(take)

    async def remove(self, key: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM outbox WHERE key = ?", (key,)))

    async def reschedule(self, key: str, due_at: float, attempts: int) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE outbox SET due_at = ?, attempts = ?, owner = 0 WHERE key = ?", (due_at, attempts, key)
            )
        )

    async def count(self) -> int:
        return await self._run(lambda db: int(db.execute("SELECT count(*) FROM outbox").fetchone()[0]))

    async def arm(self, armed: Armed, capacity: int, check_at: float) -> bool:
        def arm(db: sqlite3.Connection) -> bool:
            if _kept(db, armed.key):
                return True
            if _held(db) >= capacity:
                return False
            db.execute(
                "INSERT INTO armed (key, url, method, format, created_at, check_at, owner)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (armed.key, armed.url, armed.method, armed.body_format, armed.created_at, check_at, os.getpid()),
            )
            return True

        return await self._run(arm)

    async def fill(self, armed: Armed, body: bytes, now: float) -> bool:
        def fill(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT url, method FROM armed WHERE key = ?", (armed.key,)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM armed WHERE key = ?", (armed.key,))
            _insert(db, Entry(Delivery(armed.job_id, row[0], body, row[1]), now), now)
            return True

        return await self._run(fill)

    async def disarm(self, key: str) -> bool:
        return await self._run(lambda db: db.execute("DELETE FROM armed WHERE key = ?", (key,)).rowcount > 0)

    async def armed_due(self, now: float, limit: int) -> list[Armed]:
        def due(db: sqlite3.Connection) -> list[Armed]:
            rows = db.execute(
                "SELECT key, url, method, format, created_at, owner FROM armed WHERE check_at <= ? ORDER BY check_at",
                (now,),
            )
            found: list[Armed] = []
            alive: dict[int, bool] = {}
            for key, url, method, body_format, created_at, owner in rows:
                if len(found) >= limit:
                    break
                # Another live server of this host follows its own jobs, which this one's job store does not know.
                if owner == os.getpid() or not alive.setdefault(owner, _alive(owner)):
                    found.append(Armed(key, url, method, body_format, created_at))
            return found

        return await self._run(due)

    async def recheck(self, key: str, check_at: float) -> None:
        await self._run(lambda db: db.execute("UPDATE armed SET check_at = ? WHERE key = ?", (check_at, key)))

    async def count_armed(self) -> int:
        return await self._run(lambda db: int(db.execute("SELECT count(*) FROM armed").fetchone()[0]))


def _kept(db: sqlite3.Connection, key: str) -> bool:
    """Whether the callback of `key` is in the outbox already, armed or filled."""
    found = db.execute("SELECT 1 FROM outbox WHERE key = ? UNION ALL SELECT 1 FROM armed WHERE key = ?", (key, key))
    return found.fetchone() is not None


def _held(db: sqlite3.Connection) -> int:
    """What the bound counts: armed and filled entries."""
    (held,) = db.execute("SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM armed)").fetchone()
    return int(held)


def _insert(db: sqlite3.Connection, entry: Entry, due_at: float) -> None:
    d = entry.delivery
    db.execute(
        "INSERT INTO outbox (key, job_id, url, method, host, body, created_at, due_at, attempts)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (d.key, d.job_id, d.url, d.method, d.host, d.body, entry.created_at, due_at, entry.attempts),
    )


def _transaction(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """`fn` in one immediate transaction: committed, or rolled back on an error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = fn(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
