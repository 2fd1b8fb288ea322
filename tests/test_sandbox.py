"""The sandboxed executor: every language, input, output streaming, outcomes, and what it reports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from server.errors import SandboxUnavailable
from server.judging.executor import Judge
from server.queue.jobs import ExecutionResult, Job, JobIO, Stream
from server.sandbox import runner as sandbox_module
from server.settings import Settings
from tests.conftest import scaled, scaled_ms

# Small limits keep the suite fast; compiles get room for a cold JVM or rustc on a busy two-core machine.
SETTINGS = Settings(
    job_timeout_ms=scaled_ms(3000),
    compile_timeout_ms=scaled_ms(30_000),
    memory_limit_mb=256,
    max_processes=48,
    max_output_bytes=256 * 1024,
    cache_max_mb=0,  # every compile is a compile here (tests/test_buildcache.py tests the cache)
)

HELLO = {
    "python": 'print("hello from python")',
    "javascript": 'console.log("hello from javascript")',
    "bash": 'echo "hello from bash"',
    "c": '#include <stdio.h>\nint main(void) { puts("hello from c"); return 0; }\n',
    "cpp": '#include <iostream>\nint main() { std::cout << "hello from cpp" << std::endl; }\n',
    "java": 'public class Main { public static void main(String[] a) { System.out.println("hello from java"); } }\n',
    "rust": 'fn main() { println!("hello from rust"); }\n',
    "perl": 'print "hello from perl\\n";',
}

ECHO_INPUT_AND_ARGS = {
    "python": "import sys\nprint(sys.argv[1:], sys.stdin.read().upper())",
    "bash": 'echo "[$*]"; tr a-z A-Z',
    "c": (
        "#include <stdio.h>\n#include <ctype.h>\nint main(int n, char **v) {\n"
        '  for (int i = 1; i < n; i++) printf("%s;", v[i]);\n'
        "  int c; while ((c = getchar()) != EOF) putchar(toupper(c));\n}\n"
    ),
    "java": (
        "import java.io.*;\npublic class Main { public static void main(String[] a) throws IOException {\n"
        '  System.out.print(String.join(";", a) + ";");\n'
        "  System.out.print(new String(System.in.readAllBytes()).toUpperCase()); } }\n"
    ),
}


@dataclass
class Run:
    """A finished job: its result and every on_output call, in order."""

    result: ExecutionResult
    events: list[tuple[Stream, str]] = field(default_factory=list)

    def joined(self, stream: Stream) -> str:
        return "".join(text for s, text in self.events if s == stream)


def make_job(language: str, code: str, **fields: Any) -> Job:
    fields.setdefault("timeout_ms", SETTINGS.job_timeout_ms)
    return Job(language=language, code=code, **fields)


async def run_job(sandbox: Judge, language: str, code: str, **fields: Any) -> Run:
    events: list[tuple[Stream, str]] = []
    result = await sandbox(make_job(language, code, **fields), JobIO(on_output=lambda s, t: events.append((s, t))))
    return Run(result, events)


def start_sandbox(settings: Settings, **options: Any) -> Iterator[Judge]:
    """For module fixtures: create a sandbox outside any test's loop (it holds no loop state), close it after."""
    sandbox = asyncio.run(Judge.create(settings, **options))
    yield sandbox
    asyncio.run(sandbox.close())


@contextlib.asynccontextmanager
async def open_sandbox(settings: Settings, **options: Any) -> AsyncIterator[Judge]:
    sandbox = await Judge.create(settings, **options)
    try:
        yield sandbox
    finally:
        await sandbox.close()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Judge]:
    yield from start_sandbox(SETTINGS)


@pytest.mark.parametrize("language", sorted(HELLO))
async def test_hello_world_in_every_language(sandbox: Judge, language: str) -> None:
    run = await run_job(sandbox, language, HELLO[language])
    assert run.result.reason is None, run.result
    assert run.result.exit_code == 0 and run.result.signal is None
    assert run.result.stdout == f"hello from {language}\n"
    assert run.joined("stdout") == run.result.stdout
    assert run.result.run_time_ms is not None and run.result.run_time_ms > 0
    compiled = language in ("c", "cpp", "java", "rust")
    assert (run.result.compile_time_ms is not None) == compiled
    assert (run.result.compile_output is not None) == compiled


