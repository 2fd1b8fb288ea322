"""Escapes and resource attacks against the sandbox, each checked by what it actually achieved."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.errors import SandboxUnavailable
from server.judging.executor import Judge
from server.queue.jobs import JobIO, Stream
from server.sandbox.command import HELPER_IN_BOX
from server.sandbox.uids import HostUids
from server.settings import Settings
from tests.conftest import scaled, scaled_ms
from tests.test_sandbox import SETTINGS, make_job, open_sandbox, run_job, start_sandbox

# Tight limits for the attacks: few processes, small output cap, quick CPU and wall limits.
TIGHT = Settings(
    job_timeout_ms=scaled_ms(2000),
    compile_timeout_ms=scaled_ms(30_000),
    memory_limit_mb=128,
    max_processes=16,
    cpu_time_limit_s=1,
    max_output_bytes=64 * 1024,
    max_file_size_mb=1,
    max_open_files=64,
    workdir_size_mb=4,
    cache_max_mb=0,  # the attacks compile every time (tests/test_buildcache.py attacks the cache)
)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Judge]:
    yield from start_sandbox(SETTINGS, languages=["python", "bash", "c"])


@pytest.fixture(scope="module")
def tight() -> Iterator[Judge]:
    yield from start_sandbox(TIGHT, languages=["python", "bash"])


# Hosts without usable cgroups, where the operator opted in to per-process limits: 2048 MB over 16 processes gives
# each process 128 MB of address space (RLIMIT_AS), RLIMIT_NPROC counts the job's tasks (a JVM needs about 16).
# More CPU than TIGHT: a JVM compiling on a busy machine may need over a CPU-second.
PER_PROCESS = dataclasses.replace(
    TIGHT, memory_limit_mb=2048, max_processes=16, cpu_time_limit_s=5, allow_per_process_limits=True
)


@pytest.fixture(scope="module")
def rlimits_only() -> Iterator[Judge]:
    """The fallback for hosts without usable cgroups: RLIMIT_AS and RLIMIT_NPROC."""
    yield from start_sandbox(PER_PROCESS, cgroups=False, languages=["python", "bash", "java", "javascript"])


def marker() -> str:
    return f"conveyor-marker-{secrets.token_hex(6)}"


def host_processes_with(text: str) -> list[int]:
    """Host pids whose command line contains `text` (this test's own process excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry.name))
    return found


async def wait_for_processes(text: str, count: int) -> list[int]:
    """Poll until `count` host processes carry `text` (they start just after the job says so)."""
    for _ in range(int(scaled(500))):
        found = host_processes_with(text)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} processes with {text}, found {host_processes_with(text)}")


