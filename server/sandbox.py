"""Sandbox: runs each job in bubblewrap under cgroup and rlimit limits, streaming its output as it arrives."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import signal
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cgroups import Cgroups, JobCgroup
from .errors import SandboxUnavailable
from .jobs import ExecutionResult, Job, JobIO, Stream
from .languages import Language, LanguageIndex, load_languages
from .settings import Settings

logger = logging.getLogger(__name__)

SANDBOX_UID = 65534  # "nobody": inside the sandbox, and on the host when the server runs as root
BOX = "/box"  # the job's work dir inside the sandbox
PATH = "/usr/bin:/bin"  # toolchains from the host's /usr only (not /usr/local, ~/.cargo, pyenv shims ...)
READ_SIZE = 65536
CHUNK = 16384  # largest piece handed to on_output, so one flood cannot become one huge event
PROBE_TIMEOUT_MS = 10_000  # generous for a cold JVM start on a busy two-core host
EXIT_GRACE_S = 2.0
# Our own tasks in a job's cgroup (bwrap's monitor and pid-1 reaper, the stage driver), on top of max_processes.
HELPER_TASKS = 3
JOIN_FAILED = 125
INSTALL_HINT = (
    "bubblewrap must be installed (apt-get install bubblewrap) and able to create user namespaces "
    "(sysctl user.max_user_namespaces>0, kernel.unprivileged_userns_clone=1 on Debian kernels, "
    "kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu 24.04+); SANDBOX=none is for development only"
)
# Host /etc entries runtimes read: symlinks to toolchains (javac, cc for rustc's linker), the dynamic linker's
# cache, the time zone. Nothing else from /etc (no shadow, no host accounts, no resolver config).
ETC_PATHS = ("/etc/alternatives", "/etc/ld.so.cache", "/etc/localtime")
ETC_FILES = {
    "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{SANDBOX_UID}:{SANDBOX_UID}::{BOX}:/bin/sh\n",
    "group": f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\n",
    "hosts": "127.0.0.1 localhost\n::1 localhost\n",
}
SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
SIGNAL_REASONS = {"SIGXCPU": "cpu_limit", "SIGXFSZ": "file_size_limit"}

# The stage driver, the sandbox's first process after rlimits are set. It runs the compile stage (output to its
# own pipe, stdin from /dev/null) and then the program, and reports each stage's start and exact wait status on
# the status pipe: bwrap itself would fold "killed by signal N" into exit code 128+N. perl-base is Essential on
# Debian, so this needs nothing beyond the perl language itself.
DRIVER = r"""
use strict; use POSIX ();
my ($sfd, $cfd, $n) = splice(@ARGV, 0, 3);
open(my $st, '>&=', $sfd) or POSIX::_exit(120);
select((select($st), $| = 1)[0]);
sub stage {
    my ($name, $out, @cmd) = @_;
    print $st "$name-start\n";
    my $pid = fork();
    if (!defined $pid) { print $st "$name-end error\n"; return -1; }
    if ($pid == 0) {
        if (defined $out) {
            my $null = POSIX::open('/dev/null', POSIX::O_RDONLY());
            POSIX::dup2($null, 0); POSIX::dup2($out, 1); POSIX::dup2($out, 2); POSIX::close($null);
        }
        POSIX::close($_) for ($sfd, $cfd);
        exec { $cmd[0] } @cmd;
        print STDERR "cannot run $cmd[0]: $!\n";
        POSIX::_exit(127);
    }
    waitpid($pid, 0);
    my $s = $?;
    print $st "$name-end ", ($s & 127 ? "signal " . ($s & 127) : "exit " . ($s >> 8)), "\n";
    return $s;
}
if ($n > 0) { POSIX::_exit(0) if stage('compile', $cfd, splice(@ARGV, 0, $n)) != 0; }
POSIX::close($cfd);
stage('run', undef, @ARGV);
POSIX::_exit(0);
"""
# Runs as the server's user before bwrap: joins the job's cgroups, so bwrap and everything it starts is limited
# from its first instruction (no window where a fork escapes), then execs the rest of the command line.
JOIN_CGROUPS = f'while [ "$1" != -- ]; do echo $$ > "$1" || exit {JOIN_FAILED}; shift; done; shift; exec "$@"'


@dataclass(slots=True)
class Spec:
    """What to run once: a job, or a start-up probe."""

    name: str
    run: list[str]
    compile: list[str] | None = None
    source_name: str | None = None
    source: bytes = b""
    env: dict[str, str] = field(default_factory=dict)
    etc: list[str] = field(default_factory=list)
    address_space_mb: int = 0
    compile_timeout_ms: int = 10_000
    run_timeout_ms: int = 10_000
    stdin: bytes = b""


@dataclass(slots=True)
class Fds:
    """File descriptors handed to the sandbox (same numbers inside): the driver's status and compiler-output
    pipes, bwrap's own status (same pipe), and in-memory files bwrap copies in (the source, /etc files)."""

    status: int
    compile: int
    bwrap_status: int | None = None
    source: int | None = None
    etc: dict[str, int] = field(default_factory=dict)  # generated /etc files (passwd, group, hosts)


