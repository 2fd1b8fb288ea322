"""Command line: what this host starts a run with (Host, fixed at start-up) and the launcher -> bwrap -> driver
command line, environment and warm job message made from it and a run spec."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..settings import Settings
from . import driver
from .artifact import SOURCE_MODE
from .cgroups import JobCgroup
from .spawn import Fds
from .spec import BOX, PRELOADS, SANDBOX_UID, RunSpec
from .uids import HostUids

PATH = "/usr/bin:/bin"  # toolchains from the host's /usr only (not /usr/local, ~/.cargo, pyenv shims ...)
# Our own tasks in a job's cgroup (bwrap's monitor and pid-1 reaper, the stage driver), on top of max_processes.
HELPER_TASKS = 3
JOIN_FAILED = 125
# Host /etc entries runtimes read: symlinks to toolchains (javac, cc for rustc's linker), the dynamic linker's
# cache, the time zone. Nothing else from /etc (no shadow, no host accounts, no resolver config).
ETC_PATHS = ("/etc/alternatives", "/etc/ld.so.cache", "/etc/localtime")
# Runs as the server's user before bwrap: joins the job's cgroups, so bwrap and everything it starts is limited
# from its first instruction (no window where a fork escapes), then execs the rest of the command line.
JOIN_CGROUPS = f'while [ "$1" != -- ]; do echo $$ > "$1" || exit {JOIN_FAILED}; shift; done; shift; exec "$@"'
HELPER_IN_BOX = "/.conveyor-run"  # where the sandbox sees the C helper (read-only)
# The pre-started interpreters' code (spec.PRELOADS). `{preload}` stands for its text (python3 -c), `{preload_file}`
# for where the sandbox sees it: bound read-only into every sandbox of the language, cold ones too (the same root
# either way), for node's --require (node then runs the program by its own main-module path, which -e would replace
# by its eval path) and java's boot class path (a directory: java's is a compiled class).
PRELOAD_TEXTS = {interpreter: path.read_text() for interpreter, path in PRELOADS.items() if path.is_file()}
PRELOAD_TEXT, PRELOAD_FILE = "{preload}", "{preload_file}"


@dataclass(frozen=True, slots=True)
class Host:
    """How this host starts a sandbox, as the sandbox's start-up checks found it."""

    settings: Settings
    backend: str  # "bwrap", or "none" (development only)
    uids: HostUids
    bwrap: str | None = None
    bwrap_help: str = ""  # which options this bwrap has (--size, --disable-userns)
    helper: str | None = None  # the C launch/driver helper; None: sh, setpriv, perl and prlimit
    setpriv: str | None = None
    roots: tuple[str, ...] = ()  # /bin, /lib* and /sbin as on the host
    drops_privileges: bool = False  # jobs run as SANDBOX_UID (or their own uid) on the host too
    seccomp_bpf: bytes | None = None  # the syscall filter for bwrap --seccomp (SANDBOX=none runs without one)
    syscalls: Mapping[str, int] = dataclasses.field(default_factory=dict)  # native numbers of prctl and keyctl
    pids_enforced: bool = False  # by a pids cgroup (else RLIMIT_NPROC)
    memory_enforced: bool = False  # by a memory cgroup (else RLIMIT_AS)
    # Where each pre-started interpreter's code is bound from, when not spec.PRELOADS (hostpaths.reachable_tree).
    preloads: Mapping[str, str] = dataclasses.field(default_factory=dict)


def argv(host: Host, spec: RunSpec, fds: Fds, cgroup: JobCgroup | None) -> list[str]:
    """helper launch (cgroups, uid, keyring) -> bwrap -> helper drive (rlimits, not dumpable) -> compile, run."""
    if host.helper is None:
        return _perl_argv(host, spec, fds, cgroup)
    inner = host.helper if host.backend == "none" else HELPER_IN_BOX
    cmd = [inner, "drive", str(fds.status), str(fds.compile), *drive_args(host, spec)]
    if host.backend == "bwrap":
        assert host.bwrap is not None
        cmd = [host.bwrap, *bwrap_args(host, spec, fds), "--", *cmd]
    return [*_launch(host, cgroup), "--", *cmd]


def warm_argv(host: Host, spec: RunSpec, fds: Fds, cgroup: JobCgroup | None, job_fd: int, *, nice: int) -> list[str]:
    """argv() for a warm sandbox: its driver waits for the job message on job_fd."""
    assert host.bwrap is not None and spec.language is not None
    wait = [HELPER_IN_BOX, "wait", str(job_fd), str(fds.status), str(fds.compile)]
    if spec.preload:
        text, inside = PRELOAD_TEXTS.get(spec.preload[0], ""), preload_file(host, spec)[1]
        wait += [text if part == PRELOAD_TEXT else part.replace(PRELOAD_FILE, inside) for part in spec.preload]
    return [*_launch(host, cgroup, nice=nice), "--", host.bwrap, *bwrap_args(host, spec, fds), "--", *wait]


