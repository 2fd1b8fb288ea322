"""What the warm pool leaves behind: descriptors, threads, processes and cgroups after failed hand-overs, cancelled
takes, churn and close() (sandbox/pool.py, execution.Run.cleanup, reaper.Reaper).

These tests count the whole process's descriptors and threads, so they live apart from every module-scoped pool:
another pool's refill thread, finishing a start while a test counts, opens that sandbox's mount-namespace descriptor
(warm.start_warm) and is counted as this test's leak. That is how the burst test below once failed about one run in
eight, when it shared test_pool_attacks.py with a module-scoped pool of three."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import threading
from pathlib import Path

import pytest

from server.judging.executor import Judge
from server.queue.jobs import Job, Limits, SourceFile
from server.sandbox.pool import Warm
from tests.conftest import make_settings
from tests.test_pool import ended, run, warm_run
from tests.test_pool_attacks import full, ready_sandboxes

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def server_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settled(box: Judge) -> None:
    """Until the pool is full and what ended runs left is released: a run's cgroup files are closed by the reaper's
    thread after its result (reaper.Reaper), so a cold run's may still be open when a test counts."""
    await full(box)
    await box.sandbox.released()


def fd_targets() -> dict[str, str]:
    """What each of the server's descriptors is (for a failure's message: which kind was left behind)."""
    targets = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            targets[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return targets


async def test_files_past_the_work_dirs_size_fail_a_warm_run_as_a_cold_one() -> None:
    """A job message larger than /box (files past WORKDIR_SIZE_MB, which MAX_CODE_BYTES allows here): the driver
    stops reading midway, the server's write meets a closed pipe, and the run fails as a cold one does, leaking
    nothing."""
    settings = make_settings(warm_pool=1, workdir_size_mb=1, max_code_bytes=4 << 20)
    cold_box = await Judge.create(dataclasses.replace(settings, warm_pool=0), languages=("python",))
    warm_box = await Judge.create(settings, languages=("python",))
    try:
        big = SourceFile("big.bin", base64.b64encode(bytes(2 << 20)).decode(), "base64")
        job = Job(language="python", code="", files=[SourceFile("main.py", "print(1)\n"), big])
        want = await run(cold_box, job)
        await run(warm_box, Job(language="python", code="pass"))
        await cold_box.sandbox.released()
        await settled(warm_box)
        before = server_fds()
        got = await warm_run(warm_box, job)
        await settled(warm_box)
        assert server_fds() == before
    finally:
        await warm_box.close()
        await cold_box.close()
    assert want.reason == "internal_error" and "No space left on device" in want.stderr, want
    assert (got.reason, got.exit_code, got.stdout) == (want.reason, want.exit_code, want.stdout)
    assert "No space left on device" in got.stderr, got


async def test_a_failed_warm_hand_over_leaks_no_descriptor() -> None:
    """Whatever ends a warm take early (here the memory limit above), the sandbox's pipes are closed and its
    processes reaped and its cgroup gone: repeated, it must not eat the server's descriptors or leave zombies."""
    sandbox = await Judge.create(make_settings(warm_pool=2), languages=("python",))
    try:
        await run(sandbox, Job(language="python", code="pass"))
        await settled(sandbox)
        before = server_fds()
        taken: list[Warm] = []
        for _ in range(3):
            await full(sandbox)
            taken.append(ready_sandboxes(sandbox)[0])
            with contextlib.suppress(Exception):
                await warm_run(sandbox, Job(language="python", code="print(1)\n", limits=Limits(memory_mb=1)))
        await settled(sandbox)
        assert server_fds() == before
        for warm in taken:
            assert warm.popen.returncode is not None and ended(warm.child_pid)
            assert warm.cgroup is None or not any(Path(p).exists() for p in warm.cgroup.procs_files)
    finally:
        await sandbox.close()


# -- churning the pool --------------------------------------------------------------------------------------------


async def test_cancelling_a_run_at_each_step_of_a_warm_take_leaves_nothing() -> None:
    """Cancelled after 1, 2, ... loop iterations: during the take, the hand-over, the job message (with a large
    stdin behind it), the start of the program. Each sandbox taken is destroyed and none is counted in use."""
    sandbox = await Judge.create(make_settings(warm_pool=2), languages=("python",))
    taken: list[Warm] = []
    try:
        await run(sandbox, Job(language="python", code="pass"))
        await settled(sandbox)
        before = server_fds()
        code = "import time\nprint('started', flush=True)\ntime.sleep(30)\n"
        job = Job(language="python", code=code, stdin="x" * 200_000)
        for spins in [*range(1, 12), 20, 40]:
            await full(sandbox)
            taken.append(ready_sandboxes(sandbox)[0])
            task = asyncio.ensure_future(run(sandbox, job))
            for _ in range(spins):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await settled(sandbox)
        assert server_fds() == before
        assert sandbox.pool_status()["hits"] == len(taken)
    finally:
        await sandbox.close()
    for warm in taken:
        assert warm.popen.returncode is not None and ended(warm.child_pid), warm


async def test_bursts_across_languages_leave_nothing_behind_once_closed() -> None:
    """Alternating bursts of three languages against a budget of two: the pool churns (stale sandboxes discarded,
    others started), and after close() the server has the descriptors and threads it had, and no sandbox is left."""
    fds, threads, targets = server_fds(), set(threading.enumerate()), fd_targets()
    sandbox = await Judge.create(make_settings(warm_pool=2, max_concurrent_jobs=4), languages=("python", "bash"))
    seen: set[Warm] = set()
    try:
        for _ in range(3):
            for language, code in (("python", "print(1)"), ("bash", "echo 1")):
                results = await asyncio.gather(*(run(sandbox, Job(language=language, code=code)) for _ in range(4)))
                assert [r.stdout for r in results] == ["1\n"] * 4, results
                seen.update(ready_sandboxes(sandbox))
        assert sandbox.pool_status()["hits"] >= 2
    finally:
        await sandbox.close()
    assert server_fds() == fds, {fd: what for fd, what in fd_targets().items() if targets.get(fd) != what}
    assert not [thread.name for thread in set(threading.enumerate()) - threads if thread.name.startswith("conveyor-")]
    for warm in seen:
        assert warm.popen.returncode is not None and ended(warm.child_pid), warm
