"""Attacks on the warm pool (sandbox/pool.py): what a job submitting hostile code, files, arguments or limits can reach
of other jobs' sandboxes, of the next job, and of the server, and what a warm run shows that a cold one does not.

Each test is written against the claim in docs/security.md ("Warm sandboxes") and compares a warm run with a cold run
of the same job where the claim is fidelity; it fails if the protection it exercises is taken away."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Iterator

import pytest

from server.judging.executor import Judge
from server.queue.jobs import ExecutionResult, Job, JobIO, Limits, SourceFile, Stream
from server.sandbox.pool import Warm
from tests.conftest import make_settings
from tests.test_pool import gone, run, until, warm_run

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

LANGUAGES = ("python", "c", "bash")


@pytest.fixture(scope="module")
def cold() -> Iterator[Judge]:
    """Every job starts cold: what a warm run must look like."""
    sandbox = asyncio.run(Judge.create(make_settings(warm_pool=0), languages=LANGUAGES))
    yield sandbox
    asyncio.run(sandbox.close())


@pytest.fixture(scope="module")
def warm() -> Iterator[Judge]:
    """A pool of three, shared by the tests that only need jobs to take warm sandboxes."""
    sandbox = asyncio.run(Judge.create(make_settings(warm_pool=3, max_concurrent_jobs=3), languages=LANGUAGES))
    yield sandbox
    asyncio.run(sandbox.close())


def ready_sandboxes(sandbox: Judge) -> list[Warm]:
    assert sandbox.sandbox.pool is not None
    return [warm for queue in sandbox.sandbox.pool._ready.values() for warm in queue]


async def full(sandbox: Judge) -> None:
    """Until every language has its target ready and no sandbox is in use (the refill thread then starts nothing
    and holds no descriptor of its own)."""

    def settled() -> bool:
        status = sandbox.pool_status()
        languages = status["languages"].values()
        return status["inUse"] == 0 and bool(languages) and all(n["ready"] == n["target"] for n in languages)

    await until(settled)


def outcome(result: ExecutionResult) -> tuple[object, ...]:
    return result.stdout, result.stderr, result.exit_code, result.signal, result.reason


# -- reaching another job's sandbox -------------------------------------------------------------------------------

KILL_EVERYTHING = r"""
import os, signal
print(sorted(int(p) for p in os.listdir("/proc") if p.isdigit()), flush=True)
for sig in (signal.SIGSTOP, signal.SIGKILL):
    try:
        os.kill(-1, sig)
    except OSError as e:
        print("kill", e.errno, flush=True)
"""


async def test_a_job_can_neither_see_nor_signal_the_ready_sandboxes(warm: Judge) -> None:
    """kill(-1) reaches only the job's own pid namespace: every other ready sandbox (own launcher, bwrap, driver and
    pre-started python) lives on, and the next jobs take them and run normally."""
    await warm_run(warm, Job(language="python", code="pass"))
    await full(warm)
    assert warm.sandbox.pool is not None
    victim = warm.sandbox.pool._ready["python"][0]  # take() hands out the oldest
    others = [other for other in ready_sandboxes(warm) if other is not victim]
    assert others
    attack = await warm_run(warm, Job(language="python", code=KILL_EVERYTHING))
    assert attack.signal == "SIGKILL", attack  # it took its own sandbox down, pid 1 included
    assert attack.stdout.startswith("[1, 2, 3]\n"), attack.stdout  # bwrap's pid 1, the driver, itself
    for other in others:
        assert other.popen.poll() is None and not gone(other.child_pid), other
    alive = {
        "python": "print('alive')",
        "bash": "echo alive",
        "c": '#include <stdio.h>\nint main(void) { puts("alive"); }',
    }
    for other in others:
        after = await run(warm, Job(language=other.language, code=alive[other.language]))
        assert (after.stdout, after.exit_code) == ("alive\n", 0), after


LISTEN = r"""
import socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\0conveyor-attack")
s.listen()
for place in ("/dev/shm", "/tmp", "/box"):
    open(place + "/conveyor-attack", "w").write("secret")
print("listening", flush=True)
time.sleep(30)
"""

PROBE = r"""
import os, socket
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    c.connect("\0conveyor-attack")
    print("connected")
except OSError as e:
    print("refused", e.errno)