@pytest.mark.parametrize("language", sorted(ECHO_INPUT_AND_ARGS))
async def test_stdin_and_args_reach_the_program(sandbox: Judge, language: str) -> None:
    run = await run_job(sandbox, language, ECHO_INPUT_AND_ARGS[language], stdin="abc\n", args=["x y", "$HOME", "*"])
    assert run.result.exit_code == 0, run.result
    expected = {
        "python": "['x y', '$HOME', '*'] ABC\n\n",
        "bash": "[x y $HOME *]\nABC\n",
        "c": "x y;$HOME;*;ABC\n",
        "java": "x y;$HOME;*;ABC\n",
    }
    assert run.result.stdout == expected[language]


async def test_exit_codes_are_reported_exactly(sandbox: Judge) -> None:
    run = await run_job(sandbox, "python", "import sys; sys.exit(3)")
    assert (run.result.exit_code, run.result.signal, run.result.reason) == (3, None, None)
    # 139 is also what a shell reports for SIGSEGV: the driver tells the two apart.
    run = await run_job(sandbox, "c", "#include <stdlib.h>\nint main(void) { exit(139); }\n")
    assert (run.result.exit_code, run.result.signal) == (139, None)


async def test_signals_are_reported_by_name(sandbox: Judge) -> None:
    run = await run_job(sandbox, "c", "int main(void) { volatile int *p = 0; return *p; }\n")
    assert (run.result.exit_code, run.result.signal, run.result.reason) == (None, "SIGSEGV", None)
    run = await run_job(sandbox, "bash", "kill -9 $$")
    assert (run.result.exit_code, run.result.signal) == (None, "SIGKILL")
    run = await run_job(sandbox, "python", "import os; os.abort()")
    assert run.result.signal == "SIGABRT"
    # Killing everything it can see also takes the stage driver down; the job still ends, as SIGKILL.
    run = await run_job(sandbox, "bash", "kill -9 -1; sleep 5")
    assert (run.result.exit_code, run.result.signal, run.result.reason) == (None, "SIGKILL", None)


@pytest.mark.parametrize(
    ("language", "code", "marker"),
    [
        ("c", "int main(void) { return undefined_name; }\n", "undefined_name"),
        ("java", "public class Main { public static void main(String[] a) { int x = ; } }\n", "Main.java:1"),
    ],
)
async def test_compile_errors_fill_compile_output(sandbox: Judge, language: str, code: str, marker: str) -> None:
    run = await run_job(sandbox, language, code)
    assert run.result.reason == "compile_error"
    assert run.result.compile_output is not None and marker in run.result.compile_output
    assert "error" in run.result.compile_output
    assert run.result.stdout == "" and run.events == []  # compiler output is not program output
    assert run.result.exit_code is None and run.result.compile_time_ms is not None


async def test_compile_timeout() -> None:
    settings = Settings(compile_timeout_ms=100, job_timeout_ms=scaled_ms(3000), cache_max_mb=0)
    # Instantiating every standard header takes g++ well over 100 ms.
    code = '#include <bits/stdc++.h>\nint main() { std::map<int, std::string> m; m[1] = "x"; }\n'
    async with open_sandbox(settings, languages=["cpp"]) as sandbox:
        run = await run_job(sandbox, "cpp", code)
        assert run.result.reason == "compile_timeout"
        assert run.result.compile_time_ms is not None and run.result.run_time_ms is None


async def test_stdout_and_stderr_stream_separately_in_order(sandbox: Judge) -> None:
    code = "import sys\nfor i in range(3):\n    print(f'out{i}')\n    print(f'err{i}', file=sys.stderr)\n"
    run = await run_job(sandbox, "python", code)
    assert run.result.stdout == "out0\nout1\nout2\n" and run.result.stderr == "err0\nerr1\nerr2\n"
    assert run.joined("stdout") == run.result.stdout and run.joined("stderr") == run.result.stderr


async def test_output_streams_while_the_program_runs(sandbox: Judge) -> None:
    """The prompt must arrive before the program gets its input: nothing waits for the job to end."""
    prompted = asyncio.Event()
    events: list[tuple[Stream, str]] = []

    def on_output(stream: Stream, data: str) -> None:
        events.append((stream, data))
        if "name?" in data:
            prompted.set()

    stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
    job = make_job("python", "name = input('name? ')\nprint(f'hi {name}')", interactive=True)
    task = asyncio.create_task(sandbox(job, JobIO(on_output=on_output, stdin=stdin)))
    await asyncio.wait_for(prompted.wait(), scaled(3))
    assert not task.done()
    stdin.put_nowait(b"ada\n")
    stdin.put_nowait(None)
    result = await task
    assert result.exit_code == 0 and result.stdout == "name? hi ada\n"


PROMPT_WITHOUT_FFLUSH = """#include <stdio.h>
int main(void) {
    char name[32];
    printf("name? ");
    if (scanf("%31s", name) != 1) return 1;
    printf("hi %s\\n", name);
    return 0;
}
"""


