"""Delegation: the cgroup v2 subtree this process may create job cgroups in, and how it was obtained.

cgroup v2 lets a process manage only a subtree that is its own: one systemd delegated to it (a unit with
`Delegate=yes`, or a transient scope it asked for), or, for root on a host no service manager runs, a subtree of
the hierarchy's root. A cgroup that hands controllers to children may hold no processes itself ("no internal
processes"), so whatever lives in the claimed cgroup (the server, and the shell or `make` that started it) is moved
into a leaf first. A cgroup that systemd did not delegate is never taken over: its unit would be stopped by systemd
on a job's OOM kill, and systemd may rewrite it at any time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from . import systemd

logger = logging.getLogger(__name__)

LEAF = "conveyor-server"  # where the processes of a claimed cgroup go (the server, a make or shell beside it)
SUBTREE = "conveyor"  # root's own subtree below the hierarchy root, on hosts without a service manager
MANAGERS = ("auto", "systemd", "cgroupfs")
UNIT_FIX = (
    "add Delegate=yes to the [Service] section of its unit (deploy/conveyor.service has it), then "
    "systemctl daemon-reload and restart it"
)
_MOVE_PASSES = 20


class Refused(Exception):
    """No cgroup v2 subtree can be claimed here; the message names the cause and the fix."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A cgroup this process may create children in, with `controllers` enabled for them."""

    root: Path
    controllers: tuple[str, ...]
    how: str
    removable: bool = False  # ours to remove once empty (root's own subtree); systemd removes what it gave


_lock = threading.Lock()
_claims: dict[tuple[str, tuple[str, ...]], Claim] = {}


def claim(mount: Path, wanted: tuple[str, ...], *, manager: str = "auto", mount_root: str = "/") -> Claim:
    """Claim a subtree of the cgroup v2 hierarchy mounted at `mount` (showing the hierarchy from `mount_root`),
    once per process: every sandbox of this process creates its directory below the same claim. Raises Refused."""
    key = (str(mount), wanted)
    with _lock:
        found = _claims.get(key)
        if found is not None and found.root.is_dir():
            return found
        made = _claim(mount, mount_root, wanted, manager)
        _claims[key] = made
        return made


def _own(mount: Path, mount_root: str) -> Path:
    path = systemd.own_cgroup()
    root = mount_root.rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return mount / path.lstrip("/")


def _claim(mount: Path, mount_root: str, wanted: tuple[str, ...], manager: str) -> Claim:
    own = _own(mount, mount_root)
    problems: list[str] = []
    if manager in ("auto", "systemd"):
        if is_delegated(own):
            return take(own, wanted, f"this process's cgroup, which systemd delegated ({own.name})")
        if systemd.booted():
            if own.name.endswith(".service"):
                raise Refused(f"the systemd service {own.name} does not delegate its cgroup to the server: {UNIT_FIX}")
            try:
                scope, asked = systemd.start_delegated_scope(f"Conveyor server (pid {os.getpid()})")
            except systemd.Unavailable as exc:
                problems.append(f"systemd did not give a delegated scope ({exc})")
            else:
                scoped = _own(mount, mount_root)
                sweep_dead_scopes(scoped.parent, keep=scoped.name)
                return take(scoped, wanted, f"a delegated scope {scope} from {asked}")
        elif manager == "systemd":
            problems.append("systemd does not run this host (CGROUP_MANAGER=systemd)")
    if manager in ("auto", "cgroupfs"):
        if os.geteuid() == 0 and os.access(mount / "cgroup.subtree_control", os.W_OK):
            return _own_subtree(mount, wanted)
        problems.append(
            f"not root, so no subtree of {mount} of its own"
            if os.geteuid() != 0
            else f"{mount} is not writable (a container needs a writable cgroup2 mount of its own cgroup namespace)"
        )
    raise Refused("; ".join(problems))