print([p for p in ("/dev/shm", "/tmp", "/box") if os.path.exists(p + "/conveyor-attack")])
print("conveyor-attack" in open("/proc/net/unix").read())
"""


async def test_abstract_sockets_and_shared_memory_stay_in_their_sandbox(warm: Judge) -> None:
    """A running job's abstract unix socket and files in /dev/shm, /tmp and /box are out of reach of a job in a
    sandbox that was waiting in the pool meanwhile."""
    listening = asyncio.Event()

    def on_output(stream: Stream, data: str) -> None:
        if "listening" in data:
            listening.set()

    await warm_run(warm, Job(language="python", code="pass"))
    await full(warm)
    job = Job(language="python", code=LISTEN, timeout_ms=30_000)
    holder = asyncio.ensure_future(warm(job, JobIO(on_output=on_output)))
    try:
        await asyncio.wait_for(listening.wait(), 10)
        probe = await warm_run(warm, Job(language="python", code=PROBE))
    finally:
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holder
    assert probe.stdout == "refused 111\n[]\nFalse\n", probe


LEAVE_IPC = r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
made = [libc.shmget(0x5EED, 4096, 0o1666), libc.msgget(0x5EED, 0o1666), libc.semget(0x5EED, 1, 0o1666)]
print([id >= 0 for id in made], [open(f"/proc/sysvipc/{k}").read().count("\n") for k in ("shm", "msg", "sem")])
"""

LOOK_IPC = r"""
print([open(f"/proc/sysvipc/{k}").read().count("\n") for k in ("shm", "msg", "sem")])
"""


async def test_ipc_objects_a_job_leaves_are_gone_for_the_next(warm: Judge) -> None:
    """SysV shared memory, message queues and semaphores outlive their processes; each sandbox has its own IPC
    namespace, so the next job (in the next ready sandbox of the language) finds none of them."""
    left = await warm_run(warm, Job(language="python", code=LEAVE_IPC))
    assert left.stdout == "[True, True, True] [2, 2, 2]\n", left  # a header line and the object, each
    look = await warm_run(warm, Job(language="python", code=LOOK_IPC))
    assert look.stdout == "[1, 1, 1]\n", look


# -- what a warm run shows that a cold one does not ---------------------------------------------------------------

