"""Spawn: what a sandbox is started with (its descriptors, the in-memory files bwrap copies in, a SANDBOX=none work
dir), and the start of a warm sandbox (server/sandbox/pool.py) by the pool's threads."""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .pool import Warm, end, wait_ready

if TYPE_CHECKING:
    from .execution import Launcher, Spec

logger = logging.getLogger(__name__)

# "nobody": inside every sandbox; on the host, SANDBOX=none's jobs (and bwrap's with SANDBOX_UIDS=0) when root.
# Otherwise each bwrap sandbox of a root server has a host uid of its own (HostUids, SANDBOX_UID_BASE).
SANDBOX_UID = 65534
BOX = "/box"  # the job's work dir inside the sandbox
# A build handed to a fresh sandbox: a tar of the work dir after the compile stage, unpacked there before the run
# (inside the sandbox: nothing on the host ever parses what a job produced).
ARTIFACT = ".conveyor-build.tar"
PACK = ["tar", "--exclude=./tmp", f"--exclude=./{ARTIFACT}", "-cf", "-", "."]
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
    files: list[int] = field(default_factory=list)  # the job's files, in Spec.files order
    artifact: int | None = None
    etc: dict[str, int] = field(default_factory=dict)  # generated /etc files (passwd, group, hosts)


def start_warm(launcher: Launcher, spec: Spec, *, nice: int) -> Warm:
    """Start a sandbox for spec.language's next job, and block until its driver is waiting for it (the pool's
    thread: plain pipes and subprocess, no event loop)."""
    assert spec.language is not None
    cgroup = launcher.job_cgroup(spec.name)
    ours: dict[str, int] = {}  # the host's ends, kept by the Warm
    theirs: dict[str, int] = {}  # the sandbox's, closed once it has them
    try:
        for name in ("status", "compile", "stdout", "stderr", "job", "stdin"):
            read, write = os.pipe()
            # The host reads what the sandbox reports and prints; it writes the job message and the program's stdin.
            host, sandbox = (write, read) if name in ("job", "stdin") else (read, write)
            ours[name], theirs[name] = above_stdio(host), above_stdio(sandbox)
        fds = Fds(status=theirs["status"], compile=theirs["compile"])
        extra = sandbox_fds(launcher, fds, spec)
        argv = launcher.warm_argv(spec, fds, cgroup, theirs["job"], nice=nice)
        try:
            popen = subprocess.Popen(
                argv,
                stdin=theirs["stdin"],
                stdout=theirs["stdout"],
                stderr=theirs["stderr"],
                pass_fds=[theirs["status"], theirs["compile"], theirs["job"], *extra],
                start_new_session=True,
                env=launcher.env(spec, None),
                cwd="/",
            )
        finally:
            for fd in extra:
                os.close(fd)
    except BaseException:
        for fd in (*ours.values(), *theirs.values()):
            os.close(fd)
        if cgroup is not None:
            cgroup.remove_now()
        raise
    for fd in theirs.values():
        os.close(fd)
    try:
        child_pid = wait_ready(popen, ours["status"])
    except BaseException:
        end(popen, cgroup)
        for fd in ours.values():
            os.close(fd)
        raise
    return Warm(
        language=spec.language,
        popen=popen,
        cgroup=cgroup,
        child_pid=child_pid,
        job=ours["job"],
        stdin=ours["stdin"],
        stdout=ours["stdout"],
        stderr=ours["stderr"],
        status=ours["status"],
        compile=ours["compile"],
        niced=nice != 0,
    )


def sandbox_fds(launcher: Launcher, fds: Fds, spec: Spec) -> list[int]:
    """The in-memory files bwrap copies in (the syscall filter, the job's files and build, /etc files) and bwrap's
    own status fd, added to `fds`; returns them, for the launcher to inherit and the caller to close."""
    theirs: list[int] = []
    try:
        # bwrap reports its pid 1 on a second fd of the status pipe (it closes that fd inside the sandbox).
        fds.bwrap_status = above_stdio(os.dup(fds.status))
        theirs.append(fds.bwrap_status)
        if launcher.seccomp_bpf is not None:
            fds.seccomp = above_stdio(memfd(launcher.seccomp_bpf))
            theirs.append(fds.seccomp)
        for _, content in spec.files:
            fds.files.append(above_stdio(memfd(content)))
            theirs.append(fds.files[-1])
        if spec.artifact is not None:
            fds.artifact = above_stdio(memfd(spec.artifact))
            theirs.append(fds.artifact)
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


def _uids_with_keys() -> set[int]:
    """The host uids that hold keys now: every live sandbox holds its session keyring (the launcher joins a new one
    before bwrap, every process inherits it, and seccomp refuses keyctl, so none can leave it)."""
    try:
        with open(KEY_USERS, encoding="ascii") as listing:
            return {int(line.split(":", 1)[0]) for line in listing if ":" in line}
    except (OSError, ValueError):
        return set()


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


def workdir(spec: Spec, *, chown: bool) -> str:
    """SANDBOX=none: a host temp dir with the files and a tmp/ dir, owned by the uid the job runs as."""
    path = tempfile.mkdtemp(prefix=f"conveyor-{spec.name}-")
    made = [path, f"{path}/tmp"]
    os.mkdir(made[-1])
    for directory in spec.directories:
        made.append(f"{path}/{directory}")
        os.mkdir(made[-1])
    for name, content in spec.files:
        made.append(f"{path}/{name}")
        Path(made[-1]).write_bytes(content)
    if spec.artifact is not None:
        made.append(f"{path}/{ARTIFACT}")
        Path(made[-1]).write_bytes(spec.artifact)
    if chown:
        for item in made:
            os.chown(item, SANDBOX_UID, SANDBOX_UID)
    return path
