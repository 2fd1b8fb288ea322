"""How the server claims a cgroup v2 subtree (server/sandbox/delegation.py), on the kernel's real unified hierarchy.

On this cgroup v1 host the unified hierarchy still exists (systemd mounts it at /sys/fs/cgroup/unified), offering the
controllers v1 does not bind (hugetlb). The kernel's rules are the same for every controller, so the claim's moves
(a delegated cgroup holding the shell beside the server, root's own subtree, a service systemd did not delegate)
are tested here with that one; on a cgroup v2 host (the VM, `make test-vm`) with pids. The systemd D-Bus path needs
a real systemd and is tested in the VM.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.sandbox import delegation
from server.sandbox.hierarchies import mounts

ROOT = Path(__file__).resolve().parents[1]


def _unified() -> tuple[Path, str] | None:
    found = mounts().get("unified")
    if found is None or os.geteuid() != 0:
        return None
    root, point = found
    offered = (Path(point) / "cgroup.controllers").read_text().split()
    usable = [c for c in ("hugetlb", "pids") if c in offered]
    return (Path(point), usable[0]) if root == "/" and usable else None


UNIFIED = _unified()
pytestmark = pytest.mark.skipif(UNIFIED is None, reason="needs root and a cgroup v2 hierarchy with a free controller")


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A cgroup of the test's own under the unified root, removed with everything in it afterwards."""
    assert UNIFIED is not None
    # As systemd does up to a delegated unit: the controller is enabled down to the cgroup's parent.
    (UNIFIED[0] / "cgroup.subtree_control").write_text(f"+{UNIFIED[1]}")
    path = UNIFIED[0] / f"conveyor-test-{secrets.token_hex(4)}"
    path.mkdir()
    try:
        yield path
    finally:
        _destroy(path)


def _destroy(path: Path) -> None:
    for _ in range(200):
        children = [p for p in path.rglob("*") if p.is_dir()]
        pids = [int(p) for d in [path, *children] for p in (d / "cgroup.procs").read_text().split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not pids:
            for child in sorted(children, key=lambda p: len(p.parts), reverse=True):
                child.rmdir()
            path.rmdir()
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} did not empty")


def _sleeper(cgroup: Path) -> subprocess.Popen[bytes]:
    """A process living in `cgroup`, as the shell or `make` that started the server does."""
    proc = subprocess.Popen(["sleep", "60"])
    (cgroup / "cgroup.procs").write_text(str(proc.pid))
    return proc


def _pids(cgroup: Path) -> set[int]:
    return {int(p) for p in (cgroup / "cgroup.procs").read_text().split()}


CLAIM = """
import json, os, sys
from pathlib import Path
from server.sandbox import delegation, systemd
cgroup, mount, controller, manager, booted = sys.argv[1:6]
with open(Path(cgroup) / "cgroup.procs", "w") as f:
    f.write(str(os.getpid()))
systemd.booted = lambda: booted == "1"
try:
    got = delegation.claim(Path(mount), (controller,), manager=manager)
except delegation.Refused as exc:
    print(json.dumps({"refused": str(exc)}))
else:
    print(json.dumps({"root": str(got.root), "controllers": got.controllers, "how": got.how, "pid": os.getpid()}))
"""


def _claim_in(cgroup: Path, *, manager: str = "auto", booted: bool = False) -> dict[str, object]:
    """Run delegation.claim in a fresh process placed in `cgroup` (a claim is made once per process)."""
    assert UNIFIED is not None
    argv = [sys.executable, "-c", CLAIM, str(cgroup), str(UNIFIED[0]), UNIFIED[1], manager, "1" if booted else "0"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def _delegate(cgroup: Path) -> None:
    os.setxattr(cgroup, "trusted.delegate", b"1")


def test_a_delegated_cgroup_holding_the_shell_beside_the_server_is_claimed(scratch: Path) -> None:
    # `systemd-run --scope -p Delegate=yes make run`: make lives in the delegated scope too. Moving only the server
    # into a leaf left make there, and the kernel refused the controllers (EBUSY): the old start-up failed so.
    assert UNIFIED is not None
    _delegate(scratch)
    make = _sleeper(scratch)
    try:
        got = _claim_in(scratch)
        assert got["root"] == str(scratch) and got["controllers"] == [UNIFIED[1]], got
        assert "delegated" in str(got["how"])
        assert UNIFIED[1] in (scratch / "cgroup.subtree_control").read_text().split()
        assert make.pid in _pids(scratch / delegation.LEAF)  # moved, not killed
        assert _pids(scratch) == set()
        # Job cgroups can now be made beside the leaf, with the controller.
        job = scratch / "job"
        job.mkdir()
        assert UNIFIED[1] in (job / "cgroup.controllers").read_text().split()
    finally:
        make.kill()
        make.wait()


def test_a_cgroup_systemd_did_not_delegate_is_not_taken_over(scratch: Path) -> None:
    # A unit without Delegate=yes: taking its cgroup over made systemd stop the whole service on a job's OOM kill.
    service = scratch / "conveyor.service"
    service.mkdir()
    got = _claim_in(service, manager="systemd", booted=True)
    assert "refused" in got
    assert "conveyor.service" in str(got["refused"]) and "Delegate=yes" in str(got["refused"])
    assert (service / "cgroup.subtree_control").read_text().strip() == ""
    assert not (service / delegation.LEAF).exists()


def test_root_without_a_service_manager_makes_a_subtree_of_its_own(scratch: Path) -> None:
    # A root shell on a host systemd does not run (a container with its own cgroup namespace, another init): the
    # jobs' cgroups go to /sys/fs/cgroup/conveyor whatever cgroup the shell lives in; the server stays where it is.
    assert UNIFIED is not None
    subtree = UNIFIED[0] / delegation.SUBTREE
    existed = subtree.exists()
    shell = _sleeper(scratch)
    try:
        got = _claim_in(scratch, manager="cgroupfs")
        assert got["root"] == str(subtree) and got["controllers"] == [UNIFIED[1]], got
        assert "own subtree" in str(got["how"])
        assert UNIFIED[1] in (subtree / "cgroup.subtree_control").read_text().split()
        assert _pids(scratch) == {shell.pid}  # nothing of the shell's cgroup was moved
    finally:
        shell.kill()
        shell.wait()
        if not existed:
            with contextlib.suppress(OSError):
                subtree.rmdir()


def test_without_delegation_or_root_rights_the_refusal_names_the_causes(scratch: Path) -> None:
    got = _claim_in(scratch, manager="systemd", booted=False)
    assert "systemd does not run this host" in str(got.get("refused")), got


def test_is_delegated_reads_what_systemd_writes(scratch: Path) -> None:
    assert not delegation.is_delegated(scratch)
    os.setxattr(scratch, "trusted.delegate", b"0")
    assert not delegation.is_delegated(scratch)
    _delegate(scratch)
    assert delegation.is_delegated(scratch)


def test_evacuate_moves_processes_that_fork_meanwhile(scratch: Path) -> None:
    forker = subprocess.Popen(["sh", "-c", "while :; do sleep 30 & sleep 0.01; done"])
    (scratch / "cgroup.procs").write_text(str(forker.pid))
    try:
        time.sleep(0.1)
        assert delegation.evacuate(scratch) == []
        assert forker.pid in _pids(scratch / delegation.LEAF)
    finally:
        forker.kill()
        forker.wait()