def processes_of_server(pid: int) -> dict[int, str]:
    """Live (not zombie) host processes in the cgroups of the server with this pid: pid -> what it is."""
    key = f"/conveyor-{os.stat('/proc/self/ns/pid').st_ino}-{pid}-"
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if key not in (entry / "cgroup").read_text():
                continue
            status = dict(line.split(":\t", 1) for line in (entry / "status").read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if not status["State"].startswith("Z"):
            pid_1 = status.get("NSpid", "").split()[-1:] == ["1"]
            found[int(entry.name)] = f"{status['Name']}{' (pid 1 of its namespace)' if pid_1 else ''}"
    return found


def dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


async def wait_until_gone(what: Callable[[], object], seconds: float = 10.0) -> None:
    """Poll until `what()` is empty; the assertion shows what is left."""
    for _ in range(int(scaled(seconds) * 20)):
        if not what():
            return
        await asyncio.sleep(0.05)
    assert not what()


def cgroups_named(match: re.Pattern[str]) -> list[str]:
    """Cgroup directories (v1 or v2 hierarchies) whose name matches."""
    found = []
    for root in Path("/sys/fs/cgroup").glob("*"):
        for dirpath, dirnames, _ in os.walk(root):
            found += [f"{dirpath}/{name}" for name in dirnames if match.fullmatch(name)]
    return found


def job_cgroups(job_id: str) -> list[str]:
    return cgroups_named(re.compile(re.escape(job_id)))


def vm_rss_kb() -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert match is not None
    return int(match.group(1))


# -- network -------------------------------------------------------------------------------------------------


async def test_no_network_not_even_host_loopback(sandbox: Judge) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    code = (
        "import socket\n"
        f"for addr in [('127.0.0.1', {port}), ('1.1.1.1', 53), ('8.8.8.8', 443)]:\n"
        "    try:\n"
        "        socket.create_connection(addr, timeout=1).close()\n"
        "        print('CONNECTED', addr)\n"
        "    except OSError as exc:\n"
        "        print('blocked', type(exc).__name__)\n"
        "print(sorted(line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:]))\n"
    )
    try:
        run = await run_job(sandbox, "python", code)
        listener.settimeout(0.01)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing reached the host's listener
    finally:
        listener.close()
    assert run.result.exit_code == 0, run.result
    assert "CONNECTED" not in run.result.stdout
    assert run.result.stdout.count("blocked") == 3
    assert run.result.stdout.endswith("['lo']\n")  # only the sandbox's own, empty loopback


# -- filesystem ----------------------------------------------------------------------------------------------


async def test_host_files_are_not_readable(sandbox: Judge) -> None:
    secrets_on_host = [str(Path(__file__).resolve()), "/etc/shadow", "/root", "/home", str(Path.cwd())]
    assert all(Path(p).exists() for p in secrets_on_host)  # they exist on the host, so the test means something
    code = (
        "import os, sys\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        print('READ', path, open(path).read(20) if os.path.isfile(path) else os.listdir(path))\n"
        "    except OSError as exc:\n"
        "        print('denied', type(exc).__name__)\n"
    )
    run = await run_job(sandbox, "python", code, args=secrets_on_host)
    assert run.result.exit_code == 0, run.result
    assert "READ" not in run.result.stdout
    assert run.result.stdout.count("denied") == len(secrets_on_host)


async def test_only_the_work_dir_and_tmp_are_writable(sandbox: Judge) -> None:
    code = (
        "import os\n"
        # /etc's generated files are copied into the root, which is made read-only after them.
        "for path in ['/x', '/etc/x', '/etc/passwd', '/etc/group', '/etc/hosts', '/usr/x', '/usr/bin/python3',\n"
        "             '/dev/x', '/proc/x', '/box/ok', '/tmp/ok']:\n"
        "    try:\n"
        "        with open(path, 'a') as f: f.write('x')\n"
        "        print('wrote', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', path)\n"
    )
    run = await run_job(sandbox, "python", code)
    wrote = [line.split()[1] for line in run.result.stdout.splitlines() if line.startswith("wrote")]
    assert wrote == ["/box/ok", "/tmp/ok"], run.result


async def test_etc_holds_only_what_runtimes_need(sandbox: Judge) -> None:
    run = await run_job(sandbox, "bash", "ls /etc; echo; cat /etc/passwd")
    listing, _, passwd = run.result.stdout.partition("\n\n")
    assert "shadow" not in listing and "ssh" not in listing
    assert set(listing.split()) <= {"alternatives", "ld.so.cache", "localtime", "passwd", "group", "hosts"}
    assert [line.split(":")[0] for line in passwd.split()] == ["root", "sandbox"]


async def test_concurrent_jobs_cannot_see_each_others_files(sandbox: Judge) -> None:
    ready = asyncio.Event()

    def on_output(stream: Stream, data: str) -> None:
        if "ready" in data:
            ready.set()

    stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
    writer = make_job(
        "bash",
        "echo secret > /box/secret-a; echo secret > /tmp/secret-a; echo ready; cat > /dev/null",
        interactive=True,
    )
    task = asyncio.create_task(sandbox(writer, JobIO(on_output=on_output, stdin=stdin)))
    await asyncio.wait_for(ready.wait(), scaled(5))
    reader = await run_job(sandbox, "bash", "ls -A /box /tmp /dev/shm; cat /box/secret-a /tmp/secret-a")
    stdin.put_nowait(None)
    assert (await task).exit_code == 0
    assert "secret" not in reader.result.stdout
    assert reader.result.stdout.split() == ["/box:", "main.sh", "/dev/shm:", "/tmp:"]


async def test_work_dir_size_is_capped(tight: Judge) -> None:
    code = "for i in range(20):\n    open(f'/box/f{i}', 'wb').write(b'x' * 900_000)\n"
    run = await run_job(tight, "python", code)
    assert run.result.exit_code == 1 and "No space left on device" in run.result.stderr


# -- identity and processes ----------------------------------------------------------------------------------


async def test_runs_unprivileged_without_capabilities(sandbox: Judge) -> None:
    run = await run_job(
        sandbox, "bash", "id -u; id -g; grep CapEff /proc/self/status; unshare -U true || echo nouserns"
    )
    uid, gid, caps, *rest = run.result.stdout.splitlines()
    assert uid == gid == "65534"
    assert caps.split()[1] == "0000000000000000"
    assert rest == ["nouserns"]  # no nested user namespaces either


async def test_proc_shows_only_the_jobs_processes(sandbox: Judge) -> None:
    code = (
        "import os\n"
        "for pid in sorted(int(p) for p in os.listdir('/proc') if p.isdigit()):\n"
        "    print(pid, open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')[0].decode())\n"
    )
    run = await run_job(sandbox, "python", code)
    processes = dict(line.split(" ", 1) for line in run.result.stdout.splitlines())
    # bwrap's pid 1, the stage driver, the program: nothing of the host's.
    stage_driver = os.path.basename(HELPER_IN_BOX) if sandbox.sandbox.helper else "perl"
    assert [os.path.basename(cmd) for cmd in processes.values()] == ["bwrap", stage_driver, "python3"], processes
    assert list(processes) == ["1", "2", "3"]


async def test_background_children_do_not_outlive_the_job(sandbox: Judge) -> None:
    tag = marker()
    run = await run_job(
        sandbox, "bash", f"(exec -a {tag} sleep 300) &\n(setsid bash -c 'exec -a {tag} sleep 300' &)\necho started"
    )
    assert run.result.exit_code == 0 and run.result.stdout == "started\n"
    assert host_processes_with(tag) == []


# Every process forks forever; the first one reports the refusal once the process limit bites, then ends the job.
FORK_BOMB = """
import os, sys, time
first = os.getpid()
while True:
    try:
        os.fork()
    except OSError as exc:
        if os.getpid() == first:
            print("refused:", exc.strerror, flush=True)
            time.sleep(0.3)
            sys.exit(0)
"""


async def test_fork_bomb_is_contained(tight: Judge) -> None:
    tag = marker()
    job = make_job("python", FORK_BOMB, args=[tag])
    started = time.monotonic()
    result = await tight(job, JobIO(on_output=lambda s, d: None))
    assert time.monotonic() - started < job.timeout_ms / 1000 + scaled(1)
    assert result.stdout == "refused: Resource temporarily unavailable\n", result
    assert result.exit_code == 0  # the job ended; the bomb's processes went with it
    assert host_processes_with(tag) == []
    assert job_cgroups(job.id) == []


async def test_cancelling_a_job_kills_its_tree(sandbox: Judge) -> None:
    tag = marker()
    started = asyncio.Event()
    job = make_job("bash", f"(exec -a {tag} sleep 300) &\necho started\nexec -a {tag} sleep 300", timeout_ms=60_000)
    task = asyncio.create_task(sandbox(job, JobIO(on_output=lambda s, d: started.set())))
    await asyncio.wait_for(started.wait(), scaled(5))
    assert len(await wait_for_processes(tag, 2)) == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert host_processes_with(tag) == []
    assert job_cgroups(job.id) == []


async def test_cancelling_during_an_output_flood() -> None:
    """Cancellation must not wait on pipes nobody reads any more."""
    tag = marker()
    started = asyncio.Event()
    async with open_sandbox(dataclasses.replace(SETTINGS, max_output_bytes=1 << 30), languages=["bash"]) as box:
        job = make_job("bash", f"exec -a {tag} yes", timeout_ms=60_000)
        task = asyncio.create_task(box(job, JobIO(on_output=lambda s, d: started.set())))
        await asyncio.wait_for(started.wait(), scaled(5))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert host_processes_with(tag) == []
    assert job_cgroups(job.id) == []


@pytest.mark.parametrize("box", ["sandbox", "rlimits_only"])
async def test_cancelling_a_starting_job_at_any_moment(box: str, sandbox: Judge, rlimits_only: Judge) -> None:
    """Cancellation is honoured, and ends every process of the job, whenever it comes while the job starts.

    Half the cancellations arrive while asyncio is still spawning the launcher, with the loop then held for a
    growing time so the launcher gets that much further: into bwrap's monitor before it released its child (which
    then waits for the dead monitor for ever unless killed), or into the child's set-up before it became a pid 1
    that dies with its parent. The other half arrive as the job's stage reports come in.
    """
    if box == "rlimits_only":
        sandbox = rlimits_only
    for step in range(60):
        tag = marker()
        job = make_job("bash", 'exec -a "$1" sleep 300', args=[tag], timeout_ms=60_000)
        task = asyncio.create_task(sandbox(job, JobIO(on_output=lambda s, d: None)))
        if step % 2 == 0:
            await asyncio.sleep(0)  # the task is inside the spawn now
            task.cancel()
            time.sleep(step / 4000)  # hold the loop: 0 to 15 ms
        else:
            await asyncio.sleep(step / 2000)  # 0 to 30 ms
            task.cancel()
        done, _ = await asyncio.wait([task], timeout=scaled(5))
        assert done, f"cancellation at step {step} did not end the job: {host_processes_with(tag)} still running"
        assert task.cancelled()
        assert host_processes_with(tag) == []


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def is_guard(pid: int) -> bool:
    try:
        return b"conveyor-guard" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.parametrize("guard", ["alive", "killed"])
async def test_a_server_killed_while_a_job_starts_leaves_nothing(guard: str) -> None:
    """A server SIGKILLed while a job's sandbox is being set up takes the whole job with it.

    bwrap's --die-with-parent cannot cover this: the child bwrap's monitor clones (the job's future pid 1) waits for
    the monitor's go-ahead with no parent-death signal of its own, and a monitor started as the server died dies
    too before it gives it (of --die-with-parent, or writing its status to a pipe nobody reads). The server's cgroup
    guard then kills what is left; if the guard was killed too, the next server to start does. To hold the job at
    that point every time, the test stops the launcher as soon as the server has forked it, kills the server, and
    lets the launcher go on.
    """
    tag = marker()
    script = (
        "import asyncio, sys\n"
        "from server.queue.jobs import Job, JobIO\n"
        "from server.judging.executor import Judge\n"
        "from server.settings import Settings\n"
        "async def main():\n"
        # No warm pool: the test stops the server's one child besides the guard, which must be this job's launcher
        # (a pool's sandbox being started is a second child; test_pool.py kills a server with a pool separately).
        "    box = await Judge.create(Settings(warm_pool=0), languages=['bash'])\n"
        "    print('ready', flush=True)\n"
        "    sys.stdin.readline()\n"
        f"    job = Job(language='bash', code='exec -a \"$1\" sleep 300', args=['{tag}'], timeout_ms=60000)\n"
        "    await box(job, JobIO(on_output=lambda s, d: None))\n"
        "asyncio.run(main())\n"
    )
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        cwd=Path(__file__).parent.parent,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    launcher = None
    try:
        assert server.stdin is not None and server.stdout is not None
        assert await asyncio.wait_for(server.stdout.readline(), scaled(30)) == b"ready\n"
        guards = [pid for pid in children_of(server.pid) if is_guard(pid)]
        if guard == "killed":
            for pid in guards:
                os.kill(pid, signal.SIGKILL)
        # From now on the server's only other child is the job's launcher: stop it at once, exec'd yet or not.
        server.stdin.write(b"go\n")
        await server.stdin.drain()
        deadline = time.monotonic() + scaled(10)
        while launcher is None and time.monotonic() < deadline:
            for child in children_of(server.pid):
                if child not in guards:
                    launcher = child
                    os.kill(launcher, signal.SIGSTOP)
        assert launcher is not None, "the server never started the job"
    finally:
        server.kill()
        # Let the launcher go only once the server is dead. Not by awaiting server.wait() first: that waits for the
        # server's stdout to close, and a launcher stopped before its exec still holds a copy of it.
        while not dead(server.pid):
            await asyncio.sleep(0.001)
        if launcher is not None:
            with contextlib.suppress(ProcessLookupError):  # the server's cgroup guard may have killed it already
                os.kill(launcher, signal.SIGCONT)
        await server.wait()
    assert launcher is not None
    # The launcher's pid becomes bwrap's monitor: once it is gone, whatever it started exists, and must go too.
    await wait_until_gone(lambda: not dead(launcher))
    if guard == "killed":
        await asyncio.sleep(0.5)  # what is left stays, until a server starts and sweeps the dead one's cgroups
        async with open_sandbox(SETTINGS, languages=["bash"]):
            assert processes_of_server(server.pid) == {}
            assert cgroups_named(re.compile(rf"conveyor-\d+-{server.pid}-\w+")) == []
    await wait_until_gone(lambda: processes_of_server(server.pid))
    await wait_until_gone(lambda: host_processes_with(tag))


async def test_jobs_die_with_the_server() -> None:
    """A server killed with SIGKILL cannot clean up: bwrap's --die-with-parent takes a running job down with it."""
    tag = marker()
    script = (
        "import asyncio, sys\n"
        "from server.queue.jobs import Job, JobIO\n"
        "from server.judging.executor import Judge\n"
        "from server.settings import Settings\n"
        "async def main():\n"
        "    box = await Judge.create(Settings(), languages=['bash'])\n"
        f"    code = '(exec -a {tag} sleep 300) & exec -a {tag} sleep 300'\n"
        "    job = Job(language='bash', code=code, timeout_ms=60000)\n"
        "    await box(job, JobIO(on_output=lambda s, d: None))\n"
        "asyncio.run(main())\n"
    )
    server = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=Path(__file__).parent.parent)
    try:
        await wait_for_processes(tag, 2)
    finally:
        server.kill()
        await server.wait()
    await wait_until_gone(lambda: host_processes_with(tag))
    # Nothing else of it either, bwrap's pid 1 above all (it would hold the job's cgroups and pipes for ever).
    await wait_until_gone(lambda: processes_of_server(server.pid))
    # The dead server's cgroup directories are swept by the next server to start.
    if cgroups_named(re.compile(rf"conveyor-\d+-{server.pid}-\w+")):
        async with open_sandbox(SETTINGS, languages=["bash"]):
            assert cgroups_named(re.compile(rf"conveyor-\d+-{server.pid}-\w+")) == []


