"""Warm start: a sandbox started ahead of its job by the warm pool's threads (server/sandbox/pool.py), its driver
waiting for the job message."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from . import command
from .cgroups import Cgroups, JobCgroup, job_cgroup
from .command import Host
from .languages import LanguageIndex
from .pool import REFILL_NICE, Warm, children, end, wait_ready
from .spawn import Fds, above_stdio, sandbox_fds
from .spec import RunSpec, Specs

# The pipes between the host and a warm sandbox. The host reads what the sandbox reports and prints; it writes the
# job message and the program's stdin.
PIPES = ("status", "compile", "stdout", "stderr", "job", "stdin")
WRITTEN_BY_HOST = ("job", "stdin")


@dataclass(frozen=True, slots=True)
class WarmStarter:
    """The pool's way to start a sandbox for a language: what it is started with, fixed at start-up."""

    host: Host
    cgroups: Cgroups | None
    specs: Specs
    languages: LanguageIndex

    def __call__(self, name: str, urgent: bool) -> Warm:
        """(A pool thread.) A sandbox for the next job in `name`, niced below running jobs when the server may
        renice it back (root) and no job is about to need it (see pool.REFILL_NICE)."""
        lang = self.languages.get(name)
        assert lang is not None
        spec = self.specs.warm(lang)
        warm = start_warm(self.host, self.cgroups, spec, nice=REFILL_NICE if os.geteuid() == 0 and not urgent else 0)
        warm.env, warm.preloaded = command.env_of(spec, None), spec.preload is not None
        return warm


def start_warm(host: Host, cgroups: Cgroups | None, spec: RunSpec, *, nice: int) -> Warm:
    """Start a sandbox for spec.language's next job, and block until its driver is waiting for it (the pool's
    thread: plain pipes and subprocess, no event loop)."""
    assert spec.language is not None
    cgroup = job_cgroup(cgroups, spec.name)
    ours: dict[str, int] = {}  # the host's ends, kept by the Warm
    theirs: dict[str, int] = {}  # the sandbox's, closed once it has them
    try:
        for name in PIPES:
            read, write = os.pipe()
            mine, its = (write, read) if name in WRITTEN_BY_HOST else (read, write)
            ours[name], theirs[name] = above_stdio(mine), above_stdio(its)
        popen = _popen(host, spec, cgroup, theirs, nice=nice)
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
        drivers = children(child_pid)  # nothing of a job has run in it: the driver alone
        if cgroup is not None:
            cgroup.start_stage()  # its memory peak from here, where it idles until its job (see Stages.arm)
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
        mount_ns=_mount_ns(child_pid),
        driver_pid=drivers[0] if len(drivers) == 1 else None,
    )


def _mount_ns(pid: int) -> int | None:
    """A descriptor of the sandbox's mount namespace (pid 1's, alive and unreaped here), or None where it cannot be
    opened: the sandbox then unmounts as its pid 1 exits, as a cold one does. Close-on-exec: no sandbox inherits it."""
    try:
        return os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _popen(
    host: Host, spec: RunSpec, cgroup: JobCgroup | None, theirs: dict[str, int], *, nice: int
) -> subprocess.Popen[bytes]:
    """The launcher, handed the sandbox's pipe ends and in-memory files (closed here once it has its copies)."""
    fds = Fds(status=theirs["status"], compile=theirs["compile"])
    extra = sandbox_fds(host.seccomp_bpf, fds, spec)
    try:
        argv = command.warm_argv(host, spec, fds, cgroup, theirs["job"], nice=nice)
        return subprocess.Popen(
            argv,
            stdin=theirs["stdin"],
            stdout=theirs["stdout"],
            stderr=theirs["stderr"],
            pass_fds=[theirs["status"], theirs["compile"], theirs["job"], *extra],
            start_new_session=True,
            env=command.env_of(spec, None),
            cwd="/",
        )
    finally:
        for fd in extra:
            os.close(fd)
