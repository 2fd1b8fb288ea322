"""The warm pool (sandbox/pool.py): sandboxes started ahead of their jobs, one job each, faithful to a cold start.

The rest of the sandbox suites run with the pool on too (WARM_POOL's default), so every security test after a
language's first job runs in a warm sandbox; these tests check that they did, and what is the pool's own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.judging.executor import Judge
from server.queue.jobs import ExecutionResult, Job, JobIO, Limits, SourceFile, TestCase
from server.sandbox.pool import DEMAND_KEEP_S, DEMAND_WINDOW_S, REFILL_NICE, Demand, Warm, WarmPool
from tests.conftest import make_settings, scaled
from tests.test_sandbox_security import (
    host_processes_with,
    marker,
    processes_of_server,
    wait_for_processes,
    wait_until_gone,
)

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

# Everything a program can see of how it was started, except what differs between any two runs (pids).
PORTRAIT = r"""
import os, resource, sys
print("argv", sys.argv, "cwd", os.getcwd(), "nice", os.nice(0), "uid", os.getuid(), os.getgid(), os.getgroups())
print("env", sorted(os.environ.items()))
print("umask", os.umask(0o22))
for name in sorted(n for n in dir(resource) if n.startswith("RLIMIT_")):
    print(name, resource.getrlimit(getattr(resource, name)))
for top in ("/box", "/box/pkg", "/tmp", "/dev/shm", "/"):
    for entry in sorted(os.listdir(top)):
        st = os.lstat(os.path.join(top, entry))
        print(top, entry, oct(st.st_mode), st.st_uid, st.st_size if top != "/" else "")