# Each program's output, exit status and signal must be those of `python3 main.py` in a cold sandbox.
PYTHON_PROGRAMS = {
    "excepthook set to None": "import sys\nsys.excepthook = None\n1/0\n",
    "excepthook deleted": "import sys\ndel sys.excepthook\n1/0\n",
    "excepthook that raises": "import sys\ndef hook(*a): raise RuntimeError('hook')\nsys.excepthook = hook\n1/0\n",
    "NUL byte in the source": "print(1)\n\0print(2)\n",
    "stderr set to None": "import sys\nsys.stderr = None\n1/0\n",
    "exception whose str raises": "class E(Exception):\n    def __str__(self): raise RuntimeError('x')\nraise E\n",
    "exit status past 255": "import sys\nsys.exit(256)\n",
    "os._exit": "import os\nos._exit(7)\n",
    "an exception in a thread": (
        "import threading\ndef f(): raise ValueError('t')\nt = threading.Thread(target=f)\nt.start()\nt.join()\n"
    ),
    "warnings": "import warnings\nwarnings.warn('careful')\nwarnings.warn('old', DeprecationWarning)\n",
    "signals and mask": (
        "import signal\nprint([signal.getsignal(s) for s in signal.valid_signals() if s not in (32, 33)])\n"
        "print(signal.pthread_sigmask(signal.SIG_BLOCK, []))\n"
    ),
    "flags, paths and stdio": (
        "import sys\nprint(sys.flags, sys.warnoptions, sys.path, sys.executable, sys.prefix)\n"
        "print(sys.stdin.line_buffering, sys.stdout.line_buffering, sys.stdin.encoding, sys.stdin.errors)\n"
        "print(repr(sys.stdin.read(4)), repr(sys.stdin.buffer.read()))\n"
    ),
    "descriptors 3 and 4": (
        "import os\nfor fd in (3, 4, 5):\n    try:\n        print(fd, os.read(fd, 10))\n"
        "    except OSError as e:\n        print(fd, e.errno)\n"
    ),
    "sys.modules and __main__": (
        "import sys, __main__\nprint(sorted(sys.modules))\n"
        "print(sorted(vars(__main__)), __main__.__loader__.get_filename(), sys.argv, sys.orig_argv)\n"
    ),
    "input()": "print(input('> '))\nprint(input())\n",
    "the importer cache": "import sys\nprint(sorted(sys.path_importer_cache))\n",
    # What the interpreter's exit runs (the pre-started python skips that exit when it has nothing to do).
    "__del__ at exit": "class A:\n    def __del__(self): print('bye')\na = A()\n",
    "a suspended generator's finally": (
        "def g():\n    try:\n        yield 1\n    finally:\n        print('f')\nx = g()\nnext(x)\n"
    ),
    "a weak reference's callback": (
        "import _weakref\nclass A: pass\na = A()\nw = _weakref.ref(a, lambda r: print('cb'))\n"
    ),
    "a file left open": "f = open('/dev/stdout', 'w')\nf.write('late\\n')\n",
    "atexit": "import atexit\natexit.register(print, 'at exit')\n",
    "an audit hook": (
        "import sys\nsys.addaudithook(lambda e, a: print(e) if e.startswith(('gc.', 'cpython.')) else None)\n"
    ),
    "a profiler": (
        "import sys\nsys.setprofile(lambda f, e, a: print(e, getattr(a, '__name__', '')) if e[:2] == 'c_' else 0)\n"
    ),
    "stdout buffered": "import sys\nsys.stdout.reconfigure(write_through=False)\nsys.stdout.write('x')\n",
    "abc caches": "import abc\nclass B(abc.ABC): pass\nclass C(B): pass\nprint(isinstance(C(), B))\n",
    "a metaclass's __getattr__": "class M(type):\n    def __getattr__(c, n): print(n)\nclass K(metaclass=M): pass\n",
    # The exit check looks at the boot's objects before the job, and at the exit only at younger ones: each of these
    # leaves a finalizer among the old ones.
    "a suspended generator the program's collections made old": (
        "def g():\n    try:\n        yield 1\n    finally:\n        print('f')\nx = g()\nnext(x)\n"
        "junk = [[] for _ in range(100000)]\nprint('end')\n"
    ),
    "an object of the boot given a class that finalizes": (
        "import os, sys\nspec = sys.modules['os'].__spec__\nclass S(type(spec)):\n"
        "    def __del__(self, write=os.write):\n        write(1, b'bye\\n')\nspec.__class__ = S\ndel S, spec\n"
    ),
    # The check's functions run after the module's globals have become the program's: its own builtins' names.
    "a program's own any()": "def any(_):\n    return False\nclass A:\n    def __del__(self): print('bye')\na = A()\n",
    "a class of the boot given __del__": (
        "import sys\ntype(sys.modules['sys'].__spec__).__del__ = lambda s: print('bye') if s.name == 'sys' else None\n"
    ),
}


@pytest.mark.parametrize("name", PYTHON_PROGRAMS)
async def test_a_pre_started_python_runs_a_program_as_python3_main_py(warm: Judge, cold: Judge, name: str) -> None:
    job = Job(language="python", code=PYTHON_PROGRAMS[name], stdin="line one\nline two\n")
    want = await run(cold, job)
    got = await warm_run(warm, job)
    assert outcome(got) == outcome(want)


@pytest.mark.parametrize("name", ["-c", "--version"])
async def test_an_entry_file_named_like_an_option_runs_warm_as_cold(warm: Judge, cold: Judge, name: str) -> None:
    """File names may start with "-" (payloads only refuses control characters, `..` and leading dots). A cold
    sandbox hands the entry file to `python3 {main}`, where it becomes an interpreter option (`-c` runs the first
    argument as code, `--version` prints the version); the pre-started python runs the file."""
    job = Job(language="python", code="", files=[SourceFile(name, "print('the file')\n")], args=["print('the arg')"])
    want = await run(cold, job)
    got = await warm_run(warm, job)
    assert outcome(got) == outcome(want)


ENVIRON = r"""
#include <stdio.h>
extern char **environ;
int main(void) { for (char **e = environ; *e; e++) puts(*e); return 0; }
"""


async def test_a_warm_program_gets_its_environment_as_a_cold_one(warm: Judge, cold: Judge) -> None:
    """The environment block itself, in its order (getenv loops, `env`, /proc/self/environ), not only its set."""
    job = Job(language="c", code=ENVIRON)
    want = await run(cold, job)
    got = await warm_run(warm, job)
    assert want.exit_code == 0 and "PWD=/box" in want.stdout, want
    assert got.stdout == want.stdout


LOOK = r"""
import hashlib, os, sys
print(sys.argv)
for root, dirs, files in sorted(os.walk("/box")):
    for name in sorted(dirs + files):
        path = os.path.join(root, name)
        st = os.lstat(path)
        data = hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.isfile(path) else ""
        print(repr(path), oct(st.st_mode), st.st_uid, st.st_gid, st.st_size, data)
"""