def job_message(host: Host, spec: RunSpec, *, warm_env: Mapping[str, str] | None, preloaded: bool) -> bytes:
    """What a warm sandbox's driver reads: the spec's driver arguments, environment, directories and files (a
    build's as well as a job's own)."""
    env, preload = env_of(spec, None), None
    # The pre-started interpreter runs the job only when the job is what it was started for: its command without its
    # code begins the job's run command (python3; node with the heap flag of the server's memory limit, and main.js),
    # no compile stage, and the environment it booted with (python reads PYTHON* and the locale at start-up, node
    # NODE_OPTIONS). It is sent what follows the interpreter's name. A pre-started JVM stands for java's run command's
    # shell (spec.preload_runs: the same script, so the same heap flag).
    if preloaded and spec.preload and not spec.compile and env == warm_env:
        started = spec.preload_runs or without_code(spec.preload)
        if spec.run[: len(started)] == started:
            preload = list(spec.run[1:])
    return driver.job_message(drive_args(host, spec), env, spec.files, preload, dirs=spec.dirs)


def without_code(preload: tuple[str, ...]) -> tuple[str, ...]:
    """A pre-started interpreter's command without its code: the placeholder and the option before it."""
    at = next(i for i, part in enumerate(preload) if part in (PRELOAD_TEXT, PRELOAD_FILE))
    return preload[: at - 1] + preload[at + 1 :]


def preload_file(host: Host, spec: RunSpec) -> tuple[str, str]:
    """The pre-started interpreter's code as a file: its host path (a copy the jobs' uid reaches, where the checkout is
    closed to it: Host.preloads) and where the sandbox sees it."""
    assert spec.preload is not None
    path = PRELOADS[spec.preload[0]]
    return host.preloads.get(spec.preload[0], str(path)), f"/.conveyor-preload{path.suffix}"


def env_of(spec: RunSpec, workdir: str | None) -> dict[str, str]:
    """The environment the launcher (and so the program) starts with."""
    home = workdir or BOX
    tmp = f"{workdir}/tmp" if workdir else "/tmp"
    return {"PATH": PATH, "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8", "USER": "sandbox", **spec.env}


def privdrop(setpriv: str | None, uid: int) -> list[str]:
    """setpriv's command line to run as `uid` (the perl path's privilege drop), or nothing without setpriv."""
    if setpriv is None:
        return []
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def _host_uid(host: Host) -> int:
    """The host uid of the next sandbox (when the server is root): bwrap's each their own, mapped to SANDBOX_UID
    inside; SANDBOX=none's all SANDBOX_UID (their work dirs are made for it, and nothing else is apart)."""
    return host.uids.take() if host.backend == "bwrap" else SANDBOX_UID


def _launch(host: Host, cgroup: JobCgroup | None, *, nice: int = 0) -> list[str]:
    assert host.helper is not None
    launch = [host.helper, "launch"]
    for procs in cgroup.procs_files if cgroup is not None else []:
        launch += ["--cgroup", procs]
    if nice:
        launch += ["--nice", str(nice)]
    # Not only with setpriv: the helper drops the uid itself, and refuses to keep root unless told so by name.
    if host.drops_privileges:
        launch += ["--uid", str(_host_uid(host))]
    elif os.geteuid() == 0:
        launch.append("--stay-root")
    return launch


def drive_args(host: Host, spec: RunSpec) -> list[str]:
    """The C driver's arguments after its pipes: the rlimits, the compile command's length, compile, run."""
    limits = _limits(host, spec)
    args = [str(limits.get(k, "-")) for k in ("cpu", "fsize", "nofile", "nproc", "as")]
    return [*args, str(len(spec.compile or ())), *(spec.compile or ()), *spec.run]


def _perl_argv(host: Host, spec: RunSpec, fds: Fds, cgroup: JobCgroup | None) -> list[str]:
    """launcher [join cgroups] -> setpriv -> new keyring -> bwrap -> prlimit -> perl driver -> compile, run."""
    prctl, keyctl = host.syscalls["prctl"], host.syscalls["keyctl"]
    stages = driver.command(fds.status, fds.compile, prctl, list(spec.compile or ()), list(spec.run))
    cmd = [*_rlimits(host, spec), *stages]
    if host.backend == "bwrap":
        assert host.bwrap is not None
        cmd = [host.bwrap, *bwrap_args(host, spec, fds), "--", *cmd]
    # After setpriv: the keyring then belongs to (and counts against the key quota of) the job's host uid.
    uid = _host_uid(host) if host.setpriv is not None else SANDBOX_UID
    cmd = privdrop(host.setpriv, uid) + driver.new_keyring(keyctl, cmd)
    if cgroup is not None:
        cmd = ["/bin/sh", "-c", JOIN_CGROUPS, "conveyor-join", *cgroup.procs_files, "--", *cmd]
    return cmd


