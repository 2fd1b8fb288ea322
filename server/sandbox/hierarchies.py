"""Cgroup hierarchies: where this process may create job cgroups (a claimed v2 subtree, or its own v1 cgroups)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from . import delegation

# cpuacct is cgroup v1's; cgroup v2 keeps CPU usage in every cgroup's cpu.stat, no controller needed.
CONTROLLERS = ("memory", "pids", "cpuacct")


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """One cgroup hierarchy we use: its version, the controllers we use in it, and the server's own cgroup."""

    version: int
    controllers: tuple[str, ...]
    own: Path  # where this process creates its directory: its claimed v2 subtree, or its own v1 cgroup
    how: str  # how that cgroup was obtained, for the start-up line
    removable: bool = False  # `own` is a subtree we made (delegation.Claim.removable): removed once empty

    def label(self, controller: str) -> str:
        return f"cgroup v{self.version} {controller}"


def own_cgroups() -> dict[str, tuple[int, str]]:
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


def mounts() -> dict[str, tuple[str, str]]:
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


def write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def find_hierarchies(manager: str) -> tuple[list[Hierarchy], str | None]:
    """The v2 subtree this process claims (delegation.claim) for the controllers the unified hierarchy offers;
    else each controller's v1 hierarchy (our own cgroup there, as root). Also why v2 could not be used, if so."""
    own, mounted = own_cgroups(), mounts()
    found: list[Hierarchy] = []
    problem = None
    in_v2: tuple[str, ...] = ()
    if "unified" in mounted and "unified" in own:
        root, point = mounted["unified"]
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
                    found.append(Hierarchy(2, in_v2, claimed.root, claimed.how, claimed.removable))
                missing = [c for c in wanted if c not in in_v2]
                if missing:
                    problem = (
                        f"{claimed.root} ({claimed.how}) is given no {'/'.join(missing)} controller by its parent; "
                        "for a user's manager: systemctl edit user@.service, [Service] Delegate=memory pids cpu"
                    )
    for controller in CONTROLLERS:
        path = _locate(own, mounted, controller)
        if controller not in in_v2 and path is not None and own[controller][0] == 1:
            found.append(Hierarchy(1, (controller,), path, "the server's own cgroup"))
    return found, problem
