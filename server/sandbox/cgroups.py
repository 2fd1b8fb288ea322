"""Cgroups: one memory, pids and CPU-accounting cgroup per job, under the server's own cgroup (v2 delegated
subtree or v1)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import delegation

logger = logging.getLogger(__name__)

# cpuacct is cgroup v1's; cgroup v2 keeps CPU usage in every cgroup's cpu.stat, no controller needed.
CONTROLLERS = ("memory", "pids", "cpuacct")
_PREFIX = "conveyor-"
_EMPTY_WAIT_S = 2.0
_GUARD_STOP_S = 5.0

# The guard: a watchdog beside the server, blocked reading a pipe that only the server holds open, so the read ends
# (EOF) once the server is gone, however it ended (SIGKILL included). It then kills whatever is left in the server's
# job cgroups and removes them, for up to 5 s. bwrap's --die-with-parent alone is not enough: a sandbox child that
# bwrap's monitor has not released yet has no parent-death signal, and if the monitor dies with the server it blocks
# for ever as pid 1 of its pid namespace. Removing a job's cgroup also stops a launcher the server had started but
# that has not joined it yet: its join fails. Arguments: the server's base directories, one per hierarchy.
_GUARD = """
trap '' HUP INT TERM
read -r _
n=0
while :; do
    for base; do
        for dir in "$base"/*/; do
            [ -d "$dir" ] || continue
            for pid in $(cat "${dir}cgroup.procs" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
            rmdir "$dir" 2>/dev/null
        done
        rmdir "$base" 2>/dev/null
    done
    left=
    for base; do [ -d "$base" ] && left=1; done
    n=$((n + 1))
    { [ -z "$left" ] || [ "$n" -ge 100 ]; } && exit 0
    sleep 0.05
done
"""


@dataclass(frozen=True, slots=True)
class _Hierarchy:
    """One cgroup hierarchy we use: its version, the controllers we use in it, and the server's own cgroup."""

    version: int
    controllers: tuple[str, ...]
    own: Path  # where this process creates its directory: its claimed v2 subtree, or its own v1 cgroup
    how: str  # how that cgroup was obtained, for the start-up line
    removable: bool = False  # `own` is a subtree we made (delegation.Claim.removable): removed once empty

    def label(self, controller: str) -> str:
        return f"cgroup v{self.version} {controller}"


def _own_cgroups() -> dict[str, tuple[int, str]]:
    """controller -> (version, path of this process's cgroup relative to the hierarchy root)."""
    out: dict[str, tuple[int, str]] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        if hid == "0" and not names:
            out["unified"] = (2, path)
        for name in names.split(","):
            if name in CONTROLLERS:
                out[name] = (1, path)
    return out


def _mounts() -> dict[str, tuple[str, str]]:
    """controller (or "unified") -> (root inside the hierarchy, mount point) from mountinfo."""
    out: dict[str, tuple[str, str]] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        parts, extra = fields.split(), tail.split()
        if len(parts) < 5 or len(extra) < 3:
            continue
        root, point = parts[3], parts[4].replace("\\040", " ")
        if extra[0] == "cgroup2":
            out.setdefault("unified", (root, point))
        elif extra[0] == "cgroup":
            for name in extra[2].split(","):
                if name in CONTROLLERS:
                    out.setdefault(name, (root, point))
    return out


def _locate(own: dict[str, tuple[int, str]], mounts: dict[str, tuple[str, str]], key: str) -> Path | None:
    if key not in own or key not in mounts:
        return None
    _, path = own[key]
    root, point = mounts[key]
    if root != "/" and not (path == root or path.startswith(root.rstrip("/") + "/")):
        return None  # our cgroup is outside the part of the hierarchy mounted here
    rel = path[len(root) :] if root != "/" else path
    return Path(point) / rel.lstrip("/")


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _find_hierarchies(manager: str) -> tuple[list[_Hierarchy], str | None]:
    """The v2 subtree this process claims (delegation.claim) for the controllers the unified hierarchy offers;
    else each controller's v1 hierarchy (our own cgroup there, as root). Also why v2 could not be used, if so."""
    own, mounts = _own_cgroups(), _mounts()
    found: list[_Hierarchy] = []
    problem = None
    in_v2: tuple[str, ...] = ()
    if "unified" in mounts and "unified" in own:
        root, point = mounts["unified"]
        offered: set[str] = set()
        with contextlib.suppress(OSError):
            offered = set((Path(point) / "cgroup.controllers").read_text().split())
        wanted = tuple(c for c in CONTROLLERS if c in offered)
        if wanted:
            try:
                claimed = delegation.claim(Path(point), wanted, manager=manager, mount_root=root)
            except delegation.Refused as exc:
                problem = str(exc)
            else:
                in_v2 = claimed.controllers
                if in_v2:
                    found.append(_Hierarchy(2, in_v2, claimed.root, claimed.how, claimed.removable))
                missing = [c for c in wanted if c not in in_v2]
                if missing:
                    problem = (
                        f"{claimed.root} ({claimed.how}) is given no {'/'.join(missing)} controller by its parent; "
                        "for a user's manager: systemctl edit user@.service, [Service] Delegate=memory pids cpu"
                    )
    for controller in CONTROLLERS:
        path = _locate(own, mounts, controller)
        if controller not in in_v2 and path is not None and own[controller][0] == 1:
            found.append(_Hierarchy(1, (controller,), path, "the server's own cgroup"))
    return found, problem


class JobCgroup:
    """The cgroups of one job: the launcher writes its own pid into `procs_files` before it execs bwrap."""

    def __init__(self, name: str, dirs: list[tuple[_Hierarchy, Path]]) -> None:
        self.name = name
        self._dirs = dirs

    @property
    def procs_files(self) -> list[str]:
        return [str(path / "cgroup.procs") for _, path in self._dirs]

    def oom_killed(self) -> bool:
        """Whether the kernel OOM-killed a process of this job because of the memory limit."""
        for hierarchy, path in self._dirs:
            if "memory" in hierarchy.controllers:
                name = "memory.events" if hierarchy.version == 2 else "memory.oom_control"
                return _read_counter(path / name, "oom_kill") > 0
        return False

    def pids(self) -> set[int]:
        return _procs(path for _, path in self._dirs)

    def cpu_ns(self) -> int | None:
        """CPU time used by every process the job has had (the dead ones too), or None when not accounted."""
        for hierarchy, path in self._dirs:
            if "cpuacct" in hierarchy.controllers:
                return _read_int(path / "cpuacct.usage")
        for hierarchy, path in self._dirs:
            if hierarchy.version == 2:
                usec = _read_counter(path / "cpu.stat", "usage_usec", default=-1)
                return None if usec < 0 else usec * 1000
        return None

    def memory_peak(self) -> int | None:
        """The job's highest memory use (page cache and tmpfs files included) since start_stage(), in bytes."""
        for hierarchy, path in self._dirs:
            if "memory" in hierarchy.controllers:
                return _read_int(path / ("memory.peak" if hierarchy.version == 2 else "memory.max_usage_in_bytes"))
        return None

    def start_stage(self) -> None:
        """Restart the memory peak from the current use, so the run stage's peak is not the compiler's. cgroup v2
        cannot reset memory.peak this way (before Linux 6.12 not at all): there it stays the whole job's peak."""
        for hierarchy, path in self._dirs:
            if "memory" in hierarchy.controllers and hierarchy.version == 1:
                with contextlib.suppress(OSError):
                    _write(path / "memory.max_usage_in_bytes", "0")

    def kill(self) -> bool:
        """SIGKILL every process in the job's cgroups; a few passes catch processes forked meanwhile. True when the
        last pass found them empty."""
        for hierarchy, path in self._dirs:
            if hierarchy.version == 2:
                with contextlib.suppress(OSError):
                    _write(path / "cgroup.kill", "1")
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _EMPTY_WAIT_S
        while not self.kill() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self._rmdir()

    def remove_now(self) -> None:
        """remove(), blocking: for the warm pool's threads, which have no event loop."""
        deadline = time.monotonic() + _EMPTY_WAIT_S
        while not self.kill() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._rmdir()

    def _rmdir(self) -> None:
        for _, path in self._dirs:
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot remove cgroup %s of job %s: %s", path, self.name, exc)


class Cgroups:
    """Creates per-job cgroups with the memory and pids limits, below one directory per server instance."""

    def __init__(
        self, bases: list[tuple[_Hierarchy, Path]], memory_bytes: int, max_tasks: int, *, guard: _Guard | None = None
    ) -> None:
        self._bases = bases
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
        bases: list[tuple[_Hierarchy, Path]] = []
        hierarchies, problem = _find_hierarchies(manager)
        for hierarchy in hierarchies:
            try:
                bases.append((hierarchy, _make_base(hierarchy)))
            except OSError as exc:
                logger.info("%s not usable for job limits: %s", hierarchy.label("/".join(hierarchy.controllers)), exc)
                problem = problem or f"cannot create cgroups in {hierarchy.own}: {exc.strerror}"
        guard = None
        if bases:
            try:
                guard = _Guard([base for _, base in bases])
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
        dirs: list[tuple[_Hierarchy, Path]] = []
        try:
            for hierarchy, base in self._bases:
                path = base / name
                path.mkdir()
                dirs.append((hierarchy, path))
                self._limit(hierarchy, path, min(memory_bytes or self._memory_bytes, self._memory_bytes))
        except OSError:
            for _, path in dirs:
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise
        return JobCgroup(name, dirs)

    def restrict(self, cgroup: JobCgroup, memory_bytes: int) -> None:
        """Lower a created cgroup's memory limit (a warm sandbox taken by a job that asked for less memory)."""
        for hierarchy, path in cgroup._dirs:
            self._limit(hierarchy, path, min(memory_bytes, self._memory_bytes))

    def _limit(self, hierarchy: _Hierarchy, path: Path, memory_bytes: int) -> None:
        if "pids" in hierarchy.controllers:
            _write(path / "pids.max", str(self._max_tasks))
        if "memory" not in hierarchy.controllers:
            return
        if hierarchy.version == 2:
            _write(path / "memory.max", str(memory_bytes))
            _optional_write(path / "memory.swap.max", "0")
        else:
            _write(path / "memory.limit_in_bytes", str(memory_bytes))
            # Without this the job could spill past the limit into swap (when swap accounting is on).
            _optional_write(path / "memory.memsw.limit_in_bytes", str(memory_bytes))

    def close(self) -> None:
        """Remove this server's directories (job cgroups are removed as their jobs end)."""
        for hierarchy, base in self._bases:
            _remove_tree(base, hierarchy)
            if hierarchy.removable:
                with contextlib.suppress(OSError):  # other servers' directories still in it: the last one removes it
                    hierarchy.own.rmdir()
        self._bases = []
        if self._guard is not None:
            self._guard.stop()
            self._guard = None


class _Guard:
    """The guard process (see _GUARD) for this server's base directories, in its own session so that signals sent
    to the server's process group or terminal do not take it down with the server."""

    def __init__(self, bases: list[Path]) -> None:
        read, self._write = os.pipe()  # close-on-exec: launchers and jobs never hold the write end
        try:
            self._proc = subprocess.Popen(
                ["/bin/sh", "-c", _GUARD, "conveyor-guard", *map(str, bases)],
                stdin=read,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,
            )
        except BaseException:
            os.close(self._write)
            raise
        finally:
            os.close(read)

    def stop(self) -> None:
        """Release the guard: it sweeps what is left (after a clean close, nothing) and exits."""
        os.close(self._write)
        try:
            self._proc.wait(timeout=_GUARD_STOP_S)
        except subprocess.TimeoutExpired:
            logger.warning("cgroup guard %d still running after %.0f s", self._proc.pid, _GUARD_STOP_S)


def _read_counter(path: Path, key: str, default: int = 0) -> int:
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    return default


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _optional_write(path: Path, value: str) -> None:
    if path.exists():
        with contextlib.suppress(OSError):
            _write(path, value)


def _make_base(hierarchy: _Hierarchy) -> Path:
    """Create this server's directory under its own cgroup, after sweeping ones left by dead servers."""
    _sweep_stale(hierarchy)
    base = hierarchy.own / f"{_PREFIX}{_pid_namespace()}-{os.getpid()}-{secrets.token_hex(3)}"
    base.mkdir()
    if hierarchy.version == 2:
        try:
            _write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in hierarchy.controllers))
        except OSError:
            base.rmdir()
            raise
    return base


def _pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _sweep_stale(hierarchy: _Hierarchy) -> None:
    """Kill what is left in the directories of dead servers (their guard did not get to it), then remove them.

    A directory is a dead server's only if its name carries our pid namespace and a pid that does not exist in it:
    a live server's pid always exists, and servers in other containers sharing this hierarchy (whose pids we cannot
    see) carry another namespace. A reused pid only makes us leave a dead server's directory for a later sweep.
    """
    for path in hierarchy.own.glob(f"{_PREFIX}{_pid_namespace()}-*-*"):
        pid = path.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _kill_tree(path)
            _remove_tree(path, hierarchy)


def _procs(dirs: Iterable[Path]) -> set[int]:
    found: set[int] = set()
    for path in dirs:
        with contextlib.suppress(OSError, ValueError):
            found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
    return found


def _kill_tree(base: Path) -> None:
    """SIGKILL every process in a server's directory and its job cgroups until they are empty, for up to
    _EMPTY_WAIT_S (killed processes take a moment to leave)."""
    deadline = time.monotonic() + _EMPTY_WAIT_S
    while True:
        dirs = [base]
        with contextlib.suppress(OSError):
            dirs += [child for child in base.iterdir() if child.is_dir()]
        pids = _procs(dirs)
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _remove_tree(base: Path, hierarchy: _Hierarchy) -> None:
    with contextlib.suppress(OSError):
        for child in base.iterdir():
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()
        base.rmdir()
        return
    if base.exists():
        logger.warning("cannot remove %s directory %s (jobs still in it?)", hierarchy.label("cgroup"), base)
