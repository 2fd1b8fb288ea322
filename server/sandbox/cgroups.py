"""Cgroups: one memory, pids and CPU-accounting cgroup per job, under the server's own cgroup (v2 delegated
subtree or v1)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from pathlib import Path

from .bases import EMPTY_WAIT_S, Guard, make_base, remove_tree
from .hierarchies import Hierarchy, find_hierarchies

logger = logging.getLogger(__name__)


class JobCgroup:
    """The cgroups of one job: the launcher writes its own pid into `procs_files` before it execs bwrap.

    The files read on every job are found once, here, and read with plain os calls: a job reads them a handful of
    times, and pathlib's parsing and text wrappers cost more than the reads. The accounting files (CPU, memory peak,
    OOM kills) are opened here too and re-read at offset 0: a warm sandbox's are then opened by the pool's thread,
    and an open (a walk through the cgroup filesystem, which waits while another cgroup is made or removed) is not on
    the job's path. close_files() closes them (remove() and remove_now() do). Paths are plain strings: pathlib's
    joins were a fifth of create()'s CPU in the pool's thread."""

    def __init__(self, name: str, dirs: list[tuple[Hierarchy, str]]) -> None:
        self.name = name
        self._dirs = dirs
        self._procs = [f"{path}/cgroup.procs" for _, path in dirs]
        memory = next(((h, path) for h, path in dirs if "memory" in h.controllers), None)
        self._oom: str | None = None  # memory.events (v2) or memory.oom_control (v1): the oom_kill counter
        self._peak: str | None = None
        self._reset: str | None = None  # v1's max_usage_in_bytes, reset per stage
        if memory is not None:
            hierarchy, path = memory
            v2 = hierarchy.version == 2
            self._oom = f"{path}/{'memory.events' if v2 else 'memory.oom_control'}"
            self._peak = f"{path}/{'memory.peak' if v2 else 'memory.max_usage_in_bytes'}"
            self._reset = None if v2 else self._peak
        self._cpu: str | None = None  # cpuacct.usage (v1, ns) or cpu.stat (v2, usage_usec)
        self._cpu_v2 = False
        for hierarchy, path in dirs:
            if "cpuacct" in hierarchy.controllers:
                self._cpu = f"{path}/cpuacct.usage"
                break
        else:
            unified = next((path for h, path in dirs if h.version == 2), None)
            if unified is not None:
                self._cpu, self._cpu_v2 = f"{unified}/cpu.stat", True
        self._files: dict[str, int] = {}
        # v1's peak is also reset each stage: kept open for writing as well, one write where an open, a write and a
        # close of the cgroup file cost 8 times as much (1 against 8 us). Read-only where we may only read it.
        self._reset_fd: int | None = None
        if self._reset is not None:
            with contextlib.suppress(OSError):
                self._reset_fd = self._files[self._reset] = os.open(self._reset, os.O_RDWR | os.O_CLOEXEC)
        for kept in (self._cpu, self._peak, self._oom):
            if kept is not None and kept not in self._files:
                with contextlib.suppress(OSError):
                    self._files[kept] = os.open(kept, os.O_RDONLY | os.O_CLOEXEC)

    def _read_kept(self, name: str) -> bytes | None:
        """An accounting file's contents, through its kept descriptor (re-read from the start each time)."""
        fd = self._files.get(name)
        if fd is None:
            return _read(name)
        try:
            return os.pread(fd, 65536, 0)
        except OSError:
            return None

    def close_files(self) -> None:
        """Close the kept accounting files (the figures are read by then)."""
        files, self._files, self._reset_fd = self._files, {}, None
        for fd in files.values():
            os.close(fd)

    @property
    def procs_files(self) -> list[str]:
        return list(self._procs)

    def oom_killed(self) -> bool:
        """Whether the kernel OOM-killed a process of this job because of the memory limit."""
        return self._oom is not None and _counter(self._read_kept(self._oom), b"oom_kill") > 0

    def pids(self) -> set[int]:
        found: set[int] = set()
        for name in self._procs:
            with contextlib.suppress(ValueError):
                found.update(int(p) for p in (_read(name) or b"").split())
        return found

    def cpu_ns(self) -> int | None:
        """CPU time used by every process the job has had (the dead ones too), or None when not accounted."""
        if self._cpu is None:
            return None
        data = self._read_kept(self._cpu)
        if not self._cpu_v2:
            return _int(data)
        usec = _counter(data, b"usage_usec", default=-1)
        return None if usec < 0 else usec * 1000

    def memory_peak(self) -> int | None:
        """The job's highest memory use (page cache and tmpfs files included) since start_stage(), in bytes."""
        return None if self._peak is None else _int(self._read_kept(self._peak))

    def start_stage(self) -> None:
        """Restart the memory peak from the current use, so the run stage's peak is not the compiler's. cgroup v2
        cannot reset memory.peak this way (before Linux 6.12 not at all): there it stays the whole job's peak."""
        if self._reset is None:
            return
        with contextlib.suppress(OSError):
            if self._reset_fd is not None:
                os.pwrite(self._reset_fd, b"0", 0)
            else:
                _write(self._reset, b"0")

    def kill(self) -> bool:
        """SIGKILL every process in the job's cgroups; a few passes catch processes forked meanwhile. True when the
        last pass found them empty."""
        for hierarchy, path in self._dirs:
            if hierarchy.version == 2:
                with contextlib.suppress(OSError):
                    _write(f"{path}/cgroup.kill", b"1")
        for _ in range(4):
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        return False

    async def remove(self) -> None:
        """Kill what is left, wait for the cgroups to empty, and remove them."""
        self.close_files()
        if self._rmdir_if_empty():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EMPTY_WAIT_S
        while not self.kill() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self._rmdir()

    def remove_now(self) -> None:
        """remove(), blocking: for the warm pool's threads, which have no event loop."""
        self.close_files()
        if self._rmdir_if_empty():
            return
        deadline = time.monotonic() + EMPTY_WAIT_S
        while not self.kill() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._rmdir()

    def _rmdir_if_empty(self) -> bool:
        """Remove the cgroups that are empty already (the usual end of a job: its pid namespace died with its pid 1);
        True when none is left. The kernel refuses to remove one with a process in it (EBUSY) and then nothing
        changes, so this needs no read of cgroup.procs first, and no process can be in a removed cgroup."""
        left = []
        for hierarchy, path in self._dirs:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                left.append((hierarchy, path))
        self._dirs = left
        return not left

    def _rmdir(self) -> None:
        for _, path in self._dirs:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot remove cgroup %s of job %s: %s", path, self.name, exc)