print("fds", sorted(os.listdir("/proc/self/fd")))
print("status", [l for l in open("/proc/self/status") if l.startswith(("Cap", "NoNewPrivs", "Seccomp"))])
print("input", sys.stdin.read())
import __main__
print("python", sys.orig_argv, sys.path, sorted(sys.modules), __file__, __name__, __spec__, __package__, __cached__)
print("main", sorted((k, type(v).__name__) for k, v in vars(__main__).items()), __loader__.name, __loader__.path)
sys.stderr.write("to stderr\n")
sys.exit(3)
"""


def portrait() -> Job:
    files = [SourceFile("main.py", PORTRAIT), SourceFile("pkg/data.txt", "some data\n")]
    return Job(language="python", code="", files=files, args=["a b", "c"], stdin="typed\n")


async def run(sandbox: Judge, job: Job) -> ExecutionResult:
    return await sandbox(job, JobIO(on_output=lambda stream, text: None))


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def warm_run(sandbox: Judge, job: Job) -> ExecutionResult:
    """Run `job` in a warm sandbox: wait for one of its language to be ready, and check that the job took it."""
    assert sandbox.sandbox.pool is not None
    status = sandbox.sandbox.pool.stats
    if status()["languages"].get(job.language, {}).get("ready", 0) == 0:
        await run(sandbox, Job(language=job.language, code="", files=job.files))  # demand for the language
        await until(lambda: status()["languages"].get(job.language, {}).get("ready", 0) > 0)
    hits = status()["hits"]
    result = await run(sandbox, job)
    assert status()["hits"] == hits + 1, "the job did not take a warm sandbox"
    return result


@pytest.fixture(scope="module")
def cold() -> Iterator[Judge]:
    """A sandbox with the pool off: every job starts cold."""
    sandbox = asyncio.run(Judge.create(make_settings(warm_pool=0), languages=("python", "c")))
    yield sandbox
    asyncio.run(sandbox.close())


@pytest.fixture
async def small() -> AsyncIterator[Judge]:
    """A sandbox of its own with a pool of two, for tests that look inside the pool."""
    sandbox = await Judge.create(make_settings(warm_pool=2), languages=("python",))
    yield sandbox
    await sandbox.close()


async def test_a_warm_run_is_a_cold_run(sandbox: Judge, cold: Judge) -> None:
    """Same arguments, directory, environment, priority, uid, rlimits, files and modes, descriptors, capabilities,
    syscall filter, input, output and exit status."""
    want = await run(cold, portrait())
    assert cold.pool_status()["enabled"] is False
    got = await warm_run(sandbox, portrait())
    assert want.exit_code == 3 and "input typed" in want.stdout and "nice 0" in want.stdout, want
    assert (got.stdout, got.stderr, got.exit_code, got.reason) == (want.stdout, want.stderr, 3, None)


POLL_STDIN = r"""
#include <poll.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    struct pollfd in = {0, POLLIN, 0};
    int ready = poll(&in, 1, 0);
    char buf[100];
    ssize_t got = read(0, buf, sizeof buf), more = read(0, buf, sizeof buf);
    printf("ready %d read %zd then %zd\n", ready, got, more);
    return 0;
}
"""


async def test_a_warm_runs_program_finds_its_stdin_waiting_as_it_starts(cached_sandbox: Judge, cold: Judge) -> None:
    """A program that polls its stdin at once (poll, a non-blocking read, Java's System.in.available()) finds the
    job's input there, as a cold run's program, slower to start, does; then reads it to EOF. A cached C build starts
    within a millisecond of its go-ahead."""
    job = Job(language="c", code=POLL_STDIN, stdin="typed\n")
    want = await run(cold, job)
    assert want.stdout == "ready 1 read 6 then 0\n", want
    assert cached_sandbox.sandbox.pool is not None
    status = cached_sandbox.sandbox.pool.stats
    await run(cached_sandbox, job)  # its build cached, and demand for c
    for _ in range(5):
        await until(lambda: status()["languages"].get("c", {}).get("ready", 0) > 0)
        hits = status()["hits"]
        got = await run(cached_sandbox, job)
        assert status()["hits"] == hits + 1 and got.compile_cached, "not a cached build in a warm sandbox"
        assert (got.stdout, got.stderr, got.exit_code) == (want.stdout, "", 0), got


PYTHON_ENDINGS = {
    "traceback": "def f():\n    raise ValueError('bad')\nprint('out')\nf()\n",
    "syntax error": "print('never'\n",
    "exit code": "import sys\nsys.exit(42)\n",
    "exit message": "raise SystemExit('bye')\n",
    "keyboard interrupt": "raise KeyboardInterrupt\n",
    "atexit and threads": (
        "import atexit, threading, time\natexit.register(print, 'at exit')\n"
        "threading.Thread(target=lambda: (time.sleep(0.1), print('thread'))).start()\n"
    ),
    "pickle of a __main__ class": "import pickle\nclass A: pass\nprint(type(pickle.loads(pickle.dumps(A()))))\n",
    "excepthook": (
        "import sys\nsys.excepthook = lambda t, v, tb: print('hook', t.__name__, tb.tb_frame.f_code.co_filename)\n1/0\n"
    ),
}


@pytest.mark.parametrize("name", PYTHON_ENDINGS)
async def test_a_pre_started_python_ends_as_python3_main_py(sandbox: Judge, cold: Judge, name: str) -> None:
    """Output, tracebacks (without the pre-started interpreter's frames), exit codes and signals as a cold start."""
    code = PYTHON_ENDINGS[name]
    want = await run(cold, Job(language="python", code=code))
    got = await warm_run(sandbox, Job(language="python", code=code))
    fields = ("stdout", "stderr", "exit_code", "signal", "reason")
    assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields]


async def test_a_warm_sandbox_runs_one_job_only(sandbox: Judge) -> None:
    """What a job leaves behind (files in each writable place, a background process) is gone for the next job."""
    leave = (
        "import os, subprocess\n"
        "for d in ('/box', '/tmp', '/dev/shm'): open(d + '/left-behind', 'w').write('x')\n"
        "subprocess.Popen(['sleep', '30'], start_new_session=True)\n"
    )
    look = (
        "import os\n"
        "print([d for d in ('/box', '/tmp', '/dev/shm') if os.path.exists(d + '/left-behind')])\n"
        "print(sorted(open(f'/proc/{p}/comm').read().strip() for p in os.listdir('/proc') if p.isdigit()))\n"
    )
    first = await warm_run(sandbox, Job(language="python", code=leave))
    assert first.exit_code == 0, first
    second = await warm_run(sandbox, Job(language="python", code=look))
    lines = second.stdout.splitlines()
    assert lines[0] == "[]" and "sleep" not in lines[1], second.stdout


NO_INPUT = {
    "python": "import os, stat, sys\nprint(stat.S_ISFIFO(os.fstat(0).st_mode), repr(sys.stdin.read()))\n",
    "c": (
        "#include <stdio.h>\n#include <sys/stat.h>\n"
        "int main(void) { struct stat st; fstat(0, &st);\n"
        '  printf("%s %d\\n", S_ISFIFO(st.st_mode) ? "True" : "False", getchar()); return 0; }\n'
    ),
}


@pytest.mark.parametrize("language", NO_INPUT)
async def test_a_job_without_input_reads_the_end_of_an_empty_pipe_warm_or_cold(
    sandbox: Judge, cold: Judge, language: str
) -> None:
    """No stdin and not interactive: a warm sandbox's stdin pipe is closed as soon as it is taken, as a cold run's is
    once its (empty) input is written; c's build is unpacked by a compile stage first, with the job pipe kept for
    the run stage's go-ahead."""
    want = await run(cold, Job(language=language, code=NO_INPUT[language]))
    got = await warm_run(sandbox, Job(language=language, code=NO_INPUT[language]))
    end = "''" if language == "python" else "-1"
    assert (got.stdout, got.stderr, got.exit_code) == (want.stdout, want.stderr, 0) == (f"True {end}\n", "", 0)


async def test_tests_compiled_once_run_in_warm_sandboxes(sandbox: Judge) -> None:
    """The build reaches each test's warm sandbox, unpacked in the work dir, and the packed copy is not left there."""
    code = (
        "#include <stdio.h>\n#include <unistd.h>\n"
        'int main(void) { int a, b; if (scanf("%d %d", &a, &b) != 2) return 2;\n'
        '  if (access("/tmp/.conveyor-build.tar", F_OK) == 0 || access(".conveyor-build.tar", F_OK) == 0)'
        ' puts("build left behind");\n'
        '  printf("%d\\n", a + b); return 0; }\n'
    )
    tests = [TestCase("1 2", "3"), TestCase("40 2", "42"), TestCase("2 2", "5")]
    await warm_run(sandbox, Job(language="c", code=code))  # c in demand, with sandboxes ready
    await until(lambda: sandbox.pool_status()["languages"]["c"]["ready"] >= 1)
    hits = sandbox.pool_status()["hits"]
    result = await run(sandbox, Job(language="c", code=code, tests=tests))
    assert sandbox.pool_status()["hits"] > hits
    assert [t["verdict"] for t in result.tests or []] == ["accepted", "accepted", "wrong_answer"], result.tests


async def test_a_warm_sandbox_takes_the_jobs_lower_memory_limit(sandbox: Judge) -> None:
    hog = "x = bytearray(96 << 20)\nprint(len(x))\n"
    result = await warm_run(sandbox, Job(language="python", code=hog, limits=Limits(memory_mb=32)))
    assert result.reason == "memory_limit", result
    fits = await warm_run(sandbox, Job(language="python", code=hog))
    assert fits.exit_code == 0 and fits.stdout == f"{96 << 20}\n", fits


async def test_warm_accounting_covers_the_jobs_work(sandbox: Judge) -> None:
    """CPU and memory come from the stage's start: a job that does nothing reports far less than one that works."""
    idle = await warm_run(sandbox, Job(language="python", code="pass"))
    busy = await warm_run(
        sandbox,
        Job(
            language="python", code="import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
        ),
    )
    assert idle.cpu_time_ms is not None and busy.cpu_time_ms is not None
    assert busy.cpu_time_ms >= 300 > idle.cpu_time_ms, (idle.cpu_time_ms, busy.cpu_time_ms)
    assert idle.memory_peak_bytes is not None and idle.memory_peak_bytes < 64 << 20


async def test_ready_sandboxes_wait_at_a_lower_priority(small: Judge) -> None:
    """A top-up starts at nice REFILL_NICE (below running jobs); only the one the next job would otherwise start cold
    for starts at 0, as that cold start would. Taken ones renice to 0 (the portrait test sees 0)."""
    assert small.sandbox.pool is not None
    await run(small, Job(language="python", code="pass"))
    await until(lambda: small.pool_status()["ready"] == 2)
    ready = [warm for queue in small.sandbox.pool._ready.values() for warm in queue]
    nice = sorted(int(Path(f"/proc/{warm.child_pid}/stat").read_text().rsplit(")", 1)[1].split()[16]) for warm in ready)
    # Two for one language: the second started while the first was starting or ready, so it is a top-up.
    assert nice in ([0, REFILL_NICE], [REFILL_NICE, REFILL_NICE]) if os.geteuid() == 0 else nice == [0, 0], nice


async def test_a_burst_past_the_pool_starts_cold_and_never_fails(small: Judge) -> None:
    jobs = [Job(language="python", code=f"print({i})") for i in range(8)]
    results = await asyncio.gather(*(run(small, job) for job in jobs))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]
    status = small.pool_status()
    assert status["misses"] >= 6 and status["hits"] + status["misses"] == 8, status


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie its new parent (init) has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def ended(pid: int) -> bool:
    """gone(), allowing the exit already under way to finish: a killed sandbox's pid 1 leaves its cgroups (which is
    what close() waits for) a moment before the kernel marks it a zombie, a window a loaded host can stretch."""
    deadline = time.monotonic() + scaled(5.0)
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def test_close_destroys_the_ready_sandboxes() -> None:
    sandbox = await Judge.create(make_settings(warm_pool=2), languages=("python",))
    assert sandbox.sandbox.pool is not None
    await run(sandbox, Job(language="python", code="pass"))
    await until(lambda: sandbox.pool_status()["ready"] == 2)
    ready: list[Warm] = [warm for queue in sandbox.sandbox.pool._ready.values() for warm in queue]
    cgroups = [Path(p).parent for warm in ready if warm.cgroup is not None for p in warm.cgroup.procs_files]
    await sandbox.close()
    assert sandbox.sandbox.pool is None
    for warm in ready:
        assert warm.popen.returncode is not None
        assert ended(warm.child_pid), Path(f"/proc/{warm.child_pid}/stat").read_text()
    assert not any(path.exists() for path in cgroups)