async def test_hostile_files_and_arguments_reach_a_warm_program_as_a_cold_one(warm: Judge, cold: Judge) -> None:
    """The job message carries what the API lets through (32 files, 8 levels deep, 255-byte and non-ASCII names,
    names like options, binary content with NULs, 64 arguments of up to 4 KiB with newlines, empty ones, `--`):
    the program sees the same argv and the same tree, modes, owners and bytes as in a cold sandbox."""
    deep = "/".join(f"d{i}" for i in range(7)) + "/deep.txt"
    files = [SourceFile("main.py", LOOK), SourceFile(deep, "deep")]
    files.append(SourceFile("bin.dat", base64.b64encode(bytes(range(256)) * 64).decode(), "base64"))
    names = ["é ü.txt", "-rf", "a=b", "'q\"", "日本/語.py", "x" * 255, "sp ace/ x", "emoji😀", "empty", "--"]
    files += [SourceFile(name, "" if name == "empty" else name) for name in names]
    args = ["", "-c", "a=b", "\n", "é", "\t x", "x" * 4096, "😀", "--", "\u2028", "-m", "\x7f"]
    args += [str(i) for i in range(64 - len(args))]
    job = Job(language="python", code="", files=files, args=args)
    want = await run(cold, job)
    got = await warm_run(warm, job)
    assert want.exit_code == 0 and "deep.txt" in want.stdout, want
    assert outcome(got) == outcome(want)


# -- limits -------------------------------------------------------------------------------------------------------

LIMITED = {
    "cpu time": ("while True: pass\n", Limits(cpu_time_ms=1000)),
    "cpu time of the whole tree": (
        "import os\nfor _ in range(3):\n    os.fork()\nwhile True: pass\n",
        Limits(cpu_time_ms=1000),
    ),
    "memory below the server's": ("x = bytearray(200 << 20)\nprint(len(x))\n", Limits(memory_mb=48)),
    "file size": (
        "import resource\nlimit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]\n"
        "f = open('/tmp/big', 'wb', buffering=0)\nf.seek(limit - 1)\nprint(f.write(b'x'))\n"
        "try:\n    f.write(b'x')\nexcept OSError as e:\n    print('refused', e.errno)\n",
        None,
    ),
    "open files": (
        "import resource\nfs = []\ntry:\n    while True: fs.append(open('/dev/null'))\n"
        "except OSError as e: print(len(fs), resource.getrlimit(resource.RLIMIT_NOFILE), e.errno)\n",
        None,
    ),
    "processes": (
        "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(3)\n"
        "            os._exit(0)\n        n += 1\nexcept OSError as e: print(n, e.errno)\n",
        None,
    ),
    "output": ("import sys\nsys.stdout.write('y' * 10_000_000)\n", None),
}


@pytest.mark.parametrize("name", LIMITED)
async def test_per_job_limits_bind_a_warm_run_as_a_cold_one(warm: Judge, cold: Judge, name: str) -> None:
    code, limits = LIMITED[name]
    job = Job(language="python", code=code, limits=limits or Limits())
    want = await run(cold, job)
    got = await warm_run(warm, job)
    assert (want.reason is not None) or want.stdout, want  # the limit was reached
    if want.reason == "output_limit":
        # The kill follows the cap: a writer that finishes its last write first exits 0, warm or cold, by chance.
        assert (got.stdout, got.stderr, got.reason) == (want.stdout, want.stderr, want.reason)
    elif want.reason == "cpu_limit":
        # RLIMIT_CPU's SIGXCPU and the job-wide cgroup kill race for the same CPU second, warm or cold alike.
        assert (got.stdout, got.reason) == (want.stdout, want.reason) and got.signal in ("SIGXCPU", "SIGKILL")
    else:
        assert outcome(got) == outcome(want)


async def test_a_job_asking_for_less_memory_than_a_ready_sandbox_holds_ends_as_a_cold_run(
    warm: Judge, cold: Judge
) -> None:
    """memoryLimitMb=1 is valid through the API. The ready python sandbox's cgroup already holds its pre-started
    interpreter, more than 1 MiB: lowering the limit under it must not turn into a server error."""
    job = Job(language="python", code="print(1)\n", limits=Limits(memory_mb=1))
    want = await run(cold, job)
    assert want.reason == "memory_limit", want
    got = await warm_run(warm, job)
    assert outcome(got) == outcome(want)