# -- resource limits -----------------------------------------------------------------------------------------


async def test_infinite_loop_times_out(sandbox: Judge) -> None:
    job = make_job("python", "while True: pass", timeout_ms=1000)
    started = time.monotonic()
    result = await sandbox(job, JobIO(on_output=lambda s, d: None))
    assert time.monotonic() - started < 1.0 + scaled(1.0)
    assert (result.reason, result.signal, result.exit_code) == ("timeout", "SIGKILL", None)
    assert result.run_time_ms is not None and result.run_time_ms >= 1000


async def test_the_drivers_pipes_are_out_of_the_programs_reach(sandbox: Judge) -> None:
    """The program shares the driver's uid, but the driver is not dumpable: its /proc/<pid>/fd cannot be opened, so
    the status pipe cannot be reopened to forge stage reports (which would end the job: see test_sandbox_kernel)."""
    code = (
        "ls /proc/$PPID/fd || echo refused\n"
        "for fd in /proc/$PPID/fd/*; do printf 'run-start\\ncompile-start\\n' > $fd && echo wrote $fd; done\n"
        "echo done\n"
    )
    run = await run_job(sandbox, "bash", code)
    assert run.result.stdout == "refused\ndone\n" and "Permission denied" in run.result.stderr, run.result
    assert (run.result.exit_code, run.result.reason) == (0, None)


