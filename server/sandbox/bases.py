"""The server's own cgroup directories, one per hierarchy: made, swept when a dead server left them, removed, and
guarded by a watchdog that empties them if the server dies."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from .hierarchies import Hierarchy, write

logger = logging.getLogger(__name__)

PREFIX = "conveyor-"
EMPTY_WAIT_S = 2.0
_GUARD_STOP_S = 5.0

# The guard: a watchdog beside the server, blocked reading a pipe that only the server holds open, so the read ends
# (EOF) once the server is gone, however it ended (SIGKILL included). It then kills whatever is left in the server's
# job cgroups and removes them, for up to 5 s. bwrap's --die-with-parent alone is not enough: a sandbox child that
# bwrap's monitor has not released yet has no parent-death signal, and if the monitor dies with the server it blocks
# for ever as pid 1 of its pid namespace. Removing a job's cgroup also stops a launcher the server had started but
# that has not joined it yet: its join fails. Arguments: the server's base directories, one per hierarchy.
GUARD = """
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


class Guard:
    """The guard process (see GUARD) for this server's base directories, in its own session so that signals sent
    to the server's process group or terminal do not take it down with the server."""

    def __init__(self, bases: list[Path]) -> None:
        read, self._write = os.pipe()  # close-on-exec: launchers and jobs never hold the write end
        try:
            self._proc = subprocess.Popen(
                ["/bin/sh", "-c", GUARD, "conveyor-guard", *map(str, bases)],
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


def make_base(hierarchy: Hierarchy) -> Path:
    """Create this server's directory under its own cgroup, after sweeping ones left by dead servers."""
    _sweep_stale(hierarchy)
    base = hierarchy.own / f"{PREFIX}{_pid_namespace()}-{os.getpid()}-{secrets.token_hex(3)}"
    base.mkdir()
    if hierarchy.version == 2:
        try:
            write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in hierarchy.controllers))
        except OSError:
            base.rmdir()
            raise
    return base


def _pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _sweep_stale(hierarchy: Hierarchy) -> None:
    """Kill what is left in the directories of dead servers (their guard did not get to it), then remove them.

    A directory is a dead server's only if its name carries our pid namespace and a pid that does not exist in it:
    a live server's pid always exists, and servers in other containers sharing this hierarchy (whose pids we cannot
    see) carry another namespace. A reused pid only makes us leave a dead server's directory for a later sweep.
    """
    for path in hierarchy.own.glob(f"{PREFIX}{_pid_namespace()}-*-*"):
        pid = path.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _kill_tree(path)
            remove_tree(path, hierarchy)


def procs(dirs: Iterable[Path]) -> set[int]:
    found: set[int] = set()
    for path in dirs:
        with contextlib.suppress(OSError, ValueError):
            found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
    return found


def _kill_tree(base: Path) -> None:
    """SIGKILL every process in a server's directory and its job cgroups until they are empty, for up to
    EMPTY_WAIT_S (killed processes take a moment to leave)."""
    deadline = time.monotonic() + EMPTY_WAIT_S
    while True:
        dirs = [base]
        with contextlib.suppress(OSError):
            dirs += [child for child in base.iterdir() if child.is_dir()]
        pids = procs(dirs)
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def remove_tree(base: Path, hierarchy: Hierarchy) -> None:
    with contextlib.suppress(OSError):
        for child in base.iterdir():
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()
        base.rmdir()
        return
    if base.exists():
        logger.warning("cannot remove %s directory %s (jobs still in it?)", hierarchy.label("cgroup"), base)
