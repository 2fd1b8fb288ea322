"""A checkout the jobs' uid cannot reach (git clone into a mode-700 /root) still runs jobs (sandbox/hostpaths.py)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.errors import SandboxUnavailable
from server.sandbox import hostpaths
from server.sandbox import runner as sandbox_module
from server.sandbox.spec import PRELOADS
from tests.test_sandbox import SETTINGS, open_sandbox, run_job

JAVA_HELLO = 'public class Main { public static void main(String[] a) { System.out.println("java"); } }'
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root drops jobs to another uid")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A scratch directory every user can reach (pytest's own tmp_path is mode 700)."""
    path = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="conveyor-test-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _private_checkout(tmp_path: Path) -> Path:
    """The C helper as `make install` leaves it in a checkout under a home only its owner may enter."""
    home = tmp_path / "root"
    home.mkdir(mode=0o700)
    helper = home / "conveyor" / "server" / "sandbox" / "helper" / "conveyor-run"
    helper.parent.mkdir(parents=True)
    shutil.copy2(sandbox_module.HELPER, helper)
    return helper


@as_root
async def test_a_checkout_in_a_private_home_runs_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: every probe failed (bubblewrap, as uid 65534, could not bind the helper from the checkout) and the
    # server refused to start with "no language toolchain works inside the sandbox; install python3".
    helper = _private_checkout(tmp_path)
    monkeypatch.setattr(sandbox_module, "HELPER", helper)
    async with open_sandbox(SETTINGS, languages=["python"]) as box:
        assert box.sandbox.helper is not None and not box.sandbox.helper.startswith(str(tmp_path))
        assert hostpaths.unreachable(Path(box.sandbox.helper)) is None
        run = await run_job(box, "python", "print('hello from a private checkout')")
    assert run.result.stdout == "hello from a private checkout\n", run.result


@as_root
async def test_the_pre_started_runtimes_code_in_a_private_checkout_reaches_the_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """node's preload.js and java's launcher are bound into every sandbox of their language, its probe's too. From a
    checkout in a private home, bubblewrap (as the job's uid) could not open them: javascript and java were not
    offered at all ("Can't find source path ... Permission denied", seen in the cgroup v2 VM's root scenario)."""
    helper = _private_checkout(tmp_path)
    monkeypatch.setattr(sandbox_module, "HELPER", helper)
    for interpreter in ("node", "java"):
        if not PRELOADS[interpreter].exists():
            continue
        private = helper.parent / PRELOADS[interpreter].name
        copy = shutil.copytree if PRELOADS[interpreter].is_dir() else shutil.copy2
        copy(PRELOADS[interpreter], private)
        monkeypatch.setitem(PRELOADS, interpreter, private)
    settings = dataclasses.replace(SETTINGS, warm_pool=2)
    async with open_sandbox(settings, languages=["javascript", "java"]) as box:
        assert box.sandbox.offers("javascript") and box.sandbox.offers("java"), box.sandbox.runtimes()
        node = await run_job(box, "javascript", "console.log('node from a private checkout')")
        java = await run_job(
            box, "java", 'public class Main { public static void main(String[] a) { System.out.println("java"); } }'
        )
    assert node.result.stdout == "node from a private checkout\n", node.result
    assert java.result.stdout == "java\n", java.result


@as_root
async def test_a_path_the_jobs_cannot_reach_is_named_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper = _private_checkout(tmp_path)
    monkeypatch.setattr(sandbox_module, "HELPER", helper)
    monkeypatch.setattr(hostpaths, "reachable_helper", lambda path, cache: path)  # as before the copy existed
    with pytest.raises(SandboxUnavailable) as refused:
        async with open_sandbox(SETTINGS, languages=["python"]):
            pass
    message = str(refused.value)
    assert f"which cannot reach {helper}" in message and "chmod o+rx" in message, message
    assert "install python3" not in message


def test_unreachable_names_the_directory_that_is_closed(open_dir: Path) -> None:
    tmp_path = open_dir
    helper = _private_checkout(tmp_path)
    assert hostpaths.unreachable(helper) == tmp_path / "root"
    os.chmod(tmp_path / "root", 0o711)  # others may pass through, not list: enough to reach a known path
    assert hostpaths.unreachable(helper) is None
    os.chmod(helper, 0o750)
    assert hostpaths.unreachable(helper) == helper
    assert hostpaths.unreachable(tmp_path / "missing") == tmp_path / "missing"


def test_the_copy_is_made_once_by_content_and_only_where_others_cannot_write(
    open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper = _private_checkout(open_dir)
    shared = open_dir / "shared"
    (shared / "bin").mkdir(parents=True)
    os.chmod(shared / "bin", 0o777)  # a directory anyone could write (someone else's, in /tmp): never used
    fallback = open_dir / "lib" / "bin"
    monkeypatch.setattr(hostpaths, "FALLBACK_DIRS", (fallback,))
    copy = hostpaths.reachable_helper(helper, shared)
    assert copy.parent == fallback and copy.read_bytes() == helper.read_bytes()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o755 and stat.S_IMODE(fallback.stat().st_mode) == 0o755
    inode = copy.stat().st_ino
    assert hostpaths.reachable_helper(helper, shared) == copy and copy.stat().st_ino == inode  # reused
    helper.write_bytes(helper.read_bytes() + b"\0")  # a rebuilt helper gets a copy of its own
    assert hostpaths.reachable_helper(helper, shared) != copy
    monkeypatch.setattr(hostpaths, "FALLBACK_DIRS", ())
    with pytest.raises(OSError, match="cannot copy"):
        hostpaths.reachable_helper(helper, shared)


@as_root
def test_the_copy_goes_to_the_cache_dir_and_never_on_a_noexec_mount(
    open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /run is noexec on Debian: a copy there could not be executed (the server failed to start from /root so).
    helper = _private_checkout(open_dir)
    cache = open_dir / "cache"
    cache.mkdir()
    assert hostpaths.reachable_helper(helper, cache).parent == cache / "bin"
    noexec = open_dir / "noexec"
    noexec.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,mode=755", "none", str(noexec)], check=True)
    try:
        monkeypatch.setattr(hostpaths, "FALLBACK_DIRS", (open_dir / "lib",))
        copy = hostpaths.reachable_helper(helper, noexec)
        assert copy.parent == open_dir / "lib"
        assert subprocess.run([copy], capture_output=True).returncode != 126  # it executes (usage: exit 2)
    finally:
        subprocess.run(["umount", str(noexec)], check=True)