async def test_health_and_metrics_show_the_pool(app_client: Any) -> None:
    client = await app_client()
    response = await client.post("/run", json={"language": "python", "code": "print(1)"})
    assert response.status == 200
    health = await (await client.get("/health")).json()
    pool = health["pool"]
    assert pool["enabled"] is True and pool["hits"] + pool["misses"] >= 1 and "python" in pool["languages"]
    text = await (await client.get("/metrics")).text()
    for name in ("ready", "in_use", "budget", "hits_total", "misses_total", "failures_total", "refill_seconds"):
        assert f"conveyor_warm_pool_{name} " in text


def test_demand_gives_each_recent_language_one_and_the_rest_by_share() -> None:
    demand = Demand(budget=4, per_language_max=3)
    assert demand.targets(0.0) == {}
    for _ in range(9):
        demand.record("python", 100.0)
    demand.record("c", 100.0)
    assert demand.targets(100.0) == {"python": 3, "c": 1}  # python capped at the job slots
    # Past the window only "one each" is left; past DEMAND_KEEP_S nothing.
    assert demand.targets(100.0 + DEMAND_WINDOW_S + 1) == {"python": 1, "c": 1}
    assert demand.targets(100.0 + DEMAND_KEEP_S + 1) == {}


def test_demand_never_exceeds_the_budget() -> None:
    demand = Demand(budget=2, per_language_max=8)
    for i, name in enumerate(["a", "b", "c", "d", "a", "a"]):
        demand.record(name, float(i))
    targets = demand.targets(10.0)
    assert sum(targets.values()) <= 2 and targets["a"] >= 1, targets


