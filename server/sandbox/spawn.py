"""Spawn: what a sandbox is started with (its descriptors, the in-memory files bwrap copies in, a SANDBOX=none work
dir, its host uid)."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .spec import BOX, SANDBOX_UID, RunSpec

logger = logging.getLogger(__name__)

# Copied in from memfds in place of the host's passwd, group and hosts: no host accounts or names inside.
ETC_FILES = {
    "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{SANDBOX_UID}:{SANDBOX_UID}::{BOX}:/bin/sh\n",
    "group": f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\n",
    "hosts": "127.0.0.1 localhost\n::1 localhost\n",
}


@dataclass(slots=True)
class Fds:
    """File descriptors handed to the sandbox (same numbers inside): the driver's status and compiler-output
    pipes, bwrap's own status (same pipe), and in-memory files bwrap copies in (the source, /etc files)."""

    status: int
    compile: int
    bwrap_status: int | None = None
    seccomp: int | None = None  # the syscall filter's BPF, for bwrap --seccomp
    files: list[int] = field(default_factory=list)  # the job's files, in RunSpec.files order
    etc: dict[str, int] = field(default_factory=dict)  # generated /etc files (passwd, group, hosts)


def sandbox_fds(seccomp_bpf: bytes | None, fds: Fds, spec: RunSpec) -> list[int]:
    """The in-memory files bwrap copies in (the syscall filter, the job's files, /etc files) and bwrap's
    own status fd, added to `fds`; returns them, for the launcher to inherit and the caller to close."""
    theirs: list[int] = []
    try:
        # bwrap reports its pid 1 on a second fd of the status pipe (it closes that fd inside the sandbox).
        fds.bwrap_status = above_stdio(os.dup(fds.status))
        theirs.append(fds.bwrap_status)
        if seccomp_bpf is not None:
            fds.seccomp = above_stdio(memfd(seccomp_bpf))
            theirs.append(fds.seccomp)
        for file in spec.files:
            fds.files.append(above_stdio(memfd(file.content)))
            theirs.append(fds.files[-1])
        for name, text in ETC_FILES.items():
            fds.etc[name] = above_stdio(memfd(text.encode()))
            theirs.append(fds.etc[name])
    except BaseException:
        for fd in theirs:
            os.close(fd)
        raise
    return theirs


def above_stdio(fd: int) -> int:
    """Passed fds must not be 0-2, which the child's stdio pipes replace (a server started with stdio closed)."""
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved


KEY_USERS = "/proc/key-users"


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


class HostUids:
    """Host uids for sandboxes, one each (as isolate gives each box its own): a job then sees no other sandbox's
    keyrings in /proc/keys or its key quota in /proc/key-users, and shares no per-uid count or limit with it.
    Handed out in turn through the range, skipping those still held by a live sandbox (they hold keys), so a uid
    comes back only after `count` others and never while its previous sandbox lives. Thread-safe: the pool's threads
    start warm sandboxes. A range with every uid alive (fewer uids than sandboxes) shares one, with a warning."""

    def __init__(self, base: int, count: int, *, in_use: Callable[[], set[int]] = _uids_with_keys) -> None:
        self.base, self.count = base, count
        self._in_use = in_use
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
                if uid not in busy:
                    return uid
        logger.warning("all %d SANDBOX_UIDS belong to live sandboxes: uid %d is shared", self.count, uid)
        return uid


def memfd(data: bytes) -> int:
    """An in-memory file for bwrap to copy into the sandbox: nothing on the host's disk to clean up."""
    fd = os.memfd_create("conveyor")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def workdir(spec: RunSpec, *, chown: bool) -> str:
    """SANDBOX=none: a host temp dir with the files (each with its mode) and a tmp/ dir, owned by the uid the job runs
    as."""
    path = tempfile.mkdtemp(prefix=f"conveyor-{spec.name}-")
    made = [path, f"{path}/tmp"]
    os.mkdir(made[-1])
    for directory in spec.directories:
        made.append(f"{path}/{directory}")
        os.mkdir(made[-1])
    for file in spec.files:
        made.append(f"{path}/{file.name}")
        Path(made[-1]).write_bytes(file.content)
        os.chmod(made[-1], file.mode)
    if chown:
        for item in made:
            os.chown(item, SANDBOX_UID, SANDBOX_UID)
    return path