@dataclass(slots=True)
class Outcome:
    """What one run observed, before it is mapped to an ExecutionResult."""

    stdout: str = ""
    stderr: str = ""
    compile_output: str = ""
    truncated: bool = False
    reason: str | None = None  # timeout, compile_timeout, output_limit: set when the executor stopped the job
    compile_status: str | None = None  # "exit 0", "signal 9", ...
    run_status: str | None = None
    returncode: int | None = None  # of the launcher/bwrap, used only when the driver could not report
    oom_killed: bool = False
    compile_time_ms: float | None = None
    run_time_ms: float | None = None


class Sandbox:
    """The executor: bubblewrap with fresh namespaces, cgroup/rlimit limits, and one stage driver per job."""

    def __init__(self, settings: Settings, languages: dict[str, Language], *, cgroups: Cgroups | None) -> None:
        self.settings = settings
        self.backend = settings.sandbox
        self._all = languages
        self._index = LanguageIndex([])
        self._versions: dict[str, str] = {}
        self._cgroups = cgroups
        self._bwrap = shutil.which("bwrap") if self.backend == "bwrap" else None
        self._bwrap_version: str | None = None
        self._bwrap_help = ""
        # As root, drop to an unprivileged host uid before bwrap: the job's processes are then "nobody" on the host
        # too (not root in a user namespace), and RLIMIT_NPROC is not waived for them as it is for root.
        self._setpriv = shutil.which("setpriv") if os.geteuid() == 0 else None
        self._roots = _root_links()
        self._cleanups: set[asyncio.Task[None]] = set()

    # -- start-up --------------------------------------------------------------------------------------------

    @classmethod
    async def create(
        cls, settings: Settings, *, cgroups: bool = True, languages: Collection[str] | None = None
    ) -> Sandbox:
        """Check the sandbox works on this host and find the toolchains that work inside it.

        `cgroups=False` forces the rlimit fallbacks and `languages` limits probing to some languages (tests).
        Raises SandboxUnavailable with a one-line fix when jobs cannot run safely here.
        """
        defs = load_languages()
        if languages is not None:
            defs = {name: lang for name, lang in defs.items() if name in languages}
        for tool in ("prlimit", "perl"):
            if shutil.which(tool, path=PATH) is None:
                raise SandboxUnavailable(f"{tool} not found in {PATH}: install util-linux and perl-base")
        groups = None
        if cgroups:
            max_tasks = settings.max_processes + HELPER_TASKS
            groups = await asyncio.to_thread(
                Cgroups.setup, memory_bytes=settings.memory_limit_mb << 20, max_tasks=max_tasks
            )
        sandbox = cls(settings, defs, cgroups=groups)
        try:
            await sandbox._start()
        except BaseException:
            await sandbox.close()
            raise
        return sandbox

    async def _start(self) -> None:
        if self.backend == "none":
            logger.warning(
                "SANDBOX=none: jobs run WITHOUT bubblewrap, as processes on this host with rlimits only. "
                "Never use this outside development."
            )
        else:
            await self._check_bwrap()
        if self._cgroups is not None:
            try:
                probe = await self._execute(Spec(name="probe-cgroups", run=["true"]), None)
                problem = probe.stderr.strip() if probe.returncode == JOIN_FAILED else None
            except OSError as exc:
                problem = str(exc)
            if problem is not None:
                logger.warning("cannot put jobs into cgroups (%s); using rlimits only", problem)
                self._cgroups.close()
                self._cgroups = None
        if os.geteuid() == 0 and self._setpriv is None:
            logger.warning("setpriv not found: sandboxed processes run as root in a user namespace")
        langs = list(self._all.values())
        found = await asyncio.gather(*(self._probe(lang) for lang in langs))
        self._versions = {lang.name: version for lang, version in zip(langs, found, strict=True) if version}
        self._index = LanguageIndex(lang for lang in self._all.values() if lang.name in self._versions)
        if not self._versions:
            raise SandboxUnavailable("no language toolchain works inside the sandbox; install python3 (see README)")
        logger.info(
            "sandbox %s ready: %s", self.backend, ", ".join(f"{n} {v}" for n, v in sorted(self._versions.items()))
        )

    async def _check_bwrap(self) -> None:
        if self._bwrap is None:
            raise SandboxUnavailable("bwrap not found on PATH: " + INSTALL_HINT)
        version = await _capture([self._bwrap, "--version"])
        self._bwrap_version = version[1].strip().removeprefix("bubblewrap ") or None
        self._bwrap_help = (await _capture([self._bwrap, "--help"]))[1]
        argv = [self._bwrap, "--unshare-all", "--unshare-user", "--ro-bind", "/usr", "/usr", *self._roots, "true"]
        code, out = await _capture(self._privdrop() + argv)
        if code == 0:
            return
        detail = out.strip().splitlines()[-1] if out.strip() else f"exit {code}"
        if self._setpriv is not None and (await _capture(argv))[0] == 0:
            logger.warning(
                "bubblewrap works only for root here (%s): sandboxed processes run as host root in a user namespace "
                "and RLIMIT_NPROC does not bind them; allow unprivileged user namespaces to run them as nobody",
                detail,
            )
            self._setpriv = None
            return
        raise SandboxUnavailable(f"bubblewrap cannot create a sandbox here ({detail}): {INSTALL_HINT}")

    async def _probe(self, lang: Language) -> str | None:
        """Run the version command inside the sandbox; the language is offered only if it works."""
        run = lang.version_argv(heap_mb=self.settings.memory_limit_mb // 2)
        spec = self._spec(lang, f"probe-{lang.name}", run, None, PROBE_TIMEOUT_MS)
        spec.source_name = None
        out = await self._execute(spec, None)
        text = out.stdout + out.stderr
        match = re.search(r"\d+(?:\.\d+)+", text)
        if out.run_status != "exit 0" or match is None:
            logger.info("language %s unavailable: %s", lang.name, (text.strip() or out.reason or "no output")[:200])
            return None
        return match.group(0)

    # -- the executor ----------------------------------------------------------------------------------------

    async def __call__(self, job: Job, io: JobIO) -> ExecutionResult:
        """Run one job to its end. On cancellation the process tree, cgroup and work dir are gone before re-raise."""
        lang = self._index.get(job.language)
        if lang is None:
            return ExecutionResult(reason="unsupported_language", stderr=f"Unknown language {job.language!r}.\n")
        if any("\0" in arg for arg in job.args):
            return ExecutionResult(reason="invalid_args", stderr="Arguments cannot contain NUL characters.\n")
        heap_mb = self.settings.memory_limit_mb // 2
        # The id names the job's cgroup and (SANDBOX=none) its temp dir: only use it when it is a safe file name.
        name = job.id if SAFE_NAME.fullmatch(job.id) else f"job-{secrets.token_hex(8)}"
        spec = self._spec(lang, name, lang.run_argv(job.args, heap_mb=heap_mb), job.code, job.timeout_ms)
        spec.compile = lang.compile_argv(heap_mb=heap_mb)
        spec.stdin = job.stdin.encode()
        out = await self._execute(spec, io)
        result = _result(lang, out)
        if result.reason == "internal_error":
            logger.error("job %s: sandbox failed (exit %s): %s", job.id, out.returncode, out.stderr[-500:])
        return result

    def _spec(self, lang: Language, name: str, run: list[str], code: str | None, timeout_ms: int) -> Spec:
        return Spec(
            name=name,
            run=run,
            source_name=lang.source,
            source=(code or "").encode(),
            env=dict(lang.env),
            etc=lang.etc_paths(),
            address_space_mb=self.settings.memory_limit_mb + lang.address_space_headroom_mb,
            compile_timeout_ms=self.settings.compile_timeout_ms,
            run_timeout_ms=timeout_ms,
        )

    async def _execute(self, spec: Spec, io: JobIO | None) -> Outcome:
        run = _Run(self, spec, io)
        try:
            return await run.start_and_wait()
        finally:
            # Kill first (synchronously), then clean up in a task that a second cancellation cannot interrupt;
            # close() waits for any such task still running.
            run.kill()
            cleanup = asyncio.ensure_future(run.cleanup())
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            await asyncio.shield(cleanup)

    # -- command line ----------------------------------------------------------------------------------------

    def _privdrop(self) -> list[str]:
        if self._setpriv is None:
            return []
        return [self._setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups", "--"]

    def argv(self, spec: Spec, fds: Fds, cgroup: JobCgroup | None) -> list[str]:
        """launcher [join cgroups] -> setpriv -> bwrap -> prlimit -> perl driver -> compile, run."""
        compile_cmd = spec.compile or []
        cmd = [*self._rlimits(spec), "perl", "-e", DRIVER, str(fds.status), str(fds.compile), str(len(compile_cmd))]
        cmd += [*compile_cmd, *spec.run]
        if self.backend == "bwrap":
            assert self._bwrap is not None
            cmd = [self._bwrap, *self._bwrap_args(spec, fds), "--", *cmd]
        cmd = self._privdrop() + cmd
        if cgroup is not None:
            cmd = ["/bin/sh", "-c", JOIN_CGROUPS, "conveyor-join", *cgroup.procs_files, "--", *cmd]
        return cmd

    def _rlimits(self, spec: Spec) -> list[str]:
        # Set by prlimit inside the sandbox, after bwrap has built it and before the driver starts: the limits bind
        # the driver and everything it starts, not bwrap's own set-up, and the job's user namespace already exists,
        # so RLIMIT_NPROC counts this job's tasks (Linux >= 5.14 counts per user namespace) rather than all of uid
        # 65534 on the host.
        s = self.settings
        args = [
            "prlimit",
            f"--cpu={s.cpu_time_limit_s}:{s.cpu_time_limit_s + 1}",  # SIGXCPU first, SIGKILL a second later
            f"--fsize={s.max_file_size_mb << 20}",
            f"--nofile={s.max_open_files}",
            "--core=0",  # a core_pattern pipe would run a host helper as root
        ]
        if self._enforcer("pids") is None:
            args.append(f"--nproc={s.max_processes + HELPER_TASKS}")
        if self._enforcer("memory") is None:
            args.append(f"--as={spec.address_space_mb << 20}")
        return [*args, "--"]

    def _bwrap_args(self, spec: Spec, fds: Fds) -> list[str]:
        sized = ["--size", str(self.settings.workdir_size_mb << 20)] if "--size" in self._bwrap_help else []
        args = ["--unshare-all", "--unshare-user", "--unshare-cgroup", "--die-with-parent", "--new-session"]
        if "--disable-userns" in self._bwrap_help:
            args.append("--disable-userns")  # no nested user namespaces: a large kernel attack surface
        args += ["--cap-drop", "ALL", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox"]
        args += ["--ro-bind", "/usr", "/usr", *self._roots, "--proc", "/proc", "--dev", "/dev"]
        for path in ("/dev/shm", "/tmp", BOX):
            args += [*sized, "--tmpfs", path]
        for path in (*ETC_PATHS, *spec.etc):
            args += ["--ro-bind-try", path, path]
        for name, fd in fds.etc.items():
            args += ["--ro-bind-data", str(fd), f"/etc/{name}"]
        if fds.source is not None and spec.source_name:
            args += ["--file", str(fds.source), f"{BOX}/{spec.source_name}"]
        if fds.bwrap_status is not None:
            args += ["--json-status-fd", str(fds.bwrap_status)]
        # bwrap's own tmpfs for / and /dev is owned by the sandbox user: make them read-only, so the only
        # writable places are the size-capped /box, /tmp and /dev/shm.
        return [*args, "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", BOX]

    def env(self, spec: Spec, workdir: str | None) -> dict[str, str]:
        home = workdir or BOX
        tmp = f"{workdir}/tmp" if workdir else "/tmp"
        return {"PATH": PATH, "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8", "USER": "sandbox", **spec.env}

    # -- what the API shows ----------------------------------------------------------------------------------

    def _enforcer(self, controller: str) -> str | None:
        return self._cgroups.enforced_by(controller) if self._cgroups is not None else None

    def runtimes(self) -> list[dict[str, Any]]:
        """The languages offered: canonical name, detected version, aliases."""
        return [
            {"language": lang.name, "version": self._versions[lang.name], "aliases": list(lang.aliases)}
            for lang in self._index
        ]

    def resolve(self, name: str) -> str | None:
        """Canonical name for a language name or alias, or None when unknown or unavailable here."""
        return self._index.resolve(name)

    def describe(self) -> dict[str, Any]:
        """The backend and every limit with how this host enforces it (for GET /health)."""
        s = self.settings
        host_uid = SANDBOX_UID if self._setpriv else os.geteuid()
        memory: dict[str, Any] = {"limitMb": s.memory_limit_mb, "enforcedBy": self._enforcer("memory") or "RLIMIT_AS"}
        if memory["enforcedBy"] == "RLIMIT_AS":
            memory["note"] = "address space; java and javascript get headroom and cap their heap themselves"
        processes = {"limit": s.max_processes, "counts": "tasks (threads too)", "enforcedBy": self._enforcer("pids")}
        if processes["enforcedBy"] is None:
            scope = "per job user namespace" if self.backend == "bwrap" else f"all of uid {host_uid} on the host"
            processes["enforcedBy"] = f"RLIMIT_NPROC ({scope})" if host_uid else "none (root is exempt)"
        workdir = "tmpfs size" if "--size" in self._bwrap_help else "memory only (bwrap without --size)"
        if self.backend == "none":
            workdir = "not capped (SANDBOX=none: a host temp dir; RLIMIT_FSIZE per file)"
        return {
            "backend": self.backend,
            "bwrapVersion": self._bwrap_version,
            "hostUid": host_uid,
            "sandboxUid": SANDBOX_UID if self.backend == "bwrap" else host_uid,
            "network": "none (empty network namespace)" if self.backend == "bwrap" else "host (SANDBOX=none)",
            "limits": {
                "memory": memory,
                "processes": processes,
                "cpu": {"limitS": s.cpu_time_limit_s, "enforcedBy": "RLIMIT_CPU"},
                "fileSize": {"limitMb": s.max_file_size_mb, "enforcedBy": "RLIMIT_FSIZE"},
                "openFiles": {"limit": s.max_open_files, "enforcedBy": "RLIMIT_NOFILE"},
                "output": {"limitBytes": s.max_output_bytes, "enforcedBy": "executor kills the job past the cap"},
                "wallTime": {
                    "defaultMs": s.job_timeout_ms,
                    "compileMs": s.compile_timeout_ms,
                    "enforcedBy": "executor kills the process tree",
                },
                "workdir": {"limitMb": s.workdir_size_mb, "enforcedBy": workdir},
            },
        }

    async def close(self) -> None:
        """Finish cleanups still running and remove this server's cgroups."""
        loop = asyncio.get_running_loop()
        pending = [t for t in self._cleanups if t.get_loop() is loop]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._cgroups is not None:
            self._cgroups.close()


def _root_links() -> list[str]:
    """/bin, /lib* and /sbin as on the host: symlinks into /usr (merged /usr), else read-only binds."""
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/", name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


async def _capture(argv: list[str]) -> tuple[int, str]:
    """Run a short host command; exit code and combined output."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        return 127, str(exc)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def _program_status(out: Outcome) -> str | None:
    """The program's wait status ("exit N" / "signal N"): the driver's report, else what bwrap's exit implies."""
    if out.run_status is not None or out.reason is not None or out.compile_status not in (None, "exit 0"):
        return out.run_status
    code = out.returncode
    if code is not None and code < 0:
        return f"signal {-code}"
    if code is not None and 128 < code <= 128 + 64:
        # The driver itself was killed (say the program ran kill -9 -1): bwrap reports that as 128+N.
        return f"signal {code - 128}"
    return None


def _result(lang: Language, out: Outcome) -> ExecutionResult:
    """Map what the run observed to the result the queue understands."""
    result = ExecutionResult(
        stdout=out.stdout,
        stderr=out.stderr,
        truncated=out.truncated,
        compile_output=out.compile_output if lang.compile is not None else None,
        compile_time_ms=out.compile_time_ms,
        run_time_ms=out.run_time_ms,
    )
    kind, _, number = (_program_status(out) or "").partition(" ")
    if kind == "exit":
        result.exit_code = int(number)
    elif kind == "signal":
        result.signal = _signal_name(int(number))
    elif out.reason is not None:
        result.signal = "SIGKILL"  # we stopped it
    elif out.compile_status not in (None, "exit 0"):
        result.reason = "compile_error"
        if out.compile_status and out.compile_status.startswith("signal"):
            result.compile_output = f"{result.compile_output or ''}\n[compiler {out.compile_status}]\n"
    else:
        result.reason = "internal_error"
    if out.reason is not None:  # timeout, compile_timeout, output_limit (even if the program exited meanwhile)
        result.reason = out.reason
    failed = result.exit_code not in (None, 0) or result.signal is not None
    if out.oom_killed or (result.reason is None and failed and lang.ran_out_of_memory(out.stderr)):
        result.reason = "memory_limit"
    elif result.reason is None and result.signal in SIGNAL_REASONS:
        result.reason = SIGNAL_REASONS[result.signal]
    return result


class _Run:
    """One sandboxed process tree: spawn it, stream its output, enforce the stage deadlines, tear it down."""

    def __init__(self, sandbox: Sandbox, spec: Spec, io: JobIO | None) -> None:
        self._sandbox = sandbox
        self._spec = spec
        self._io = io
        self._out = Outcome()
        self._cap = sandbox.settings.max_output_bytes
        self._used = 0
        self._parts: dict[Stream, list[str]] = {"stdout": [], "stderr": []}
        self._compile_output = bytearray()
        self._proc: asyncio.subprocess.Process | None = None
        self._cgroup: JobCgroup | None = None
        self._workdir: str | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self._readers: list[asyncio.Future[Any]] = []  # output pumps and the process exit
        self._feeder: asyncio.Task[None] | None = None
        self._child_pid: int | None = None  # bwrap's pid 1, from --json-status-fd
        self._raw_fds: list[int] = []  # pipe read ends not yet handed to a transport
        self._draining = False

    async def start_and_wait(self) -> Outcome:
        status_fd, compile_fd = await self._spawn()
        proc = self._proc
        assert proc is not None
        status = await self._reader(status_fd)
        self._readers.append(asyncio.ensure_future(self._collect(await self._reader(compile_fd))))
        self._feeder = asyncio.create_task(self._feed())
        await self._supervise(status)
        # The program has ended, failed to compile, or is being stopped. Left alone, the driver's exit makes
        # bwrap's monitor exit and --die-with-parent takes pid 1 and every background process with it; killing pid
        # 1 now does the same without trusting the driver's report. Output already written stays readable.
        self.kill()
        await self._settle()
        out = self._out
        out.returncode = proc.returncode
        out.stdout, out.stderr = "".join(self._parts["stdout"]), "".join(self._parts["stderr"])
        out.compile_output = self._compile_output.decode(errors="replace")
        out.oom_killed = self._cgroup is not None and self._cgroup.oom_killed()
        return out

    async def _settle(self) -> None:
        """Wait until the process has exited and its pipes are drained, killing harder if that does not happen.

        Once bwrap's pid 1 is gone the kernel has killed every process of the job's pid namespace, so the pipes
        close at once; only SANDBOX=none (without cgroups) can leave stragglers holding them.
        """
        for _ in range(2):
            _, pending = await asyncio.wait(self._readers, timeout=EXIT_GRACE_S)
            if not pending:
                return
            logger.warning("%s: still running or holding its pipes after it was ended; killing", self._spec.name)
            self._kill_all()
        logger.error("%s: process tree did not go away", self._spec.name)

    async def _spawn(self) -> tuple[int, int]:
        """Start the launcher and the output pumps; returns the read ends of the status and compiler pipes."""
        sandbox, spec = self._sandbox, self._spec
        if sandbox._cgroups is not None:
            self._cgroup = sandbox._cgroups.create(spec.name)
        status_r, status_w = os.pipe()
        compile_r, compile_w = os.pipe()
        fds = Fds(status=_above_stdio(status_w), compile=_above_stdio(compile_w))
        ours, theirs = [status_r, compile_r], [fds.status, fds.compile]
        try:
            if sandbox.backend == "bwrap":
                # bwrap reports its pid 1 on a second fd of the status pipe (it closes that fd inside the sandbox).
                fds.bwrap_status = _above_stdio(os.dup(fds.status))
                theirs.append(fds.bwrap_status)
                if spec.source_name:
                    fds.source = _above_stdio(_memfd(spec.source))
                    theirs.append(fds.source)
                for name, text in ETC_FILES.items():
                    fds.etc[name] = _above_stdio(_memfd(text.encode()))
                    theirs.append(fds.etc[name])
            else:
                self._workdir = _workdir(spec, chown=sandbox._setpriv is not None)
            self._proc = await asyncio.create_subprocess_exec(
                *sandbox.argv(spec, fds, self._cgroup),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=theirs,
                start_new_session=True,
                env=sandbox.env(spec, self._workdir),
                cwd=self._workdir or "/",
            )
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        # No await since the spawn: from here on cleanup() always has pumps to drain the pipes to their end.
        proc = self._proc
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.ensure_future(self._pump(proc.stdout, "stdout")),
            asyncio.ensure_future(self._pump(proc.stderr, "stderr")),
            asyncio.ensure_future(proc.wait()),
        ]
        self._raw_fds = ours
        return status_r, compile_r

    async def _reader(self, fd: int) -> asyncio.StreamReader:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_SIZE, loop=loop)
        self._raw_fds.remove(fd)
        pipe = os.fdopen(fd, "rb", buffering=0)  # owns the fd now; closed with its transport
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
        self._transports.append(transport)
        return reader

    async def _supervise(self, status: asyncio.StreamReader) -> None:
        """Follow the driver's stage reports and kill the tree when a stage outlives its deadline."""
        loop = asyncio.get_running_loop()
        # The program runs as the driver's uid; when the server is not root (so the pipe is the program's host uid
        # too) it can reopen the status pipe through /proc/<driver>/fd. Only the expected reports count, in order,
        # so forged lines cannot extend its deadline; a forged run-end only ends its own job early.
        expected = ["run-start", "run-end"]
        if self._spec.compile:
            expected[:0] = ["compile-start", "compile-end"]
        stage = expected[0].partition("-")[0]
        started = loop.time()
        deadline = started + self._limit_s(stage)
        while expected:
            try:
                line = await asyncio.wait_for(status.readline(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                self._record_time(stage, loop.time() - started)
                self.stop("compile_timeout" if stage == "compile" else "timeout")
                return
            except ValueError:
                continue  # an overlong (forged) line
            if not line:
                return
            if line.startswith(b"{") and self._child_pid is None:
                # bwrap writes this before its pid 1 runs anything, so the first one cannot be forged.
                match = re.search(rb'"child-pid": *(\d+)', line)
                self._child_pid = int(match.group(1)) if match else None
                continue
            event, _, detail = line.decode(errors="replace").strip().partition(" ")
            if event != expected[0]:
                continue
            expected.pop(0)
            now = loop.time()
            stage, _, phase = event.partition("-")
            if phase == "start":
                started, deadline = now, now + self._limit_s(stage)
                continue
            self._record_time(stage, now - started)
            if stage == "run":
                self._out.run_status = detail
                return
            self._out.compile_status = detail
            if detail != "exit 0":
                return
            stage, started, deadline = "run", now, now + self._limit_s("run")

    def _limit_s(self, stage: str) -> float:
        return (self._spec.compile_timeout_ms if stage == "compile" else self._spec.run_timeout_ms) / 1000.0

    def _record_time(self, stage: str, seconds: float) -> None:
        if stage == "compile":
            self._out.compile_time_ms = seconds * 1000.0
        else:
            self._out.run_time_ms = seconds * 1000.0

    async def _pump(self, reader: asyncio.StreamReader, stream: Stream) -> None:
        """Forward one output pipe as it arrives, decoded incrementally, within the shared output cap."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        on_output = self._io.on_output if self._io is not None else None
        parts = self._parts[stream]
        while data := await reader.read(READ_SIZE):
            if self._out.truncated or self._draining:
                continue  # read until the killed tree closes the pipe
            room = self._cap - self._used
            if len(data) > room:
                data = data[:room]
                self._out.truncated = True
            self._used += len(data)
            for start in range(0, len(data), CHUNK):
                text = decoder.decode(data[start : start + CHUNK])
                if text:
                    parts.append(text)
                    if on_output is not None:
                        on_output(stream, text)
            if self._out.truncated:
                self.stop("output_limit")
        tail = "" if self._out.truncated or self._draining else decoder.decode(b"", final=True)
        if tail:
            parts.append(tail)
            if on_output is not None:
                on_output(stream, tail)

    async def _collect(self, reader: asyncio.StreamReader) -> None:
        """Compiler output: kept up to the output cap, the rest read and dropped so the compiler never blocks."""
        while data := await reader.read(READ_SIZE):
            self._compile_output += data[: max(0, self._cap - len(self._compile_output))]

    async def _feed(self) -> None:
        """Write job.stdin, then live input for interactive jobs until None; then close the program's stdin."""
        assert self._proc is not None and self._proc.stdin is not None
        writer = self._proc.stdin
        try:
            if self._spec.stdin:
                writer.write(self._spec.stdin)
                await writer.drain()
            live = self._io.stdin if self._io is not None else None
            while live is not None and (item := await live.get()) is not None:
                writer.write(item)
                await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the program exited or closed its stdin
        finally:
            writer.close()

    def stop(self, reason: str) -> None:
        """End the job early for `reason`; the first reason wins."""
        if self._out.reason is None:
            self._out.reason = reason
        self.kill()

    def kill(self) -> None:
        """End the whole tree now: SIGKILL to bwrap's pid 1 ends the job's pid namespace at once (the kernel kills
        every process in it and no fork can race that), and bwrap's monitor then exits. The pid cannot have been
        reused: the monitor, its parent, is still alive. Once the monitor has exited on its own, pid 1 is already
        gone too (--die-with-parent).
        """
        proc = self._proc
        if proc is None:
            return
        if self._sandbox.backend == "none":
            self._kill_all()
        elif proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if self._child_pid is not None:
                    os.kill(self._child_pid, signal.SIGKILL)
                else:  # killed while bwrap is still setting up
                    os.killpg(proc.pid, signal.SIGKILL)

    def _kill_all(self) -> None:
        """Last resort, and SANDBOX=none: the launcher's process group and everything in the job's cgroups."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        if self._cgroup is not None:
            self._cgroup.kill()

    async def cleanup(self) -> None:
        """After kill(): reap, close pipes, remove the cgroup and the work dir."""
        self._draining = True  # pumps keep reading to EOF (a paused pipe never reports it) but keep nothing
        if self._feeder is not None:
            self._feeder.cancel()
            await asyncio.gather(self._feeder, return_exceptions=True)
        if self._readers:
            await self._settle()
        for future in self._readers:
            future.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for transport in self._transports:
            transport.close()
        for fd in self._raw_fds:
            os.close(fd)
        if self._cgroup is not None:
            await self._cgroup.remove()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


def _above_stdio(fd: int) -> int:
    """Passed fds must not be 0-2, which the child's stdio pipes replace (a server started with stdio closed)."""
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved


def _memfd(data: bytes) -> int:
    """An in-memory file for bwrap to copy into the sandbox: nothing on the host's disk to clean up."""
    fd = os.memfd_create("conveyor")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _workdir(spec: Spec, *, chown: bool) -> str:
    """SANDBOX=none: a host temp dir with the source and a tmp/ dir, owned by the uid the job runs as."""
    path = tempfile.mkdtemp(prefix=f"conveyor-{spec.name}-")
    os.mkdir(f"{path}/tmp")
    if spec.source_name:
        Path(path, spec.source_name).write_bytes(spec.source)
    if chown:
        for item in (path, f"{path}/tmp", *([f"{path}/{spec.source_name}"] if spec.source_name else [])):
            os.chown(item, SANDBOX_UID, SANDBOX_UID)
    return path
