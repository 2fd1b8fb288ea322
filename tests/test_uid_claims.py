"""Two servers on one host never start sandboxes as the same uid (sandbox/uids.py UidClaims): each server here is a
real process with its own HostUids, claiming through real POSIX record locks on one file, as two workers over one
Redis on one host would. No sandbox is started, so no uid ever shows in /proc/key-users: the claims alone keep them
apart, which is the window they exist for (before a launcher has joined its keyring)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.judging.executor import Judge
from server.queue.jobs import Job, JobIO
from server.sandbox.uids import CLAIMS_FILE, HostUids, UidClaims
from tests.conftest import make_settings, scaled
from tests.test_sandbox_security import host_processes_with, marker

BASE = 3_000_000_000

# Another server. argv: the lock file, how many uids to take at once, claim_s, the range's base and size. It takes
# uids from the same range through its own claims on the same file and prints them, then one more for each line of
# stdin.
OTHER_SERVER = r"""
import sys
from server.sandbox.uids import HostUids, UidClaims
claims = UidClaims(sys.argv[1], claim_s=float(sys.argv[3]))
uids = HostUids(int(sys.argv[4]), int(sys.argv[5]), in_use=set, claims=claims)
print(*(uids.take() for _ in range(int(sys.argv[2]))), flush=True)
for line in sys.stdin:
    print(uids.take(), flush=True)
"""


@pytest.fixture
def lock_file(tmp_path: Path) -> str:
    return str(tmp_path / "run" / "sandbox-uids.lock")


def start_other_server(lock_file: str, take: int, claim_s: float, uids: int = 4) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", OTHER_SERVER, lock_file, str(take), str(claim_s), str(BASE), str(uids)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


@pytest.fixture
def other_server(lock_file: str) -> Iterator[subprocess.Popen[str]]:
    """A server that has just handed out two uids, BASE and BASE + 1, and holds their claims."""
    with start_other_server(lock_file, 2, 600) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == [str(BASE), str(BASE + 1)]
        yield proc
        proc.kill()


@pytest.fixture
def claims(lock_file: str) -> Iterator[UidClaims]:
    """This server's claims."""
    mine = UidClaims(lock_file)
    yield mine
    mine.close()


def test_a_server_does_not_hand_out_the_uids_another_server_is_starting_sandboxes_as(
    claims: UidClaims, other_server: subprocess.Popen[str]
) -> None:
    """Both servers start counting at the range's base: without claims both hand out BASE and BASE + 1."""
    uids = HostUids(BASE, 4, in_use=set, claims=claims)
    assert [uids.take(), uids.take()] == [BASE + 2, BASE + 3]


def test_a_range_claimed_whole_by_another_server_is_shared_with_a_warning(
    claims: UidClaims, other_server: subprocess.Popen[str], caplog: pytest.LogCaptureFixture
) -> None:
    uids = HostUids(BASE, 2, in_use=set, claims=claims)
    assert uids.take() in (BASE, BASE + 1)
    assert "all 2 SANDBOX_UIDS belong to live or starting sandboxes" in caplog.text


def test_a_dead_servers_claims_go_with_it(claims: UidClaims, other_server: subprocess.Popen[str]) -> None:
    """The kernel drops a process's record locks when it dies: a crashed server blocks no uid."""
    other_server.kill()
    other_server.wait()
    uids = HostUids(BASE, 4, in_use=set, claims=claims)
    assert [uids.take(), uids.take()] == [BASE, BASE + 1]


def test_a_claim_ends_at_the_claimers_next_take_after_claim_s(lock_file: str, claims: UidClaims) -> None:
    """Held for claim_s (0.2 s here), and let go by the claiming server's next take after that."""
    with start_other_server(lock_file, 1, 0.2) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline().split() == [str(BASE)]
        uids = HostUids(BASE, 2, in_use=set, claims=claims)
        assert uids.take() == BASE + 1  # BASE is claimed
        time.sleep(0.3)
        proc.stdin.write("take\n")  # past claim_s: lets BASE go, and claims the next free one
        proc.stdin.flush()
        assert proc.stdout.readline().split() == [str(BASE + 2)]
        assert uids.take() == BASE  # free now (still claimed, the answer would be BASE + 1 again)
        proc.kill()


def test_a_uid_handed_out_again_is_claimed_anew(lock_file: str, claims: UidClaims) -> None:
    """A range of two: the other server hands out BASE and BASE + 1 at 0 s, BASE again at 0.3 s and BASE + 1 again at
    0.6 s, which expires what is past 0.5 s: the first claims, not BASE's renewed one."""
    with start_other_server(lock_file, 2, 0.5, uids=2) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline().split() == [str(BASE), str(BASE + 1)]
        for uid in (BASE, BASE + 1):
            time.sleep(0.3)
            proc.stdin.write("take\n")
            proc.stdin.flush()
            assert proc.stdout.readline().split() == [str(uid)]
        assert HostUids(BASE, 3, in_use=set, claims=claims).take() == BASE + 2
        proc.kill()


def test_two_servers_in_one_process_keep_apart_and_neither_is_held_back_by_its_own_claims(claims: UidClaims) -> None:
    """Record locks never conflict within a process, so the claims are also kept by owner."""
    first, second = HostUids(BASE, 4, in_use=set, claims=claims), HostUids(BASE, 4, in_use=set, claims=claims)
    assert [first.take(), first.take()] == [BASE, BASE + 1]
    assert [second.take(), second.take()] == [BASE + 2, BASE + 3]
    assert [first.take(), first.take(), first.take()] == [BASE, BASE + 1, BASE]


async def uids_of_program(tag: str) -> list[int]:
    """The host uids of the job's program (python3 main.py TAG), once it runs."""
    for _ in range(int(scaled(500))):
        for pid in host_processes_with(tag):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"python3", b"main.py"]:
                    status = Path(f"/proc/{pid}/status").read_text().splitlines()
                    return [int(uid) for uid in next(x for x in status if x.startswith("Uid:")).split()[1:]]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no program with {tag}")


async def test_a_server_starts_its_sandbox_as_a_uid_another_server_is_not_starting_one_as() -> None:
    """Through a real sandbox: another server (a process claiming through the host-wide file, as every root server
    does) is starting sandboxes as three of the range's four uids; every sandbox of this server (its start-up check,
    its language probe, the job) runs as the fourth, as the host sees the job's program. A range of its own (random)
    keeps it apart from the other test workers' servers."""
    if os.geteuid() != 0:
        pytest.skip("only a root server chooses sandbox uids")
    base, tag = 2_050_000_000 + secrets.randbelow(1 << 20) * 4, marker()  # below 2^31, as SANDBOX_UID_BASE
    argv = [sys.executable, "-c", OTHER_SERVER, CLAIMS_FILE, "3", "600", str(base), "4"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as other:
        assert other.stdout is not None
        assert other.stdout.readline().split() == [str(base + i) for i in range(3)]
        sandbox = await Judge.create(make_settings(warm_pool=0, sandbox_uid_base=base, sandbox_uids=4))
        job = Job(language="python", code="import time\ntime.sleep(30)\n", args=[tag])
        running = asyncio.ensure_future(sandbox(job, JobIO(on_output=lambda stream, text: None)))
        try:
            uids = await uids_of_program(tag)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await sandbox.close()
            other.kill()
    assert uids == [base + 3] * 4  # real, effective, saved and filesystem uid (without claims: base + 2)