class Cgroups:
    """Creates per-job cgroups with the memory and pids limits, below one directory per server instance."""

    def __init__(
        self, bases: list[tuple[Hierarchy, Path]], memory_bytes: int, max_tasks: int, *, guard: Guard | None = None
    ) -> None:
        self._bases = bases
        self._roots = [(hierarchy, str(base)) for hierarchy, base in bases]  # as create() joins them
        self._memory_bytes = memory_bytes
        self._max_tasks = max_tasks
        self._guard = guard
        self.problem: str | None = None  # why cgroup v2 was not used, when it was not

    def enforced_by(self, controller: str) -> str | None:
        """How a controller's limit is enforced, e.g. "cgroup v1 memory", or None when it is not."""
        for hierarchy, _ in self._bases:
            if controller in hierarchy.controllers:
                return hierarchy.label(controller)
        return None

    def cpu_accounting(self) -> str | None:
        """Where a job's CPU time is read (JobCgroup.cpu_ns), or None when it is not."""
        for hierarchy, _ in self._bases:
            if "cpuacct" in hierarchy.controllers:
                return hierarchy.label("cpuacct")
        return "cgroup v2 cpu.stat" if any(hierarchy.version == 2 for hierarchy, _ in self._bases) else None

    @classmethod
    def setup(cls, *, memory_bytes: int, max_tasks: int, manager: str = "auto") -> Cgroups:
        """Find the hierarchies we may create child cgroups in; controllers we cannot use are left out (`problem`
        then says why cgroup v2 could not be used)."""
        bases: list[tuple[Hierarchy, Path]] = []
        hierarchies, problem = find_hierarchies(manager)
        for hierarchy in hierarchies:
            try:
                bases.append((hierarchy, make_base(hierarchy)))
            except OSError as exc:
                logger.info("%s not usable for job limits: %s", hierarchy.label("/".join(hierarchy.controllers)), exc)
                problem = problem or f"cannot create cgroups in {hierarchy.own}: {exc.strerror}"
        guard = None
        if bases:
            try:
                guard = Guard([base for _, base in bases])
            except OSError as exc:
                logger.warning("cannot start the cgroup guard (%s): jobs may outlive a killed server", exc)
        cgroups = cls(bases, memory_bytes, max_tasks, guard=guard)
        cgroups.problem = problem
        return cgroups

    def describe(self) -> str:
        """Where job cgroups are made and how that cgroup was obtained, for the start-up line."""
        return (
            "; ".join(f"{h.label('/'.join(h.controllers))} in {base.parent} ({h.how})" for h, base in self._bases)
            or "none"
        )

    def create(self, name: str, *, memory_bytes: int | None = None) -> JobCgroup:
        """mkdir the job's cgroups and write their limits (a job may ask for less memory than the server's limit).
        Raises OSError if the host refuses."""
        try:
            return self._create(name, memory_bytes)
        except FileExistsError:
            # One of that name is still there: an ended run's cgroups go after its result (reaper.Reaper), and the
            # same job may be run again at once (a retry). This run's get a name of their own.
            return self._create(f"{name}-{secrets.token_hex(3)}", memory_bytes)

    def _create(self, name: str, memory_bytes: int | None) -> JobCgroup:
        dirs: list[tuple[Hierarchy, str]] = []
        try:
            for hierarchy, base in self._roots:
                path = f"{base}/{name}"
                os.mkdir(path)
                dirs.append((hierarchy, path))
                self._limit(hierarchy, path, min(memory_bytes or self._memory_bytes, self._memory_bytes))
        except OSError:
            for _, path in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            raise
        return JobCgroup(name, dirs)

    def restrict(self, cgroup: JobCgroup, memory_bytes: int) -> None:
        """Lower a created cgroup's memory limit (a warm sandbox taken by a job that asked for less memory)."""
        for hierarchy, path in cgroup._dirs:
            self._limit(hierarchy, path, min(memory_bytes, self._memory_bytes))

    def _limit(self, hierarchy: Hierarchy, path: str, memory_bytes: int) -> None:
        if "pids" in hierarchy.controllers:
            _write(f"{path}/pids.max", b"%d" % self._max_tasks)
        if "memory" not in hierarchy.controllers:
            return
        if hierarchy.version == 2:
            _write(f"{path}/memory.max", b"%d" % memory_bytes)
            _optional_write(f"{path}/memory.swap.max", b"0")
        else:
            _write(f"{path}/memory.limit_in_bytes", b"%d" % memory_bytes)
            # Without this the job could spill past the limit into swap (when swap accounting is on).
            _optional_write(f"{path}/memory.memsw.limit_in_bytes", b"%d" % memory_bytes)

    def close(self) -> None:
        """Remove this server's directories (job cgroups are removed as their jobs end)."""
        for hierarchy, base in self._bases:
            remove_tree(base, hierarchy)
            if hierarchy.removable:
                with contextlib.suppress(OSError):  # other servers' directories still in it: the last one removes it
                    hierarchy.own.rmdir()
        self._bases, self._roots = [], []
        if self._guard is not None:
            self._guard.stop()
            self._guard = None


def _read(path: str) -> bytes | None:
    """A cgroup file's contents (small: one read), or None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _int(data: bytes | None) -> int | None:
    try:
        return None if data is None else int(data)
    except ValueError:
        return None


def _counter(data: bytes | None, key: bytes, default: int = 0) -> int:
    """A `key value` line's value in a flat-keyed cgroup file (memory.events, cpu.stat, memory.oom_control)."""
    for line in (data or b"").splitlines():
        name, _, value = line.partition(b" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return default


def _optional_write(path: str, data: bytes) -> None:
    """Write a file the kernel may not have (swap accounting off): one open that may fail, no stat first."""
    with contextlib.suppress(OSError):
        _write(path, data)


def job_cgroup(cgroups: Cgroups | None, name: str, memory_mb: int | None = None) -> JobCgroup | None:
    """Create a run's cgroups (with its own memory limit when it asked for less), or None for rlimits only."""
    if cgroups is None:
        return None
    return cgroups.create(name, memory_bytes=None if memory_mb is None else memory_mb << 20)
