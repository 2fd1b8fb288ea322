"""Checkpoints of the job journal's write-ahead log, off the writer's path."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

# Written since the last checkpoint began: past this the checkpointer's thread copies the log into the database
# (SQLite's own automatic checkpoint came at 1,000 pages, about the same).
CHECKPOINT_BYTES = 4 << 20
# The log's bound: past this many pages SQLite's own checkpoint runs in the writer's commit (it did at 1,000). Under
# steady writes the log starts again only then, since a checkpoint beside the writer rarely finds it all copied;
# by then the thread has copied nearly all of it, so that checkpoint has little left to do.
WAL_MAX_PAGES = 4_096


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=5.0)


class Checkpointer:
    """Copies the journal's write-ahead log into the database from a thread and a connection of its own.

    SQLite checkpointed inside the commit that took the log past 1,000 pages, an fsync among it: a commit carrying a
    job's megabyte of output took 16-24 ms instead of 3-5, and the submissions behind it waited that long for their
    answer. A passive checkpoint takes no lock a writer needs, so the writer goes on meanwhile. The log starts again
    from its beginning at a commit that finds it all copied (and its file is cut back to CHECKPOINT_BYTES then:
    `journal_size_limit`); rows.connect sets that, and SQLite's own checkpoint to WAL_MAX_PAGES."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._written = 0  # bytes committed since the last checkpoint began (the writer's count)
        self._busy = False  # a checkpoint is running in the thread
        self._closing = False
        self._wake = threading.Condition()
        self.checkpoints = 0  # done in the thread
        self._thread = threading.Thread(target=self._run, name="conveyor-journal-checkpoint", daemon=True)
        self._thread.start()

    def committed(self, size: int) -> None:
        """In the writer, after a commit of about `size` bytes: past CHECKPOINT_BYTES since the last one began, wake
        the thread (unless it is still at that one)."""
        with self._wake:
            self._written += size
            if self._written >= CHECKPOINT_BYTES and not self._busy:
                self._busy, self._written = True, 0
                self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            while True:
                with self._wake:
                    while not self._busy and not self._closing:
                        self._wake.wait()
                    if self._closing:
                        return
                try:
                    db = db or _connect(self._path)
                    # Read to its end: a statement left open would hold a read lock, and the log could not start again.
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as exc:  # the writer's own failures say what is wrong with the disk
                    logger.debug("job journal checkpoint: %s", exc)
                with self._wake:
                    self._busy = False
        finally:
            if db is not None:
                db.close()