async def test_sleeping_program_times_out(sandbox: Judge) -> None:
    run = await run_job(sandbox, "bash", "echo before; sleep 30; echo after", timeout_ms=500)
    assert run.result.reason == "timeout" and run.result.stdout == "before\n"


async def test_cpu_time_is_limited(tight: Judge) -> None:
    run = await run_job(tight, "python", "while True: pass", timeout_ms=scaled_ms(5000))
    # The job-wide limit (SIGKILL) and the per-process RLIMIT_CPU (SIGXCPU) come due together here.
    assert run.result.reason == "cpu_limit" and run.result.signal in ("SIGKILL", "SIGXCPU"), run.result


async def test_huge_allocation_hits_the_memory_limit(sandbox: Judge) -> None:
    run = await run_job(sandbox, "python", "x = bytearray(8 << 30)\nprint('allocated')")
    assert run.result.reason == "memory_limit", run.result
    assert "allocated" not in run.result.stdout


async def test_output_flood_is_truncated_at_the_cap(tight: Judge) -> None:
    rss_before = vm_rss_kb()
    for _ in range(3):
        run = await run_job(tight, "bash", "yes flood")
        assert (run.result.truncated, run.result.reason) == (True, "output_limit")
        assert len(run.result.stdout.encode()) == TIGHT.max_output_bytes
        assert run.joined("stdout") == run.result.stdout
    assert vm_rss_kb() - rss_before < 32 * 1024  # a few MiB of noise, not the flood


