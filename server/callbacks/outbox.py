"""The callbacks' outbox: what is still to be delivered, kept where a restart (or another instance) finds it.

Every store keeps the same few things per callback and changes them atomically: an entry is added once (its key is
its job's id, so a second add of the same callback is a no-op), claimed by the instance that will try it (its due
time pushed to the end of a lease, so a claim whose instance dies comes due again and another takes it), then
removed (delivered or abandoned) or rescheduled (a retry's due time). The bound is checked in the same step as the
add. This module holds the records, the store's interface and the embedded store's SQLite file.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from ..errors import SettingsError

T = TypeVar("T")

# Due entries one claim looks at, at most: the outbox is bounded (CALLBACK_QUEUE_SIZE), but a claim must stay short
# (on Redis it blocks every other command). Past it, entries of saturated hosts could hide others' for a while.
CLAIM_SCAN = 2000
DB_NAME = "callbacks.sqlite3"


@dataclass(slots=True)
class Delivery:
    """One callback to make: where, how, and the body (the finished job, encoded once). Its key, the job's id,
    names it in the outbox and to the receiver (`Idempotency-Key`): one job, one callback."""

    job_id: str
    url: str
    body: bytes
    method: str = "POST"

    @property
    def key(self) -> str:
        return self.job_id

    @property
    def host(self) -> str:
        """What the per-host limit counts by: the host's name as written (lower case), whatever its port."""
        return (urlsplit(self.url).hostname or "").lower()


@dataclass(slots=True)
class Entry:
    """A delivery in the outbox: when its job finished (the retry horizon counts from there) and how many
    attempts it has had."""

    delivery: Delivery
    created_at: float
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Claim:
    """What an instance asks of a claim: entries due at `now`, leased until `lease_until`, at most `limit`, and
    per host at most `per_host` counting the `busy` requests it has in flight already."""

    now: float
    lease_until: float
    limit: int
    per_host: int
    busy: Mapping[str, int]

    def pick(self, candidates: list[tuple[str, str]]) -> list[str]:
        """The keys to claim among due (key, host) pairs, in due order."""
        taken = Counter(self.busy)
        picked: list[str] = []
        for key, host in candidates:
            if len(picked) >= self.limit:
                break
            if taken[host] < self.per_host:
                taken[host] += 1
                picked.append(key)
        return picked


class OutboxStore(ABC):
    """Where the outbox lives: a SQLite file of the instance's (embedded) or Redis keys shared by every instance."""

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def add(self, entry: Entry, capacity: int) -> bool:
        """Keep `entry`, due now, unless the outbox holds `capacity` entries already (False). An entry with the
        same key is already kept: True, nothing changes."""

    @abstractmethod
    async def claim(self, claim: Claim) -> list[Entry]:
        """Lease due entries to this instance (see `Claim`)."""

    @abstractmethod
    async def remove(self, key: str) -> None:
        """Forget an entry: delivered or abandoned."""

    @abstractmethod
    async def reschedule(self, key: str, due_at: float, attempts: int) -> None:
        """Release a claimed entry until `due_at`, after `attempts` attempts (nothing if it was removed)."""

    @abstractmethod
    async def count(self) -> int:
        """Entries in the outbox, due or not."""


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
            self._directory.mkdir(parents=True, exist_ok=True)
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
            if db.execute("SELECT 1 FROM outbox WHERE key = ?", (d.key,)).fetchone():
                return True
            (held,) = db.execute("SELECT count(*) FROM outbox").fetchone()
            if held >= capacity:
                return False
            db.execute(
                "INSERT INTO outbox (key, job_id, url, method, host, body, created_at, due_at, attempts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (d.key, d.job_id, d.url, d.method, d.host, d.body, entry.created_at, self._now(), entry.attempts),
            )
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
        def count(db: sqlite3.Connection) -> int:
            (held,) = db.execute("SELECT count(*) FROM outbox").fetchone()
            return int(held)

        return await self._run(count)


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
