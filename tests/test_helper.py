"""The C helper (sandbox/helper/conveyor-run.c) against hostile input (issue 27): its arguments and job messages fed
to a build with AddressSanitizer and UndefinedBehaviorSanitizer, the uids it refuses, a pre-started interpreter that
dies after booting, and the hardening the shipped build has."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.sandbox.runner import HELPER
from tests.test_pool import message

SOURCE = HELPER.with_name("conveyor-run.c")
SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
# Leaks do not matter in a helper that execs or exits within milliseconds; a failed allocation is its to handle.
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1:exitcode=99",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}
USAGE_FAILED = 120
UID_FAILED = 126
FUZZ_SEED = 27
FUZZ_CASES = 200

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (apt-get install gcc)")


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The helper built from the same source with ASan and UBSan: an out-of-bounds read or an overflow is a report
    and a non-zero exit instead of a silent wrong answer."""
    binary = tmp_path_factory.mktemp("sanitized") / "conveyor-run"
    subprocess.run(["cc", "-O1", "-g", *SANITIZERS, "-o", str(binary), str(SOURCE)], check=True)
    return binary


def run_helper(binary: Path, argv: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": "/usr/bin:/bin", **SANITIZER_ENV}
    done = subprocess.run([str(binary), *argv], cwd=cwd, env=env, capture_output=True, timeout=60, check=False)
    assert b"Sanitizer" not in done.stderr and b"runtime error" not in done.stderr, (argv, done.stderr.decode())
    assert done.returncode >= 0, (argv, signal.Signals(-done.returncode).name)  # not killed by SIGSEGV, SIGABRT ...
    return done


# Counts that overflowed `10 + n >= argc` (drive) and `6 + n >= nargs` (wait) and read past the argument list.
OVERFLOWING = ["2147483647", "2147483646", "2147483641", "2147483640", "4294967296", "4294967306"]
NOT_NUMBERS = ["-1", "-2147483648", "9223372036854775807", "9223372036854775808", "99999999999999999999", ""]
NOT_NUMBERS += [" 1", "+0", "1x", "0x10", "٣"]
LIMITS = ["10", "1000000", "256", "-", "-"]


def hostile_argv() -> Iterator[list[str]]:
    for n in [*OVERFLOWING, *NOT_NUMBERS, "2"]:  # "2": one more than the arguments after it allow
        yield ["drive", "1", "2", *LIMITS, n, "compile", "run"]
    for fd in ["4294967299", "-1", "2147483648", "1e3", ""]:
        yield ["drive", fd, "2", *LIMITS, "0", "true"]
        yield ["drive", "1", fd, *LIMITS, "0", "true"]
        yield ["wait", fd, "1", "2"]
    for cpu in ["18446744073709551615", "9223372036854775807", "-0", "1.5"]:
        yield ["drive", "1", "2", cpu, *LIMITS[1:], "0", "true"]
    for nice in ["99999999999", "20", "-21", "4294967296", "x", ""]:
        yield ["launch", "--nice", nice, "--", "true"]
    yield ["wait", "1", "2"]
    yield ["launch", "--uid"]
    yield ["launch", "--stay-root", "--uid", "65534", "--", "true"]  # one or the other


@pytest.mark.parametrize("argv", list(hostile_argv()), ids=lambda argv: " ".join(argv)[:60])
def test_hostile_arguments_are_refused_not_read(sanitized: Path, tmp_path: Path, argv: list[str]) -> None:
    """Each is refused (exit 120) before any stage runs: no out-of-bounds read, no overflow, nothing started."""
    done = run_helper(sanitized, argv, tmp_path)
    assert (done.returncode, done.stdout) == (USAGE_FAILED, b""), (argv, done.stderr.decode())


def test_random_arguments_never_crash_the_helper(sanitized: Path, tmp_path: Path) -> None:
    """Argument lists of the kinds above in random order and length (seeded): refused or run, never a crash."""
    rng = random.Random(FUZZ_SEED)
    pool = [*OVERFLOWING, *NOT_NUMBERS, "-", "0", "1", "2", "10", "no-such-program", "--", "--uid", "--nice"]
    for _ in range(FUZZ_CASES):
        argv = [rng.choice(["drive", "wait", "launch"]), *(rng.choice(pool) for _ in range(rng.randrange(0, 14)))]
        run_helper(sanitized, argv, tmp_path)


# Each would have run the job as uid 0: 2^32 and past truncate to 0 or to (uid_t)-1, which setresuid reads as
# "leave it unchanged"; 0 is root itself.
ROOT_UIDS = ["0", "4294967296", "4294967295", "99999999999999999999", "18446744073709551616", "-1", "+0", "00"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the launcher changes uid only when the server runs as root")
@pytest.mark.parametrize("uid", ROOT_UIDS)
def test_no_uid_runs_a_job_as_root(tmp_path: Path, uid: str) -> None:
    done = run_helper(HELPER, ["launch", "--uid", uid, "--", "id", "-u"], tmp_path)
    assert (done.returncode, done.stdout) == (USAGE_FAILED, b""), done.stderr.decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="the launcher changes uid only when the server runs as root")
def test_the_launcher_takes_a_job_uid_and_never_stays_root(tmp_path: Path) -> None:
    """The control: a uid in range is taken (also past 16 bits). And a root launcher given no uid refuses."""
    for uid in ("65534", "2000000123", "4294967294"):
        done = run_helper(HELPER, ["launch", "--uid", uid, "--", "/bin/sh", "-c", "id -u; id -g"], tmp_path)
        assert done.stdout == f"{uid}\n{uid}\n".encode(), done
    done = run_helper(HELPER, ["launch", "--", "id", "-u"], tmp_path)
    assert (done.returncode, done.stdout) == (UID_FAILED, b""), done.stderr.decode()


def drive_warm(binary: Path, cwd: Path, job_message: bytes) -> tuple[int, bytes, bytes]:
    """The driver's `wait` mode with one job message (then EOF, also each stage's go-ahead): exit status, status
    reports, stderr."""
    job_r, job_w = os.pipe()
    status_r, status_w = os.pipe()
    compile_r, compile_w = os.pipe()
    argv = [str(binary), "wait", str(job_r), str(status_w), str(compile_w)]
    env = {"PATH": "/usr/bin:/bin", **SANITIZER_ENV}
    proc = subprocess.Popen(argv, cwd=cwd, env=env, pass_fds=[job_r, status_w, compile_w], stderr=subprocess.PIPE)
    for fd in (job_r, status_w, compile_w):
        os.close(fd)
    try:
        with open(job_w, "wb") as job:
            try:
                job.write(job_message)
            except BrokenPipeError:
                pass
        _, err = proc.communicate(timeout=60)
        with open(status_r, "rb", closefd=False) as status:
            reports = status.read()
        return proc.returncode, reports, err
    finally:
        os.close(status_r)
        os.close(compile_r)


def hostile_messages() -> Iterator[bytes]:
    well_formed = message([b"/bin/true"], b"1\0made\x00100644\0" + b"2\0ok")
    for n in [*OVERFLOWING, *NOT_NUMBERS]:
        args = [b"10", b"1000000", b"256", b"-", b"-", n.encode(), b"/bin/true"]
        yield b"".join(f + b"\0" for f in [b"7", *args, b"0", b"0", b"0"])
    for count in OVERFLOWING + NOT_NUMBERS:  # as the count of arguments, of the environment, of files, of preload
        yield count.encode() + b"\0"
        yield message([b"/bin/true"])[:-2] + count.encode() + b"\0"
        yield message([b"/bin/true"], count.encode() + b"\0")
    yield message([b"/bin/true"], b"1\0big\x00100644\0" + b"9223372036854775807\0x")
    yield message([b"/bin/true"], b"1\0big\x00100644\0" + b"9223372036854775808\0x")
    for mode in OVERFLOWING + NOT_NUMBERS + ["99", "1777777", "177777777777777777777777"]:  # as a file's mode
        yield message([b"/bin/true"], b"1\0m\0" + mode.encode() + b"\x001\0x")
    for end in range(1, len(well_formed) - 1):  # every truncation of a well-formed message
        yield well_formed[:end]
    # No "/" in random bytes: a message that happened to be well formed must not name a file outside its work dir.
    rng = random.Random(FUZZ_SEED)
    for _ in range(FUZZ_CASES):
        size = rng.randrange(1, 200)
        text = bytes(rng.choice(b"0123456789\0-x=") if rng.random() < 0.7 else rng.randrange(256) for _ in range(size))
        yield text.replace(b"/", b"_")
        header = b"".join(f + b"\0" for f in (b"7", *(rng.choice([b"-", b"1", b"0", b"2147483647"]) for _ in range(7))))
        yield header + rng.randbytes(rng.randrange(0, 40)).replace(b"/", b"_")


def test_hostile_job_messages_never_crash_the_warm_driver(sanitized: Path, tmp_path: Path) -> None:
    """Overflowing counts, truncations, and random bytes (seeded) on the job pipe: the driver refuses them (exit 120,
    no stage started) or, for one that happens to be well formed, runs it; it never reads out of bounds."""
    cases = list(hostile_messages())
    assert len(cases) > 300
    for i, case in enumerate(cases):
        cwd = tmp_path / str(i)
        cwd.mkdir()
        code, reports, err = drive_warm(sanitized, cwd, case)
        assert b"Sanitizer" not in err and b"runtime error" not in err, (case[:100], err.decode())
        assert code >= 0, (case[:100], signal.Signals(-code).name)
        assert code in (0, USAGE_FAILED), (case[:100], code, err.decode())
        if code == USAGE_FAILED:
            assert reports == b"ready\n", (case[:100], reports)
        else:
            assert reports.startswith(b"ready\nrun-start\nrun-end "), (case[:100], reports)


def test_a_directory_over_a_file_already_written_is_refused(sanitized: Path, tmp_path: Path) -> None:
    """A file `a`, then a directory `a`: the work dir cannot hold both (the server's layout check refuses such a
    build before; the driver refuses it too rather than take the file for the directory)."""
    entries = b"2\0a\x00100644\0" + b"1\0x" + b"a\x0040755\x000\0"
    code, reports, err = drive_warm(sanitized, tmp_path, message([b"/bin/true"], entries))
    assert (code, reports) == (USAGE_FAILED, b"ready\n"), err.decode()
    assert b"cannot write a" in err and (tmp_path / "a").read_bytes() == b"x"


def test_a_preloaded_interpreter_that_dies_after_booting_is_reported_as_itself(tmp_path: Path) -> None:
    """The driver hands the program's argv to the pre-started interpreter after the go-ahead; if the interpreter
    is gone by then (killed, crashed), that write used to kill the driver with SIGPIPE, the run's end was never
    reported, and the job was reported as killed by SIGPIPE. It must be reported as what ended the interpreter."""
    pid_file = tmp_path / "pid"
    # Boots (closes the descriptor whose number is its last argument), then waits to be killed.
    zygote = ["/bin/sh", "-c", 'echo $$ > "$0"; eval "exec $2>&-"; exec sleep 600', str(pid_file)]
    job_r, job_w = os.pipe()
    status_r, status_w = os.pipe()
    compile_r, compile_w = os.pipe()
    argv = [str(HELPER), "wait", str(job_r), str(status_w), str(compile_w), *zygote]
    proc = subprocess.Popen(argv, cwd=tmp_path, pass_fds=[job_r, status_w, compile_w])
    for fd in (job_r, status_w, compile_w):
        os.close(fd)
    status = os.fdopen(status_r, "rb", buffering=0)
    try:
        assert status.readline() == b"ready\n"
        os.write(job_w, message([b"program"])[:-2] + b"1\0p\0")  # the interpreter's argv: "p"
        assert status.readline() == b"run-start\n"
        interpreter = int(pid_file.read_text())
        os.kill(interpreter, signal.SIGKILL)
        while Path(f"/proc/{interpreter}/stat").read_text().split(")")[-1].split()[0] != "Z":
            os.sched_yield()  # dead (its pipes closed) but not reaped: the driver reaps it
        os.write(job_w, b"g")  # the go-ahead: the driver now writes the argv to a dead interpreter
        assert status.readline() == b"run-end signal 9\n"
        assert proc.wait(60) == 0
    finally:
        os.close(job_w)
        status.close()
        os.close(compile_r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def readelf(option: str) -> str:
    return subprocess.run(["readelf", "-W", option, str(HELPER)], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) shows the build's hardening")
def test_the_shipped_helper_is_built_hardened() -> None:
    """make's helper rule: position independent (ASLR), read-only relocations bound at start, a stack protector,
    and fortified libc calls."""
    assert "DYN (" in readelf("-h")  # a PIE (static-pie or dynamic)
    assert "GNU_RELRO" in readelf("-l")
    assert "BIND_NOW" in readelf("-d") or "NOW" in readelf("-d")
    symbols = readelf("-s")
    assert "__stack_chk_fail" in symbols
    assert "_chk" in symbols.replace("__stack_chk_fail", "")