def _own_subtree(mount: Path, wanted: tuple[str, ...]) -> Claim:
    """Root, no service manager to ask: a subtree of the hierarchy root. The server itself stays where it is; only
    its jobs' cgroups live there."""
    offered = set((mount / "cgroup.controllers").read_text().split())
    usable = tuple(c for c in wanted if c in offered)
    # The true root may hold processes and still hand out controllers; a cgroup namespace's root (a container)
    # may not, and then what lives there moves to a leaf, as a delegated cgroup's processes do.
    _enable(mount, usable)
    subtree = mount / SUBTREE
    subtree.mkdir(exist_ok=True)
    claimed = take(subtree, wanted, f"its own subtree of the cgroup v2 root ({mount}, as root)")
    return dataclasses.replace(claimed, removable=True)


def take(cgroup: Path, wanted: tuple[str, ...], how: str) -> Claim:
    """Enable the controllers we use for `cgroup`'s children, first moving the processes in it into a leaf."""
    try:
        offered = set((cgroup / "cgroup.controllers").read_text().split())
    except OSError as exc:
        raise Refused(f"cannot read {cgroup}/cgroup.controllers: {exc.strerror}") from None
    usable = tuple(c for c in wanted if c in offered)
    missing = [c for c in wanted if c not in offered]
    if missing:
        logger.warning("cgroup %s offers no %s controller to its children", cgroup, "/".join(missing))
    if usable:
        _enable(cgroup, usable)
    return Claim(cgroup, usable, how)


def _enable(cgroup: Path, controllers: tuple[str, ...]) -> None:
    control = cgroup / "cgroup.subtree_control"
    if set(controllers) <= set(control.read_text().split()):
        return
    wanted = " ".join(f"+{c}" for c in controllers)
    try:
        _write(control, wanted)
        return
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise Refused(f"cannot enable {'/'.join(controllers)} in {control}: {exc.strerror}") from None
    left = evacuate(cgroup)
    try:
        _write(control, wanted)
    except OSError as exc:
        raise Refused(
            f"cannot enable {'/'.join(controllers)} in {control}: {exc.strerror} (processes {left} could not be "
            f"moved to {cgroup / LEAF})"
        ) from None


def evacuate(cgroup: Path) -> list[int]:
    """Move every process of `cgroup` into its leaf (a few passes: they may fork meanwhile); the pids left."""
    leaf = cgroup / LEAF
    leaf.mkdir(exist_ok=True)
    left: list[int] = []
    for _ in range(_MOVE_PASSES):
        left = _pids(cgroup)
        if not left:
            return []
        for pid in left:
            with contextlib.suppress(OSError):  # gone meanwhile, or a kernel thread that cannot move
                _write(leaf / "cgroup.procs", str(pid))
    return _pids(cgroup)


_SCOPE = re.compile(r"conveyor-(\d+)-(\d+)-[0-9a-f]{6}\.scope")


def sweep_dead_scopes(parent: Path, *, keep: str) -> list[str]:
    """Kill what is left in the scopes of dead servers beside ours (a server killed with its guard leaves a job's
    bubblewrap, pid 1 of its namespace, holding its scope), so systemd can collect them. A scope is a dead server's
    when the pid in its name is gone, or no longer lives in it; only scopes named in our pid namespace are judged
    (another container's pids are not ours to see). Returns the scopes swept."""
    swept = []
    namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            match = _SCOPE.fullmatch(entry.name)
            if match is None or entry.name == keep or match[1] != namespace or _lives_in(int(match[2]), entry.name):
                continue
            with contextlib.suppress(OSError):  # another user's, or gone meanwhile
                _write(entry / "cgroup.kill", "1")
                swept.append(entry.name)
    if swept:
        logger.info("killed what dead servers left in %s", ", ".join(swept))
    return swept


def _lives_in(pid: int, scope: str) -> bool:
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return False
    return any(f"/{scope}/" in line.rstrip() + "/" for line in lines)


def is_delegated(cgroup: Path) -> bool:
    """Whether systemd marked `cgroup` delegated (Delegate=yes): the trusted.delegate xattr, or user.delegate where
    the manager is unprivileged (systemd >= 251). The same check as systemd's own cg_is_delegated()."""
    for name in ("trusted.delegate", "user.delegate"):
        with contextlib.suppress(OSError):
            if os.getxattr(cgroup, name).strip(b"\0") in (b"1", b"yes", b"true"):
                return True
    return False


def _pids(cgroup: Path) -> list[int]:
    with contextlib.suppress(OSError, ValueError):
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    return []


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)
