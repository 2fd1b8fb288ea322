"""The durable embedded store: the memory store with a SQLite journal, so jobs and results survive a restart."""

from __future__ import annotations

from .journal import Journal, JournalStats
from .rows import Recovered
from .store import DurableStore

__all__ = ["DurableStore", "Journal", "JournalStats", "Recovered"]
