"""Host uids for sandboxes: one each, handed out in turn, and claimed host-wide while a sandbox starts."""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import re
import threading
import time
from collections.abc import Callable

from .spec import SANDBOX_UID

logger = logging.getLogger(__name__)

KEY_USERS = "/proc/key-users"

# Where every root server on the host claims the uids it is starting sandboxes as (UidClaims).
CLAIMS_FILE = "/run/conveyor/sandbox-uids.lock"

# How long a claim is held after its uid was handed out. A launcher joins the sandbox's session keyring (which puts the
# uid in /proc/key-users for the sandbox's life) as the first thing it does, within milliseconds; a host so loaded
# that it takes longer than this shares a uid, as every server did before claims.
CLAIM_S = 10.0

# A line of /proc/key-users begins with its uid, right-aligned, and a colon ("  1000:     5 5/5 ...").
_KEY_USER = re.compile(rb"^ *(\d+):", re.MULTILINE)


def _uids_with_keys() -> set[int]:
    """The host uids that hold keys now: every live sandbox holds its session keyring (the launcher joins a new one
    before bwrap, every process inherits it, and seccomp refuses keyctl, so none can leave it). Read for every
    sandbox started: raw bytes and one regex (33 against 25 us with 24 lines, against a text file split by line)."""
    try:
        with open(KEY_USERS, "rb") as listing:
            data = listing.read()
    except OSError:
        return set()
    return {int(uid) for uid in _KEY_USER.findall(data)}


class UidClaims:
    """Claims on the uids whose sandboxes are starting, shared by every server on the host: byte `uid` of one lock
    file, write-locked with a POSIX record lock (fcntl.lockf) for CLAIM_S after the uid is handed out.

    /proc/key-users shows a uid only once its sandbox's launcher has joined a keyring. Two servers on one host (two
    workers over one Redis, a restart overlapping its predecessor) read it at the same moment, before either
    launcher ran, and both handed out the same uid: two sandboxes shared keyrings, key quota and RLIMIT_NPROC's count.
    A claim covers that window. Record locks, not a file per uid: one descriptor, adjacent claims merge into one
    kernel record, nothing is left on disk to clean up, and the kernel drops a dead server's claims with it. Within
    one process record locks never conflict, so claims are also kept here, by owner (a HostUids)."""

    def __init__(self, path: str = CLAIMS_FILE, *, claim_s: float = CLAIM_S) -> None:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._claim_s = claim_s
        self._held: dict[int, tuple[object, float]] = {}  # uid -> the HostUids that claimed it, and when
        # (when, uid), oldest first; an entry older than its uid's claim was renewed since and is skipped.
        self._order: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False

    def claim(self, uid: int, owner: object) -> bool:
        """Claim `uid` for `owner` (again: renewed); False when another server, or another owner here, holds it."""
        now = time.monotonic()
        with self._lock:
            if self._closed:  # its descriptor (and every claim) is gone: a uid handed out now is not claimed
                return True
            self._expire(now)
            held = self._held.get(uid)
            if held is not None and held[0] is not owner:
                return False
            if held is None:
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, uid)
                except OSError:  # EAGAIN or EACCES: another server's
                    return False
            self._held[uid] = (owner, now)
            self._order.append((now, uid))
            return True

    def _expire(self, now: float) -> None:
        while self._order and now - self._order[0][0] > self._claim_s:
            when, uid = self._order.popleft()
            if self._held[uid][1] == when:
                del self._held[uid]
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, uid)

    def close(self) -> None:
        """Drop every claim (closing the descriptor releases the process's record locks on the file)."""
        with self._lock:
            self._held.clear()
            self._order.clear()
            self._closed = True
            os.close(self._fd)


_host_claims: UidClaims | None = None
_host_claims_users = 0
_host_claims_lock = threading.Lock()


def open_host_claims() -> UidClaims | None:
    """The process's claims on CLAIMS_FILE, shared by every server in the process (record locks belong to the
    process: closing any descriptor of the file would drop them all), or None where it cannot be opened (a server that
    is not root cannot choose uids at all). Each server that opens it closes it (close_host_claims)."""
    global _host_claims, _host_claims_users
    if os.geteuid() != 0:
        return None
    with _host_claims_lock:
        if _host_claims is None:
            try:
                _host_claims = UidClaims()
            except OSError as exc:
                logger.warning("cannot claim sandbox uids host-wide (%s): servers on this host may share one", exc)
                return None
        _host_claims_users += 1
        return _host_claims


def close_host_claims(claims: UidClaims) -> None:
    """A server is done with open_host_claims()'s claims: the last one closes the file (dropping any claim left)."""
    global _host_claims, _host_claims_users
    with _host_claims_lock:
        _host_claims_users -= 1
        if _host_claims_users == 0 and _host_claims is claims:
            claims.close()
            _host_claims = None


class HostUids:
    """Host uids for sandboxes, one each (as isolate gives each box its own): a job then sees no other sandbox's
    keyrings in /proc/keys or its key quota in /proc/key-users, and shares no per-uid count or limit with it.
    Handed out in turn through the range, skipping those still held by a live sandbox (they hold keys) and those
    another server on the host is starting a sandbox as (`claims`), so a uid comes back only after `count` others and
    never while its previous sandbox lives. Thread-safe: the pool's threads start warm sandboxes. A range with every
    uid alive or claimed (fewer uids than sandboxes) shares one, with a warning."""

    def __init__(
        self,
        base: int,
        count: int,
        *,
        in_use: Callable[[], set[int]] = _uids_with_keys,
        claims: UidClaims | None = None,
    ) -> None:
        self.base, self.count = base, count
        self._in_use = in_use
        self._claims = claims
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> int:
        if self.count == 0:
            return SANDBOX_UID
        with self._lock:
            busy = self._in_use()
            for _ in range(self.count):
                uid = self.base + self._next
                self._next = (self._next + 1) % self.count
                if uid not in busy and (self._claims is None or self._claims.claim(uid, self)):
                    return uid
        logger.warning("all %d SANDBOX_UIDS belong to live or starting sandboxes: uid %d is shared", self.count, uid)
        return uid