def test_a_pool_that_cannot_start_sandboxes_only_misses() -> None:
    attempts = threading.Event()
    calls: list[tuple[str, bool]] = []

    def broken(language: str, urgent: bool) -> Warm:
        calls.append((language, urgent))
        attempts.set()
        raise OSError("no bwrap today")

    pool = WarmPool(broken, budget=2, per_language_max=2)
    try:
        assert pool.take("python") is None
        assert attempts.wait(5)
        assert pool.take("python") is None
        status = pool.stats()
        assert status["misses"] == 2 and status["hits"] == 0 and status["ready"] == 0
    finally:
        pool.close()
    assert pool.stats()["failures"] >= 1
    # Nothing ready and nothing starting: the next job would start cold, so the start is urgent (not niced).
    assert calls[0] == ("python", True), calls


async def test_a_killed_server_takes_its_warm_sandboxes_and_their_jobs_along() -> None:
    """SIGKILL leaves no ready sandbox and no job that took one: bwrap's --die-with-parent follows the pool's threads,
    and the cgroup guard sweeps what is left."""
    tag = marker()
    script = (
        "import asyncio, sys, time\n"
        "from server.queue.jobs import Job, JobIO\n"
        "from server.judging.executor import Judge\n"
        "from server.settings import Settings\n"
        "async def main():\n"
        "    box = await Judge.create(Settings(warm_pool=2, max_concurrent_jobs=2), languages=['bash'])\n"
        "    io = JobIO(on_output=lambda s, d: None)\n"
        "    await box(Job(language='bash', code='true'), io)\n"
        "    while box.pool_status()['ready'] < 2: await asyncio.sleep(0.01)\n"
        f"    job = Job(language='bash', code='exec -a {tag} sleep 300', timeout_ms=60000)\n"
        "    task = asyncio.create_task(box(job, io))\n"
        "    while box.pool_status()['ready'] < 2 or box.pool_status()['hits'] < 1: await asyncio.sleep(0.01)\n"
        "    print('ready', flush=True)\n"
        "    await task\n"
        "asyncio.run(main())\n"
    )
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=Path(__file__).parent.parent, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        assert await asyncio.wait_for(server.stdout.readline(), scaled(60)) == b"ready\n"
        await wait_for_processes(tag, 1)
        assert len(processes_of_server(server.pid)) >= 3  # the job's sandbox and two ready ones
    finally:
        server.kill()
        await server.wait()
    await wait_until_gone(lambda: host_processes_with(tag))
    await wait_until_gone(lambda: processes_of_server(server.pid))