def _limits(host: Host, spec: RunSpec) -> dict[str, int]:
    # Set inside the sandbox, after bwrap has built it and before the driver starts: the limits bind the driver
    # and everything it starts, not bwrap's own set-up, and the job's user namespace already exists, so
    # RLIMIT_NPROC counts this job's tasks (Linux >= 5.14 counts per user namespace) rather than all of uid
    # 65534 on the host. RLIMIT_CORE is always 0 (a core_pattern pipe would run a host helper as root).
    s = host.settings
    limits = {
        "cpu": max(1, math.ceil(spec.cpu_time_ms / 1000)),  # whole seconds; SIGXCPU, SIGKILL a second later
        "fsize": s.max_file_size_mb << 20,
        "nofile": s.max_open_files,
    }
    if not host.pids_enforced:
        limits["nproc"] = s.max_processes + HELPER_TASKS
    if not host.memory_enforced:
        limits["as"] = spec.address_space_mb << 20
    return limits


def _rlimits(host: Host, spec: RunSpec) -> list[str]:
    """prlimit's command line for _limits() (the perl path)."""
    limits = _limits(host, spec)
    cpu_s = limits.pop("cpu")
    args = ["prlimit", f"--cpu={cpu_s}:{cpu_s + 1}", "--core=0"]
    return [*args, *(f"--{name}={value}" for name, value in limits.items()), "--"]


def bwrap_args(host: Host, spec: RunSpec, fds: Fds) -> list[str]:
    """bwrap's options: fresh namespaces, no capabilities, a read-only root with size-capped /box, /tmp and /dev/shm,
    the job's files, and the syscall filter."""
    sized = ["--size", str(host.settings.workdir_size_mb << 20)] if "--size" in host.bwrap_help else []
    args = ["--unshare-all", "--unshare-user", "--unshare-cgroup", "--die-with-parent", "--new-session"]
    if "--disable-userns" in host.bwrap_help:
        args.append("--disable-userns")  # no nested user namespaces: a large kernel attack surface
    args += ["--cap-drop", "ALL", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox"]
    args += ["--ro-bind", "/usr", "/usr", *host.roots, "--proc", "/proc", "--dev", "/dev"]
    for path in ("/dev/shm", "/tmp", BOX):
        args += [*sized, "--tmpfs", path]
    for path in (*ETC_PATHS, *spec.etc):
        args += ["--ro-bind-try", path, path]
    for host_path, inside in spec.layers:
        args += ["--ro-bind", host_path, inside]
    return args + _bound_fds(host, spec, fds)


def _perms(host: Host, mode: int) -> list[str]:
    """bwrap's option for a file's mode (a build's executable), or nothing for a submitted file's (--file's own). bwrap
    older than 0.5 has no --perms: a build's files get --file's mode there, and a stage sets theirs (spec.CHMOD)."""
    if mode == SOURCE_MODE or "--perms" not in host.bwrap_help:
        return []
    return ["--perms", f"{mode:04o}"]


def _bound_fds(host: Host, spec: RunSpec, fds: Fds) -> list[str]:
    """The in-memory files copied in, bwrap's status and filter descriptors, and the read-only helper; last, the
    root and /dev made read-only."""
    args: list[str] = []
    # Copied into the root tmpfs, which is made read-only last (below): the same bytes, mode (0600), owner and
    # read-only file as the bind-mounted copies, but three bind mounts and remounts fewer for bwrap to make (~0.4 ms
    # of its CPU per sandbox, docs/benchmarks-sandbox.md). bwrap older than 0.5 has no --perms: bind-mounted there.
    copy = ["--perms", "0600", "--file"] if "--perms" in host.bwrap_help else ["--ro-bind-data"]
    for name, fd in fds.etc.items():
        args += [*copy, str(fd), f"/etc/{name}"]
    for directory in spec.directories:
        args += ["--dir", f"{BOX}/{directory}"]
    for file, fd in zip(spec.files, fds.files, strict=True):
        args += [*_perms(host, file.mode), "--file", str(fd), f"{BOX}/{file.name}"]
    if fds.bwrap_status is not None:
        args += ["--json-status-fd", str(fds.bwrap_status)]
    if fds.seccomp is not None:
        args += ["--seccomp", str(fds.seccomp)]
    if host.helper is not None:
        args += ["--ro-bind", host.helper, HELPER_IN_BOX]
    if spec.preload is not None and any(PRELOAD_FILE in part for part in spec.preload):
        args += ["--ro-bind", *preload_file(host, spec)]
    # bwrap's own tmpfs for / and /dev is owned by the sandbox user: make them read-only, so the only
    # writable places are the size-capped /box, /tmp and /dev/shm.
    return [*args, "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", BOX]
