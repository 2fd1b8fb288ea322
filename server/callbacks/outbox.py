"""The callbacks' outbox: what is still to be delivered, kept where a restart (or another instance) finds it.

Every store keeps the same few things per callback and changes them atomically. A callback is *armed* when its job
is submitted (where, how, and the name of its body's format: nothing is delivered yet), and *filled* when the job
ends, by whichever instance sees the end first: its body written, due now. A filled entry is claimed by the instance
that will try it (its due time pushed to the end of a lease, so a claim whose instance dies comes due again and
another takes it), then removed (delivered or abandoned) or rescheduled (a retry's due time). Keys are job ids, so a
second arm, add or fill of the same callback changes nothing. The bound (armed and filled entries together) is
checked in the same step as the arm or add. This module holds the records and the stores' interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

# Due entries one claim looks at, at most: the outbox is bounded (CALLBACK_QUEUE_SIZE), but a claim must stay short
# (on Redis it blocks every other command). Past it, entries of saturated hosts could hide others' for a while.
CLAIM_SCAN = 2000


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


@dataclass(frozen=True, slots=True)
class Armed:
    """A callback armed at submission: its job (the key), where and how, and the name of its body's builder (`native`,
    `judge0`), so that any instance can build the body from the finished job without the submitting request."""

    job_id: str
    url: str
    method: str
    body_format: str
    created_at: float

    @property
    def key(self) -> str:
        return self.job_id

    def delivery(self, body: bytes) -> Delivery:
        return Delivery(self.job_id, self.url, body, self.method)


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
        """Filled entries in the outbox, due or not."""

    @abstractmethod
    async def arm(self, armed: Armed, capacity: int, check_at: float) -> bool:
        """Keep `armed` (first looked at by `armed_due` at `check_at`) unless the outbox holds `capacity` entries,
        armed and filled, already (False). An entry with the same key, armed or filled: True, nothing changes."""

    @abstractmethod
    async def fill(self, armed: Armed, body: bytes, now: float) -> bool:
        """Make the armed entry with `armed`'s key a delivery of `body`, due at `now` (its retry horizon counts from
        there). False, nothing changed, when it is not armed (filled already, delivered, or dropped)."""

    @abstractmethod
    async def disarm(self, key: str) -> bool:
        """Forget an armed entry (its submission was refused, or its job is gone); False when it is not armed."""

    @abstractmethod
    async def armed_due(self, now: float, limit: int) -> list[Armed]:
        """At most `limit` armed entries whose check time has come, the longest waiting first, that this instance
        may fill (on SQLite: not those of another live process, whose own follower fills them)."""

    @abstractmethod
    async def recheck(self, key: str, check_at: float) -> None:
        """Look at an armed entry again at `check_at` (nothing if it is not armed)."""

    @abstractmethod
    async def count_armed(self) -> int:
        """Armed entries in the outbox."""