async def test_a_c_prompt_without_fflush_arrives_before_the_program_reads(sandbox: Judge) -> None:
    """Without a terminal C's stdout is block-buffered; interactive runs make it line-buffered, and glibc flushes a
    line-buffered stdout before it reads stdin."""
    prompted = asyncio.Event()

    def on_output(stream: Stream, data: str) -> None:
        if "name?" in data:
            prompted.set()

    stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
    job = make_job("c", PROMPT_WITHOUT_FFLUSH, interactive=True)
    task = asyncio.create_task(sandbox(job, JobIO(on_output=on_output, stdin=stdin)))
    waiting = asyncio.create_task(prompted.wait())
    await asyncio.wait([task, waiting], return_when=asyncio.FIRST_COMPLETED)
    assert prompted.is_set() and not task.done()  # the program is blocked in scanf, its prompt already out
    stdin.put_nowait(b"ada\n")
    stdin.put_nowait(None)
    result = await task
    assert result.exit_code == 0 and result.stdout == "name? hi ada\n" and result.stderr == ""


async def test_interactive_input_in_pieces_until_closed(sandbox: Judge) -> None:
    stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
    for piece in (b"one ", b"two\nthr", b"ee\n", None):
        stdin.put_nowait(piece)
    job = make_job("bash", 'while read -r line; do echo "<$line>"; done; echo done', interactive=True)
    result = await sandbox(job, JobIO(on_output=lambda s, t: None, stdin=stdin))
    assert result.stdout == "<one two>\n<three>\ndone\n"


async def test_utf8_split_across_reads_is_not_broken(sandbox: Judge) -> None:
    code = (
        "import sys, time\nout = sys.stdout.buffer\n"
        "for piece in (b'caf\\xc3', b'\\xa9 \\xe2\\x82', b'\\xac\\n', b'bad \\xff\\n'):\n"
        "    out.write(piece); out.flush(); time.sleep(0.05)\n"
    )
    run = await run_job(sandbox, "python", code)
    assert run.result.stdout == "café €\nbad \ufffd\n"
    assert run.joined("stdout") == run.result.stdout
    assert all("\ufffd" not in text for _, text in run.events[:-1])


async def test_large_writes_arrive_in_bounded_chunks(sandbox: Judge) -> None:
    run = await run_job(sandbox, "python", "import sys; sys.stdout.write('é' * 100_000)")
    assert run.result.stdout == "é" * 100_000 and not run.result.truncated
    assert max(len(text.encode()) for _, text in run.events) <= 16 * 1024
    assert run.joined("stdout") == run.result.stdout


# -- accounting ----------------------------------------------------------------------------------------------

SPIN_ONE_CPU_SECOND = "import time\nwhile time.process_time() < 1.0:\n    pass\n"
SPIN_WALL_MS = scaled_ms(30_000)  # a CPU-second may take many seconds on a busy shared machine


async def test_cpu_time_of_a_one_second_spin(sandbox: Judge) -> None:
    run = await run_job(sandbox, "python", SPIN_ONE_CPU_SECOND, timeout_ms=SPIN_WALL_MS)
    assert run.result.exit_code == 0, run.result
    # About 1,000 ms: CPU time, not wall time, so loose bounds hold whatever the machine's load. (Counting starts when
    # the server reads the run's start report, so a slow server may miss a little of the interpreter's start.)
    assert run.result.cpu_time_ms is not None and 500 <= run.result.cpu_time_ms <= 3000, run.result
    assert run.result.compile_cpu_time_ms is None and run.result.compile_memory_peak_bytes is None


async def test_memory_peak_of_a_100_mb_allocation(sandbox: Judge) -> None:
    code = "block = b'x' * (100 << 20)\nprint(len(block) >> 20)"
    run = await run_job(sandbox, "python", code, timeout_ms=SPIN_WALL_MS)
    assert run.result.stdout == "100\n", run.result
    assert run.result.memory_peak_bytes is not None and run.result.memory_peak_bytes >= 100 << 20, run.result
    assert run.result.memory_peak_bytes < SETTINGS.memory_limit_mb << 20


async def test_compile_and_run_are_accounted_separately(sandbox: Judge) -> None:
    spin = "#include <time.h>\nint main(void) { while (clock() < CLOCKS_PER_SEC / 2) {} return 0; }\n"
    run = await run_job(sandbox, "c", spin, timeout_ms=SPIN_WALL_MS)
    result = run.result
    assert result.exit_code == 0, result
    assert result.compile_cpu_time_ms is not None and result.compile_cpu_time_ms > 0, result
    assert result.compile_memory_peak_bytes is not None and result.compile_memory_peak_bytes > 1 << 20, result
    # The run's half CPU-second is the program's own, not the compiler's too.
    assert result.cpu_time_ms is not None and 250 <= result.cpu_time_ms < 500 + result.compile_cpu_time_ms, result