async def test_a_stage_runs_only_once_its_accounting_has_begun(sandbox: Judge, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pre-started python can end a small program before the server has read its start report: the driver waits
    for the server's go-ahead, so the memory peak and CPU base are taken first. (The server is made slow to react
    here: 50 ms between reading the report and starting the accounting.)"""
    from server.sandbox import stages

    begin = stages.Stages._begin_stage

    def slow_begin(run: stages.Stages, stage: str) -> None:
        time.sleep(0.05)
        begin(run, stage)

    monkeypatch.setattr(stages.Stages, "_begin_stage", slow_begin)
    code = "x = bytearray(32 << 20)\nprint(len(x))\n"
    result = await warm_run(sandbox, Job(language="python", code=code))
    assert result.stdout == f"{32 << 20}\n"
    assert result.memory_peak_bytes is not None and result.memory_peak_bytes >= 32 << 20, result.memory_peak_bytes


def test_the_demand_record_is_bounded() -> None:
    """However many jobs a language gets, its record of takes holds at most 1,024 times."""
    demand = Demand(budget=4, per_language_max=4)
    for i in range(5000):
        demand.record("python", i / 100)
    assert len(demand._takes["python"]) == 1024
    assert demand.targets(50.0) == {"python": 4}


def message(run: list[bytes], files: bytes = b"0\0") -> bytes:
    """A job message (driver.job_message's format): no rlimits, no compile stage, `run`, no environment."""
    args = [b"10", b"1000000", b"256", b"-", b"-", b"0", *run]
    return b"".join(f + b"\0" for f in [str(len(args)).encode(), *args, b"0"]) + files + b"0\0"


# Each is a whole message that would run `true` but for one thing wrong with it.
HOSTILE_MESSAGES = {
    "an argument past 1 MiB": message([b"true", b"x" * (1 << 20)]),
    "more than 65,536 arguments": message([b"true", *([b"x"] * 65536)]),
    "more than 65,536 files": message(
        [b"true"], b"65537\0" + b"".join(b"f%d\x00100644\x001\0x" % i for i in range(65537))
    ),
    "a file shorter than its size": message([b"true"], b"1\0made\x00100644\0" + b"100\0short")[:-2],
    "a file over a directory": message([b"true"], b"1\0sub\x00100644\0" + b"1\0x"),
    "a file count that is not a number": message([b"true"], b"-1\0"),
    "a file without a mode": message([b"true"], b"1\0made\0" + b"2\0ok"),
    "a set-uid file": message([b"true"], b"1\0made\x00104755\0" + b"2\0ok"),
    "a symbolic link": message([b"true"], b"1\0made\x00120777\0" + b"2\0ok"),
    "a fifo": message([b"true"], b"1\0made\x00010644\0" + b"0\0"),
    "a directory with content": message([b"true"], b"1\0made\x00040755\0" + b"2\0ok"),
}


def drive_warm(cwd: Path, job_message: bytes) -> tuple[int, bytes]:
    """Run the C driver's `wait` mode on the host with one job message; its exit status and status reports."""
    from server.sandbox.runner import HELPER

    job_r, job_w = os.pipe()
    status_r, status_w = os.pipe()
    compile_r, compile_w = os.pipe()
    argv = [str(HELPER), "wait", str(job_r), str(status_w), str(compile_w)]
    with subprocess.Popen(argv, cwd=cwd, pass_fds=[job_r, status_w, compile_w]) as proc:
        for fd in (job_r, status_w, compile_w):
            os.close(fd)
        try:
            assert os.read(status_r, 64) == b"ready\n"
            with contextlib.suppress(BrokenPipeError):
                os.write(job_w, job_message)
            os.close(job_w)  # also the go-ahead for each stage (EOF)
            code = proc.wait(10)
            reports = b""
            while chunk := os.read(status_r, 1024):
                reports += chunk
            return code, reports
        finally:
            os.close(status_r)
            os.close(compile_r)


def test_the_warm_driver_runs_a_well_formed_job_message(tmp_path: Path) -> None:
    """The control for the test below: the same message, well formed, runs its program; its files and directories
    are written with their modes (an executable stays one), whatever the umask."""
    files = (
        b"4\0made\x00100644\0"
        + b"2\0ok"
        + b"run\x00100755\0"
        + b"0\0"
        + b"d/e\x00040755\x000\0"
        + b"d/f/g\x00100600\x001\0g"
    )
    assert drive_warm(tmp_path, message([b"true"], files)) == (0, b"run-start\nrun-end exit 0\n")
    assert (tmp_path / "made").read_bytes() == b"ok" and (tmp_path / "d/f/g").read_bytes() == b"g"
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("made", "run", "d/e", "d/f", "d/f/g")}
    assert modes == {"made": 0o644, "run": 0o755, "d/e": 0o755, "d/f": 0o755, "d/f/g": 0o600}
    assert (tmp_path / "d/e").is_dir()


@pytest.mark.parametrize("name", HOSTILE_MESSAGES)
def test_the_warm_driver_refuses_a_malformed_job_message(tmp_path: Path, name: str) -> None:
    """The server validates a job before it is written, and the C driver's own bounds refuse what would get past:
    exit 120 before any stage starts (the sandbox is then destroyed, whatever the driver wrote)."""
    (tmp_path / "sub").mkdir()
    assert drive_warm(tmp_path, HOSTILE_MESSAGES[name]) == (120, b"")