async def test_file_size_and_open_files_are_limited(tight: Judge) -> None:
    run = await run_job(tight, "bash", "exec head -c 2000000 /dev/zero > /box/big")
    assert (run.result.signal, run.result.reason) == ("SIGXFSZ", "file_size_limit")
    # Python ignores SIGXFSZ, so it sees the error instead.
    run = await run_job(tight, "python", "open('/box/big', 'wb').write(b'x' * (2 << 20))")
    assert run.result.exit_code == 1 and "File too large" in run.result.stderr
    run = await run_job(tight, "python", "files = [open('/dev/null') for _ in range(1000)]")
    assert run.result.exit_code == 1 and "Too many open files" in run.result.stderr


# -- hosts without cgroups -----------------------------------------------------------------------------------


async def test_without_a_memory_cgroup_the_sandbox_refuses_to_start() -> None:
    with pytest.raises(SandboxUnavailable) as refusal:
        await Judge.create(TIGHT, cgroups=False, languages=["bash"])
    message = str(refusal.value)
    assert "\n" not in message
    for way_out in ("as root", "Delegate=yes", "ALLOW_PER_PROCESS_LIMITS=1", "MEMORY_LIMIT_MB / MAX_PROCESSES"):
        assert way_out in message


def test_rlimit_fallback_is_described(rlimits_only: Judge) -> None:
    limits = rlimits_only.describe()["limits"]
    assert limits["memory"]["enforcedBy"] == "RLIMIT_AS"
    assert limits["memory"]["perProcessMb"] == 2048 // 16
    assert limits["processes"]["enforcedBy"].startswith("RLIMIT_NPROC")