async def test_usage_reaches_rest_and_websocket(app_client: Any) -> None:
    client = await app_client(job_timeout_ms=SPIN_WALL_MS)
    async with client.ws_connect("/ws") as ws:
        resp = await client.post("/run", json={"language": "python", "code": SPIN_ONE_CPU_SECOND})
        job = await resp.json()
        await ws.send_json({"type": "subscribe", "jobId": job["id"]})
        while (event := await ws.receive_json(timeout=scaled(30)))["type"] != "completed":
            pass
    for data in (job, event):
        assert 500 <= data["cpuTimeMs"] <= 3000 and data["memoryPeakBytes"] > 1 << 20, data
        assert data["compileCpuTimeMs"] is None and data["compileMemoryPeakBytes"] is None
    resp = await client.get(f"/queue/job/{job['id']}")
    assert (await resp.json())["cpuTimeMs"] == job["cpuTimeMs"]


async def test_unknown_language_is_refused(sandbox: Judge) -> None:
    run = await run_job(sandbox, "no-such-lang", "x")
    assert run.result.reason == "unsupported_language" and run.events == []


async def test_nul_in_args_is_refused(sandbox: Judge) -> None:
    run = await run_job(sandbox, "bash", "echo $1", args=["a\0b"])
    assert run.result.reason == "invalid_args" and run.events == []


async def test_aliases_run_the_canonical_language(sandbox: Judge) -> None:
    run = await run_job(sandbox, "node", "console.log(process.version.startsWith('v'))")
    assert run.result.stdout == "true\n"


async def test_toolchains_come_from_the_hosts_usr_only(sandbox: Judge) -> None:
    code = "echo $PATH; for t in python3 node gcc javac rustc perl; do command -v $t; done; ls /root /home 2>&1"
    run = await run_job(sandbox, "bash", code)
    path, *tools, root, home = run.result.stdout.splitlines()
    assert path == "/usr/bin:/bin"
    assert tools == [f"/usr/bin/{t}" for t in ("python3", "node", "gcc", "javac", "rustc", "perl")]
    assert "No such file or directory" in root and "No such file or directory" in home


def test_runtimes_resolve_and_describe(sandbox: Judge) -> None:
    runtimes = {entry["language"]: entry for entry in sandbox.runtimes()}
    assert set(runtimes) >= {*HELLO, "executable"}  # and whichever of languages.toml's others are installed
    assert runtimes["python"]["aliases"] == ["py", "python3"] and runtimes["python"]["version"][0].isdigit()
    assert sandbox.resolve("node") == "javascript" and sandbox.resolve("PY") == "python"
    assert sandbox.resolve("python3") == "python" and sandbox.resolve("brainfuck") is None
    info = sandbox.describe()
    assert info["backend"] == "bwrap" and info["bwrapVersion"]
    limits = info["limits"]
    assert limits["memory"] == {"limitMb": 256, "enforcedBy": limits["memory"]["enforcedBy"]}
    assert limits["memory"]["enforcedBy"] in ("cgroup v1 memory", "cgroup v2 memory", "RLIMIT_AS")
    assert limits["processes"]["limit"] == 48
    assert limits["cpu"]["enforcedBy"] in (
        "cgroup v1 cpuacct (the whole job), RLIMIT_CPU (each process)",
        "cgroup v2 cpu.stat (the whole job), RLIMIT_CPU (each process)",
    )
    assert limits["fileSize"]["enforcedBy"] == "RLIMIT_FSIZE"
    assert limits["openFiles"]["enforcedBy"] == "RLIMIT_NOFILE"
    assert {"output", "wallTime", "workdir"} <= set(limits)
    syscalls = info["syscallFilter"]
    assert {"io_uring_setup", "perf_event_open", "pidfd_getfd", "add_key", "unshare"} <= set(syscalls["deniedEperm"])
    assert syscalls["deniedEnosys"] == ["clone3"]
    assert syscalls["socketFamilies"] == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert "other ABIs (on x86-64: i386 and x32) kill the process" in syscalls["arch"]


async def test_missing_bwrap_explains_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        await Judge.create(SETTINGS, languages=["bash"])


async def test_missing_libseccomp_explains_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # what importing it does without libseccomp.so.2
    with pytest.raises(SandboxUnavailable, match="apt-get install libseccomp2"):
        await Judge.create(SETTINGS, languages=["bash"])


