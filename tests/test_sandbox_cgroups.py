"""A job's cgroups: their figures, and their removal, which never leaves a process of the job behind."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.sandbox import reaper
from server.sandbox.cgroups import Cgroups, JobCgroup


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    groups = Cgroups.setup(memory_bytes=256 << 20, max_tasks=32)
    if groups.enforced_by("memory") is None or groups.enforced_by("pids") is None:
        groups.close()
        pytest.skip("no memory and pids cgroups to create job cgroups in")
    yield groups
    groups.close()


def dirs(cgroup: JobCgroup) -> list[Path]:
    return [Path(p).parent for p in cgroup.procs_files]


def joined(cgroup: JobCgroup, argv: list[str]) -> subprocess.Popen[bytes]:
    """A process put into the job's cgroups (the launcher's way: its pid into every cgroup.procs); its stdin is
    closed once it is in them, for a program that waits for that before it works."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)
    for procs in cgroup.procs_files:
        Path(procs).write_text(str(proc.pid))
    assert proc.stdin is not None
    proc.stdin.close()
    return proc


def test_a_cgroup_with_a_process_in_it_is_emptied_before_it_is_removed(cgroups: Cgroups) -> None:
    cgroup = cgroups.create(f"test-{secrets.token_hex(4)}")
    proc = joined(cgroup, ["sleep", "300"])
    assert cgroup.pids() == {proc.pid}
    cgroup.remove_now()
    assert proc.wait(timeout=10) == -9
    assert not any(path.exists() for path in dirs(cgroup))


async def test_an_empty_cgroup_is_removed_without_reading_its_processes(
    cgroups: Cgroups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usual end of a job (its pid namespace gone with its pid 1): the kernel's refusal to remove a populated
    cgroup is the check, so nothing is read first."""
    cgroup = cgroups.create(f"test-{secrets.token_hex(4)}")
    assert all(path.is_dir() for path in dirs(cgroup))

    def unexpected() -> set[int]:
        raise AssertionError("read cgroup.procs")

    monkeypatch.setattr(cgroup, "pids", unexpected)
    await cgroup.remove()
    assert not any(path.exists() for path in dirs(cgroup))


async def test_remove_kills_what_is_left_even_when_it_keeps_forking(cgroups: Cgroups) -> None:
    cgroup = cgroups.create(f"test-{secrets.token_hex(4)}")
    proc = joined(cgroup, ["sh", "-c", "while :; do sleep 300 & done"])
    await cgroup.remove()
    assert proc.wait(timeout=10) == -9
    assert not any(path.exists() for path in dirs(cgroup))


def test_a_new_cgroup_has_its_limits_and_counts_from_zero(cgroups: Cgroups) -> None:
    """The limits the server set, and the figures the stages read: CPU time from zero, rising with the work of a
    process in it, a memory peak past what that process wrote, no OOM kill."""
    cgroup = cgroups.create(f"test-{secrets.token_hex(4)}", memory_bytes=64 << 20)
    try:
        files = {file.name: file for path in dirs(cgroup) for file in path.iterdir()}
        assert files["pids.max"].read_text().strip() == "32"
        limit = files.get("memory.limit_in_bytes") or files["memory.max"]
        assert int(limit.read_text()) == 64 << 20
        accounted = cgroups.cpu_accounting() is not None
        assert cgroup.cpu_ns() == (0 if accounted else None)
        work = "import sys; sys.stdin.read(); data = b'x' * (16 << 20); x = sum(range(3_000_000))"
        proc = joined(cgroup, [sys.executable, "-c", work])
        assert proc.wait(timeout=60) == 0
        used = cgroup.cpu_ns()
        assert (used is not None and used > 0) if accounted else used is None
        peak = cgroup.memory_peak()
        assert peak is not None and peak >= 16 << 20
        assert cgroup.oom_killed() is False
    finally:
        cgroup.remove_now()


def test_a_name_whose_cgroups_are_still_there_gets_cgroups_of_its_own(cgroups: Cgroups) -> None:
    """An ended run's cgroups are removed by the reaper after its result: the same job run again at once (a retry)
    finds them still there, and its own are made beside them, each with its own limits and processes."""
    name = f"test-{secrets.token_hex(4)}"
    first = cgroups.create(name)
    second = cgroups.create(name, memory_bytes=64 << 20)
    try:
        assert second.name != first.name and second.name.startswith(f"{name}-")
        assert set(dirs(first)).isdisjoint(dirs(second)) and all(path.is_dir() for path in dirs(second))
        proc = joined(second, ["sleep", "300"])
        assert second.pids() == {proc.pid} and first.pids() == set()
    finally:
        second.remove_now()
        first.remove_now()
    assert proc.wait(timeout=10) == -9
    assert not any(path.exists() for path in [*dirs(first), *dirs(second)])


def test_a_held_up_reaper_takes_no_more_than_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its thread held (rmdirs queued on the kernel's cgroup mutex): past MAX_PENDING it refuses, and the run
    releases its own cgroups, so nothing piles up; once it catches up it takes work again."""
    monkeypatch.setattr(reaper, "MAX_PENDING", 8)
    held, done = threading.Event(), []
    box = reaper.Reaper()

    def hold() -> None:
        held.wait(10)

    try:
        assert box.release(None, [], hold)
        taken = [box.release(None, [], lambda: done.append(1)) for _ in range(20)]
        assert taken == [True] * 7 + [False] * 13
        held.set()
        assert box.caught_up().wait(10)
        assert len(done) == 7 and box.release(None, [], lambda: done.append(1))
    finally:
        held.set()
        box.close()
    assert len(done) == 8