async def test_rlimit_fallback_refuses_huge_allocations(rlimits_only: Judge) -> None:
    run = await run_job(rlimits_only, "python", "x = bytearray(8 << 30)")
    assert run.result.reason == "memory_limit" and "MemoryError" in run.result.stderr


async def test_per_process_limits_divide_the_memory_limit(rlimits_only: Judge) -> None:
    """One process may not have the whole job's memory: with 16 processes allowed, 2048 MB is 128 MB each. (Before,
    16 processes of 180 MB each held 2.9 GB under a 256 MB limit.)"""
    code = "import sys\nblock = b'x' * (int(sys.argv[1]) << 20)\nprint('allocated')"
    run = await run_job(rlimits_only, "python", code, args=["64"])
    assert run.result.stdout == "allocated\n", run.result
    run = await run_job(rlimits_only, "python", code, args=["200"])
    assert run.result.reason == "memory_limit" and "MemoryError" in run.result.stderr, run.result


async def test_rlimit_fallback_contains_fork_bombs(rlimits_only: Judge) -> None:
    tag = marker()
    run = await run_job(rlimits_only, "python", FORK_BOMB, args=[tag])
    assert run.result.stdout == "refused: Resource temporarily unavailable\n", run.result
    assert host_processes_with(tag) == []