async def test_development_mode_warns_and_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="server.sandbox.runner")
    async with open_sandbox(Settings(sandbox="none", job_timeout_ms=scaled_ms(3000)), languages=["python"]) as sandbox:
        assert any("SANDBOX=none" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        run = await run_job(sandbox, "python", "import os; print(open('main.py').read().strip() != '')")
        assert run.result.stdout == "True\n"
        assert sandbox.describe()["backend"] == "none"


# -- the C helper and the perl path it replaces -----------------------------------------------------------------

# What a job sees of its start: its rlimits, its parent (the stage driver), whether it is dumpable, its session
# keyring's description, its uid, and its exact exit status from the driver.
START_REPORT = """
import ctypes, os, resource
for name in ("CPU", "FSIZE", "NOFILE", "CORE", "NPROC", "AS"):
    print(name, resource.getrlimit(getattr(resource, "RLIMIT_" + name)))
print("uid", os.getuid(), "groups", os.getgroups())
status = open("/proc/%d/status" % os.getppid()).read()
print("driver uid", [line.split()[1] for line in status.splitlines() if line.startswith("Uid:")])
print("driver fds visible", os.access("/proc/%d/fd" % os.getppid(), os.R_OK))
raise SystemExit(7)
"""


async def test_the_c_helper_and_the_perl_path_start_a_job_alike() -> None:
    """The C helper (built by make install-test) replaces sh, setpriv, perl and prlimit: a job sees the same
    limits, uid and undumpable driver either way, and both report the same exact statuses."""
    assert sandbox_module.HELPER.exists(), "make install-test builds server/sandbox/helper/conveyor-run"
    reports = []
    for helper in (True, False):
        async with open_sandbox(SETTINGS, languages=["python", "c"], helper=helper) as box:
            assert (box.sandbox.helper is not None) == helper
            run = await run_job(box, "python", START_REPORT)
            assert (run.result.exit_code, run.result.reason) == (7, None), run.result
            reports.append(run.result.stdout)
            crash = await run_job(box, "c", "int main(void) { volatile int *p = 0; return *p; }\n")
            assert (crash.result.signal, crash.result.exit_code) == ("SIGSEGV", None)
            broken = await run_job(box, "c", "int main(void) { return nope; }\n")
            assert broken.result.reason == "compile_error" and "nope" in (broken.result.compile_output or "")
    assert reports[0] == reports[1]
    assert "driver fds visible False" in reports[0] and "CORE (0, 0)" in reports[0]
    assert f"CPU ({SETTINGS.cpu_time_limit_s}, {SETTINGS.cpu_time_limit_s + 1})" in reports[0]


async def test_without_the_c_helper_the_server_says_how_to_build_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sandbox_module, "HELPER", sandbox_module.HELPER.with_name("not-built"))
    async with open_sandbox(SETTINGS, languages=["bash"]) as box:
        assert box.sandbox.helper is None
        assert box.describe()["launcher"] == "sh, setpriv, perl, prlimit (no C helper built)"
        run = await run_job(box, "bash", "echo ok")
    assert run.result.stdout == "ok\n"
    assert "not built (make install needs a C compiler)" in caplog.text


BAD_LIMITS = ["-", "1k", "-5", "", " 3"]  # CPU (never "-"), FSIZE, NOFILE, NPROC, AS


def test_the_c_helper_fails_closed() -> None:
    """A cgroup it cannot join, or a command line it does not understand, stops it before anything runs."""
    helper = str(sandbox_module.HELPER)
    joined = subprocess.run(
        [helper, "launch", "--cgroup", "/nonexistent/cgroup.procs", "--", "echo", "ran"], capture_output=True, text=True
    )
    assert (joined.returncode, joined.stdout) == (125, "")
    assert "conveyor: cannot join cgroup /nonexistent/cgroup.procs" in joined.stderr
    limits = ["10", "1000", "256", "-", "-"]
    refused = [
        ["drive", "3", "4"],
        ["launch", "--cgroup"],
        ["launch", "--bogus", "x", "--", "true"],
        ["launch", "--uid", "nobody", "--", "true"],  # not read as uid 0
        ["other"],
        # a limit that is not a number is refused, not read as 0 or as unlimited
        *(["drive", "1", "2", *limits[:i], bad, *limits[i + 1 :], "0", "true"] for i, bad in enumerate(BAD_LIMITS)),
    ]
    for argv in refused:
        done = subprocess.run([helper, *argv], capture_output=True, text=True)
        assert (done.returncode, done.stdout) == (120, ""), argv