async def test_rlimit_fallback_counts_processes_per_job(rlimits_only: Judge) -> None:
    """Every job's tasks are host uid 65534, yet RLIMIT_NPROC counts per job (its own user namespace)."""
    code = "for i in $(seq 12); do sleep 0.5 & done; wait; echo ok"  # 3 jobs of 15 tasks, over 16 + 3 together
    runs = await asyncio.gather(*(run_job(rlimits_only, "bash", code) for _ in range(3)))
    assert [(run.result.stdout, run.result.stderr) for run in runs] == [("ok\n", "")] * 3


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("java", 'public class Main { public static void main(String[] a) { System.out.println("ok"); } }'),
        ("javascript", "console.log('ok')"),
    ],
)
async def test_rlimit_fallback_still_runs_big_runtimes(rlimits_only: Judge, language: str, code: str) -> None:
    run = await run_job(rlimits_only, language, code)
    assert run.result.stdout == "ok\n", run.result


async def test_host_sees_the_sandbox_as_an_unprivileged_uid_of_its_own(sandbox: Judge) -> None:
    tag = marker()
    started = asyncio.Event()
    job = make_job("bash", f"echo started; exec -a {tag} sleep 30", timeout_ms=10_000)
    task = asyncio.create_task(sandbox(job, JobIO(on_output=lambda s, d: started.set())))
    try:
        await asyncio.wait_for(started.wait(), scaled(5))
        (pid,) = await wait_for_processes(tag, 1)
        uids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
        host_uid = {int(uid) for uid in uids.split()[1:]}
        if os.geteuid() == 0:  # as root the launcher drops to the sandbox's own uid before bwrap
            (uid,) = host_uid
            base = SETTINGS.sandbox_uid_base
            assert base <= uid < base + SETTINGS.sandbox_uids
        else:
            assert host_uid == {os.geteuid()}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- sandboxes apart from each other (issue 22) --------------------------------------------------------------

# The session keyrings this job can see: every sandbox has one (the launcher joins a new one), and /proc/keys lists
# the keys whose owner is the reader's uid.
COUNT_KEYRINGS = "print(sum(line.split()[7:9] == ['keyring', '_ses:'] for line in open('/proc/keys')))"


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root server can give each sandbox its own host uid")
async def test_a_job_does_not_see_other_sandboxes_keyrings(sandbox: Judge) -> None:
    """Every sandbox used to run as host uid 65534: a job saw the session keyring of every other running sandbox
    (and warm one) in /proc/keys, a count of the server's load and of other users' jobs. It sees only its own."""
    ready = asyncio.Event()
    stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
    holder_job = make_job("python", "print('holding', flush=True)\nimport sys\nsys.stdin.read()", interactive=True)
    holder = asyncio.create_task(sandbox(holder_job, JobIO(on_output=lambda s, t: ready.set(), stdin=stdin)))
    try:
        await asyncio.wait([holder, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
        assert ready.is_set(), holder.result()
        probe = await run_job(sandbox, "python", COUNT_KEYRINGS)
    finally:
        stdin.put_nowait(None)
        held = await holder
    assert held.stdout == "holding\n", held
    assert probe.result.stdout == "1\n", probe.result  # its own


def test_host_uids_skip_live_sandboxes_and_come_back_last() -> None:
    """Each sandbox's uid is the next in the range that no live sandbox holds; a uid returns only after the rest."""
    live: set[int] = set()
    uids = HostUids(1000, 4, in_use=lambda: live)
    assert [uids.take() for _ in range(5)] == [1000, 1001, 1002, 1003, 1000]
    live |= {1001, 1002}  # still running: skipped
    assert [uids.take() for _ in range(3)] == [1003, 1000, 1003]
    assert HostUids(1000, 0).take() == 65534  # SANDBOX_UIDS=0: as before


def test_a_range_with_every_uid_alive_shares_one_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    uids = HostUids(1000, 2, in_use=lambda: {1000, 1001})
    assert uids.take() in (1000, 1001)
    assert "all 2 SANDBOX_UIDS belong to live or starting sandboxes" in caplog.text
