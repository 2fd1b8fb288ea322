"""Sandbox: runs each job in bubblewrap under cgroup and rlimit limits, streaming its output as it arrives."""

from __future__ import annotations

import asyncio
import base64
import codecs
import dataclasses
import logging
import math
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..errors import SandboxUnavailable
from ..judging.judge import Build, judge
from ..queue.jobs import ExecutionResult, Job, JobIO
from ..settings import Settings
from . import driver, hostpaths, packages, pool, seccomp
from .buildcache import BUILD_COUNTERS, BuildCache, CachedBuild, build_key, builds_dir
from .cgroups import Cgroups, JobCgroup
from .execution import Outcome, Run, Spec
from .languages import Language, LanguageIndex, load_languages
from .pool import REFILL_NICE, Warm, WarmPool
from .spawn import ARTIFACT, BOX, PACK, SANDBOX_UID, Fds, HostUids, start_warm

logger = logging.getLogger(__name__)

PATH = "/usr/bin:/bin"  # toolchains from the host's /usr only (not /usr/local, ~/.cargo, pyenv shims ...)
PROBE_TIMEOUT_MS = 10_000  # generous for a cold JVM start on a busy two-core host
PROBE_CONCURRENCY = 4  # start-up probes at once: 50 languages take about 4 s this way on 2 cores
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
SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
SIGNAL_REASONS = {"SIGXCPU": "cpu_limit", "SIGXFSZ": "file_size_limit"}
# Runs as the server's user before bwrap: joins the job's cgroups, so bwrap and everything it starts is limited
# from its first instruction (no window where a fork escapes), then execs the rest of the command line.
JOIN_CGROUPS = f'while [ "$1" != -- ]; do echo $$ > "$1" || exit {JOIN_FAILED}; shift; done; shift; exec "$@"'
# The C helper (sandbox/helper/conveyor-run.c, built by `make install`) that does all of the above in one exec per
# side of bwrap; without it (no C compiler) jobs start through sh, setpriv, perl and prlimit as before.
HELPER = Path(__file__).with_name("helper") / "conveyor-run"
HELPER_IN_BOX = "/.conveyor-run"  # where the sandbox sees it (read-only)
# A warm sandbox's root is read-only by the time its job arrives: its driver writes a build to /tmp, and the compile
# stage unpacks it into the work dir and deletes it (a cold one gets the build read-only at /ARTIFACT).
WARM_ARTIFACT = f"/tmp/{ARTIFACT}"
WARM_UNPACK = ["/bin/sh", "-c", 'tar -xf "$0" && exec rm -f "$0"', WARM_ARTIFACT]
# The pre-started interpreter's code (languages.toml `preload`, `{preload}`).
PRELOAD = (Path(__file__).with_name("helper") / "preload.py").read_text()


def no_memory_cgroup(problem: str | None) -> str:
    """The start-up refusal without a memory cgroup: the cause found, and the ways out."""
    cause = f": {problem}" if problem else ""
    return (
        f"no memory cgroup for per-job limits{cause}. RLIMIT_AS alone is per process (a job of 16 processes could use "
        "16 times MEMORY_LIMIT_MB). Run the server as root, or as a user whose systemd user manager delegates memory "
        "(make run from a login session), or as a systemd service with Delegate=yes (deploy/conveyor.service); or set "
        "ALLOW_PER_PROCESS_LIMITS=1 to accept per-process limits of MEMORY_LIMIT_MB / MAX_PROCESSES each"
    )


class Sandbox:
    """The executor: bubblewrap with fresh namespaces, cgroup/rlimit limits, and one stage driver per job."""

    def __init__(
        self,
        settings: Settings,
        languages: dict[str, Language],
        *,
        cgroups: Cgroups | None,
        syscall_filter: seccomp.SyscallFilter,
        helper: bool = True,
    ) -> None:
        self.settings = settings
        self._filter = syscall_filter
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
        # As root, jobs do not run as root unless bwrap works only for root here (_check_bwrap's warned fallback).
        self._as_root = False
        self._uids = HostUids(settings.sandbox_uid_base, settings.sandbox_uids)
        self._helper = str(HELPER) if helper and os.access(HELPER, os.X_OK) else None
        self._roots = _root_links()
        self._cleanups: set[asyncio.Task[None]] = set()
        self._layers: dict[str, packages.Layer] = {}
        self.pool: WarmPool | None = None
        self._etc: dict[str, list[str]] = {}
        self._probe_failures: dict[str, str] = {}
        self.builds = 0  # compile-and-pack runs, for tests and statistics
        self.cache = BuildCache(builds_dir(settings), settings.cache_max_mb << 20) if settings.cache_max_mb else None

    # -- start-up --------------------------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        settings: Settings,
        *,
        cgroups: bool = True,
        languages: Collection[str] | None = None,
        helper: bool = True,
    ) -> Sandbox:
        """Check the sandbox works on this host and find the toolchains that work inside it.

        `cgroups=False` forces the rlimit fallbacks, `languages` limits probing to some languages, and
        `helper=False` starts jobs through the perl helpers even where the C helper is built (tests, benchmarks).
        Raises SandboxUnavailable with a one-line fix when jobs cannot run safely here.
        """
        defs = load_languages()
        if languages is not None:
            defs = {name: lang for name, lang in defs.items() if name in languages}
        for tool in ("prlimit", "perl"):
            if shutil.which(tool, path=PATH) is None:
                raise SandboxUnavailable(f"{tool} not found in {PATH}: install util-linux and perl-base")
        try:
            syscall_filter = await asyncio.to_thread(seccomp.build)
        except RuntimeError as exc:
            raise SandboxUnavailable(str(exc)) from None
        groups = None
        if cgroups:
            max_tasks = settings.max_processes + HELPER_TASKS
            groups = await asyncio.to_thread(
                Cgroups.setup,
                memory_bytes=settings.memory_limit_mb << 20,
                max_tasks=max_tasks,
                manager=settings.cgroup_manager,
            )
        sandbox = cls(settings, defs, cgroups=groups, syscall_filter=syscall_filter, helper=helper)
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
        await self._check_cgroups()
        if self._helper is None and not HELPER.exists():
            logger.warning("%s not built (make install needs a C compiler): jobs start through perl helpers", HELPER)
        if os.geteuid() == 0 and not self.drops_privileges:
            logger.warning("neither the C helper nor setpriv: sandboxed processes run as root in a user namespace")
        if self._helper is not None and self.drops_privileges:
            try:
                copy = await asyncio.to_thread(hostpaths.reachable_helper, Path(self._helper), self.settings.cache_path)
                self._helper = str(copy)
            except OSError as exc:
                raise SandboxUnavailable(str(exc)) from None
        self._layers = await asyncio.to_thread(packages.find_layers, self.settings)
        langs = list(self._all.values())
        # A few at a time: fifty sandboxes at once took more descriptors than a 256-file limit (every probe then
        # failed with EMFILE) and started a dozen JVMs on two cores.
        gate = asyncio.Semaphore(PROBE_CONCURRENCY)

        async def probe(lang: Language) -> str | None:
            async with gate:
                return await self._probe(lang)

        found = await asyncio.gather(*(probe(lang) for lang in langs))
        self._versions = {lang.name: version for lang, version in zip(langs, found, strict=True) if version}
        self._index = LanguageIndex(lang for lang in self._all.values() if lang.name in self._versions)
        if not self._versions:
            raise SandboxUnavailable(self._no_toolchain())
        logger.info(
            "sandbox %s ready: %d languages: %s",
            self.backend,
            len(self._versions),
            ", ".join(f"{n} {v}" for n, v in sorted(self._versions.items())),
        )
        missing = sorted(set(self._all) - set(self._versions))
        if missing:
            logger.info(
                "languages configured but not offered: %s (python -m server languages install %s)",
                ", ".join(missing),
                " ".join(missing),
            )
        if self.settings.warm_pool and self.backend == "bwrap" and self._helper is not None:
            self.pool = WarmPool(
                # No cap per language below the budget: a language alone in demand may hold all of it, since jobs
                # that follow each other faster than a sandbox starts drain more than the job slots.
                self._start_warm,
                budget=self.settings.warm_pool,
                per_language_max=self.settings.warm_pool,
            )

    async def _check_cgroups(self) -> None:
        """Jobs must join their cgroups, and a job's memory must be bounded as a whole (or the operator accepted
        per-process limits)."""
        problem = None
        if self._cgroups is not None:
            try:
                probe = await self._execute(Spec(name="probe-cgroups", run=["true"]), None)
                joined = probe.stderr.strip() if probe.returncode == JOIN_FAILED else None
            except OSError as exc:
                joined = str(exc)
            problem = self._cgroups.problem
            if joined is not None:
                logger.warning("cannot put jobs into cgroups (%s); using rlimits only", joined)
                problem = problem or f"jobs cannot join their cgroups: {joined}"
                self._cgroups.close()
                self._cgroups = None
            else:
                logger.info("cgroups: %s", self._cgroups.describe())
        if self._enforcer("memory") is None:
            if not self.settings.allow_per_process_limits:
                raise SandboxUnavailable(no_memory_cgroup(problem))
            logger.warning(
                "ALLOW_PER_PROCESS_LIMITS: no memory cgroup, each process of a job gets RLIMIT_AS of %d MB "
                "(MEMORY_LIMIT_MB / MAX_PROCESSES)",
                self._memory_mb,
            )

    def _no_toolchain(self) -> str:
        """Why no language works: a bound path the jobs' uid cannot reach, else what the probes said."""
        if self.drops_privileges:
            bound = [Path(p) for p in (self._helper, self._bwrap) if p]
            bound += [Path(layer.path) for layer in self._layers.values()]
            for path in bound:
                blocked = hostpaths.unreachable(path)
                if blocked is not None:
                    return (
                        f"jobs run as unprivileged uids, which cannot reach {path} ({blocked} is closed to other "
                        f"users): chmod o+rx {blocked}, or keep that file outside it"
                    )
        said = "; ".join(f"{name}: {text}" for name, text in sorted(self._probe_failures.items()))
        return f"no language toolchain works inside the sandbox ({said or 'no language configured'})"

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
            self._as_root = True
            return
        raise SandboxUnavailable(f"bubblewrap cannot create a sandbox here ({detail}): {INSTALL_HINT}")

    async def _probe(self, lang: Language) -> str | None:
        """Run the version command inside the sandbox; the language is offered only if it works."""
        run = lang.version_argv(heap_mb=self._memory_mb // 2)
        spec = self._spec(lang, f"probe-{lang.name}", run)
        # A toolchain is as slow to say its version as to compile (a JVM's cold start): the probe gets the compile
        # stage's time (COMPILE_TIMEOUT_MS, or the language's own), at least PROBE_TIMEOUT_MS.
        spec.run_timeout_ms = max(PROBE_TIMEOUT_MS, self._compile_ms(lang))
        try:
            out = await self._execute(spec, None)
        except OSError as exc:  # the launcher itself could not start (a noexec mount, a missing binary)
            self._probe_failures[lang.name] = str(exc)
            logger.info("language %s unavailable: %s", lang.name, exc)
            return None
        text = out.stdout + out.stderr
        match = re.search(r"\d+(?:\.\d+)+", text)
        if out.run_status != "exit 0" or match is None:
            said = (text.strip() or out.reason or out.run_status or "no output")[:200]
            self._probe_failures[lang.name] = said
            logger.info("language %s unavailable: %s", lang.name, said)
            return None
        return match.group(0)

    # -- the executor ----------------------------------------------------------------------------------------

    async def __call__(self, job: Job, io: JobIO) -> ExecutionResult:
        """Run one job to its end (its tests, when it has some, each in a fresh sandbox after one compile). On
        cancellation the process tree, cgroup and work dir are gone before re-raise."""
        if self._index.get(job.language) is None:
            return ExecutionResult(reason="unsupported_language", stderr=f"Unknown language {job.language!r}.\n")
        if any("\0" in arg for arg in job.args):
            return ExecutionResult(reason="invalid_args", stderr="Arguments cannot contain NUL characters.\n")
        return await judge(self, job, io)

    def compiles(self, job: Job) -> bool:
        lang = self._index.get(job.language)
        return lang is not None and lang.compile is not None

    def caches(self, job: Job) -> bool:
        """Whether a one-shot run of this job goes through build() (and so the build cache) too."""
        return self.cache is not None and self.compiles(job)

    async def build(self, job: Job) -> Build:
        """Compile the job's files once and pack the work dir as it is then, for fresh sandboxes to run; an identical
        earlier build comes from the build cache instead (checked, and handed to jobs as a copy)."""
        lang = self._language(job)
        spec = self._job_spec(lang, job, stdin=b"", timeout_ms=job.limits.compile_timeout_ms or self._compile_ms(lang))
        key = None
        if self.cache is not None:
            assert spec.compile is not None, "build() is only called for compiled languages"
            key = build_key(
                language=lang.name,
                version=self._versions[lang.name],
                compile_argv=spec.compile,
                env=spec.env,
                files=spec.files,
                owner=job.owner,
            )
            started = time.perf_counter()
            cached = await asyncio.to_thread(self.cache.get, key, job.owner)
            if cached is not None:
                return _cached_build(cached, (time.perf_counter() - started) * 1000.0, job.output_encoding)
        spec.name += "-build"
        spec.run, spec.output_cap = list(PACK), self.settings.workdir_size_mb << 20
        self.builds += 1
        out = await self._execute(spec, None)
        result = _result(lang, out, job.output_encoding)
        if out.compile_status == "exit 0" and result.reason is None and result.exit_code == 0:
            result.stdout = result.stderr = ""
            if self.cache is not None and key is not None:
                entry = CachedBuild(compile_output=out.compile_output_bytes, artifact=out.stdout_bytes)
                await asyncio.to_thread(self.cache.put, key, entry, job.owner)
            return Build(result=result, artifact=out.stdout_bytes)
        if result.reason is None or result.reason in ("runtime_error", "output_limit"):
            logger.error("job %s: packing the build failed: %s", job.id, out.stderr[-500:])
            result.reason = "internal_error"
        return Build(result=result, artifact=None)

    async def run(self, job: Job, io: JobIO | None, *, stdin: bytes, build: Build | None = None) -> ExecutionResult:
        """Run the job's program once: compiling its files first, or unpacking a build made by build()."""
        lang = self._language(job)
        spec = self._job_spec(lang, job, stdin=stdin, timeout_ms=job.timeout_ms)
        if build is not None:
            spec.name += f"-{secrets.token_hex(3)}"  # one cgroup per test
        if build is not None and build.artifact is not None:
            spec.files, spec.artifact = [], build.artifact
            spec.compile = ["tar", "-xf", ARTIFACT if self.backend == "none" else f"/{ARTIFACT}"]
        out = await self._execute(spec, io)
        result = _result(lang, out, job.output_encoding)
        if build is not None:
            result.compile_output, result.compile_time_ms = None, None
        if result.reason == "internal_error":
            logger.error("job %s: sandbox failed (exit %s): %s", job.id, out.returncode, out.stderr[-500:])
        return result

    def _language(self, job: Job) -> Language:
        lang = self._index.get(job.language)
        assert lang is not None, "checked by __call__"
        return lang

    def _compile_ms(self, lang: Language) -> int:
        """COMPILE_TIMEOUT_MS, or more for a compiler that needs it (languages.toml `compile_timeout_ms`)."""
        return max(self.settings.compile_timeout_ms, lang.compile_timeout_ms)

    def _job_spec(self, lang: Language, job: Job, *, stdin: bytes, timeout_ms: int) -> Spec:
        memory_mb = min(job.limits.memory_mb or self.settings.memory_limit_mb, self._memory_mb)
        heap_mb = memory_mb // 2
        files = [(f.name, f.raw) for f in job.files] if job.files else [(lang.source, job.code.encode())]
        program = lang.program([name for name, _ in files], job.compiler_options)
        # The id names the job's cgroup and (SANDBOX=none) its temp dir: only use it when it is a safe file name.
        name = job.id if SAFE_NAME.fullmatch(job.id) else f"job-{secrets.token_hex(8)}"
        run = lang.run_argv(job.args, heap_mb=heap_mb, program=program, interactive=job.interactive)
        spec = self._spec(lang, name, run)
        spec.compile = lang.compile_argv(heap_mb=heap_mb, program=program)
        spec.files, spec.stdin, spec.run_timeout_ms = files, stdin, timeout_ms
        spec.language = lang.name
        spec.address_space_mb = memory_mb + lang.address_space_headroom_mb
        spec.memory_mb = job.limits.memory_mb
        spec.compile_timeout_ms = job.limits.compile_timeout_ms or self._compile_ms(lang)
        if job.limits.cpu_time_ms is not None:
            spec.cpu_time_ms = job.limits.cpu_time_ms
        return spec

    def _spec(self, lang: Language, name: str, run: list[str]) -> Spec:
        env, layers = dict(lang.env), []
        layer = self._layers.get(lang.name)
        if layer is not None:
            # The layer as found at start-up: a later install is a new directory, so this one stays whole.
            inside = str(layer.path) if self.backend == "none" else packages.MOUNT
            layers.append((str(layer.path), inside))
            env.update(layer.env(inside))
        return Spec(
            name=name,
            run=run,
            env=env,
            layers=layers,
            etc=self._etc_paths(lang),
            address_space_mb=self._memory_mb + lang.address_space_headroom_mb,
            compile_timeout_ms=self.settings.compile_timeout_ms,
            cpu_time_ms=self.settings.cpu_time_limit_s * 1000,
        )

    def _etc_paths(self, lang: Language) -> list[str]:
        """The language's /etc entries, globbed once (about 1 ms of CPU a job otherwise)."""
        paths = self._etc.get(lang.name)
        if paths is None:
            paths = self._etc[lang.name] = lang.etc_paths()
        return paths

    async def _execute(self, spec: Spec, io: JobIO | None) -> Outcome:
        run = Run(self, spec, io)
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

    # With argv() and env() below, what a Run needs from its launcher (execution.Launcher).

    @property
    def drops_privileges(self) -> bool:
        """Whether jobs run as SANDBOX_UID on the host (the C helper or setpriv, when the server is root)."""
        if os.geteuid() != 0 or self._as_root:
            return False
        return self._helper is not None or self._setpriv is not None

    @property
    def helper(self) -> str | None:
        """The C launch/driver helper jobs start through, or None when it is not built (the perl helpers then)."""
        return self._helper

    @property
    def seccomp_bpf(self) -> bytes | None:
        """The syscall filter for bwrap --seccomp (SANDBOX=none runs without one)."""
        return self._filter.bpf if self.backend == "bwrap" else None

    def job_cgroup(self, name: str, memory_mb: int | None = None) -> JobCgroup | None:
        """Create the job's cgroup (with its own memory limit when it asked for less), or None for rlimits only."""
        if self._cgroups is None:
            return None
        return self._cgroups.create(name, memory_bytes=None if memory_mb is None else memory_mb << 20)

    # -- command line ----------------------------------------------------------------------------------------

    def _privdrop(self) -> list[str]:
        if self._setpriv is None:
            return []
        uid = self._host_uid()
        return [self._setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]

    def _host_uid(self) -> int:
        """The host uid of the next sandbox (when the server is root): bwrap's each their own, mapped to SANDBOX_UID
        inside; SANDBOX=none's all SANDBOX_UID (their work dirs are made for it, and nothing else is apart)."""
        return self._uids.take() if self.backend == "bwrap" else SANDBOX_UID

    def argv(self, spec: Spec, fds: Fds, cgroup: JobCgroup | None) -> list[str]:
        """helper launch (cgroups, uid, keyring) -> bwrap -> helper drive (rlimits, not dumpable) -> compile, run."""
        if self._helper is None:
            return self._perl_argv(spec, fds, cgroup)
        inner = self._helper if self.backend == "none" else HELPER_IN_BOX
        cmd = [inner, "drive", str(fds.status), str(fds.compile), *self._drive_args(spec)]
        if self.backend == "bwrap":
            assert self._bwrap is not None
            cmd = [self._bwrap, *self._bwrap_args(spec, fds), "--", *cmd]
        return [*self._launch(cgroup), "--", *cmd]

    def _launch(self, cgroup: JobCgroup | None, *, nice: int = 0) -> list[str]:
        assert self._helper is not None
        launch = [self._helper, "launch"]
        for procs in cgroup.procs_files if cgroup is not None else []:
            launch += ["--cgroup", procs]
        if nice:
            launch += ["--nice", str(nice)]
        # Not only with setpriv: the helper drops the uid itself, and refuses to keep root unless told so by name.
        if self.drops_privileges:
            launch += ["--uid", str(self._host_uid())]
        elif os.geteuid() == 0:
            launch.append("--stay-root")
        return launch

    def _drive_args(self, spec: Spec) -> list[str]:
        """The C driver's arguments after its pipes: the rlimits, the compile command's length, compile, run."""
        limits = self._limits(spec)
        args = [str(limits.get(k, "-")) for k in ("cpu", "fsize", "nofile", "nproc", "as")]
        return [*args, str(len(spec.compile or [])), *(spec.compile or []), *spec.run]

    def _perl_argv(self, spec: Spec, fds: Fds, cgroup: JobCgroup | None) -> list[str]:
        """launcher [join cgroups] -> setpriv -> new keyring -> bwrap -> prlimit -> perl driver -> compile, run."""
        prctl, keyctl = self._filter.numbers["prctl"], self._filter.numbers["keyctl"]
        cmd = [*self._rlimits(spec), *driver.command(fds.status, fds.compile, prctl, spec.compile or [], spec.run)]
        if self.backend == "bwrap":
            assert self._bwrap is not None
            cmd = [self._bwrap, *self._bwrap_args(spec, fds), "--", *cmd]
        # After setpriv: the keyring then belongs to (and counts against the key quota of) the job's host uid.
        cmd = self._privdrop() + driver.new_keyring(keyctl, cmd)
        if cgroup is not None:
            cmd = ["/bin/sh", "-c", JOIN_CGROUPS, "conveyor-join", *cgroup.procs_files, "--", *cmd]
        return cmd

    def _limits(self, spec: Spec) -> dict[str, int]:
        # Set inside the sandbox, after bwrap has built it and before the driver starts: the limits bind the driver
        # and everything it starts, not bwrap's own set-up, and the job's user namespace already exists, so
        # RLIMIT_NPROC counts this job's tasks (Linux >= 5.14 counts per user namespace) rather than all of uid
        # 65534 on the host. RLIMIT_CORE is always 0 (a core_pattern pipe would run a host helper as root).
        s = self.settings
        limits = {
            "cpu": max(1, math.ceil(spec.cpu_time_ms / 1000)),  # whole seconds; SIGXCPU, SIGKILL a second later
            "fsize": s.max_file_size_mb << 20,
            "nofile": s.max_open_files,
        }
        if self._enforcer("pids") is None:
            limits["nproc"] = s.max_processes + HELPER_TASKS
        if self._enforcer("memory") is None:
            limits["as"] = spec.address_space_mb << 20
        return limits

    def _rlimits(self, spec: Spec) -> list[str]:
        """prlimit's command line for _limits() (the perl path)."""
        limits = self._limits(spec)
        cpu_s = limits.pop("cpu")
        args = ["prlimit", f"--cpu={cpu_s}:{cpu_s + 1}", "--core=0"]
        return [*args, *(f"--{name}={value}" for name, value in limits.items()), "--"]

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
        for host, inside in spec.layers:
            args += ["--ro-bind", host, inside]
        for name, fd in fds.etc.items():
            args += ["--ro-bind-data", str(fd), f"/etc/{name}"]
        for directory in spec.directories:
            args += ["--dir", f"{BOX}/{directory}"]
        for (name, _), fd in zip(spec.files, fds.files, strict=True):
            args += ["--file", str(fd), f"{BOX}/{name}"]
        if fds.artifact is not None:
            args += ["--ro-bind-data", str(fds.artifact), f"/{ARTIFACT}"]
        if fds.bwrap_status is not None:
            args += ["--json-status-fd", str(fds.bwrap_status)]
        if fds.seccomp is not None:
            args += ["--seccomp", str(fds.seccomp)]
        if self._helper is not None:
            args += ["--ro-bind", self._helper, HELPER_IN_BOX]
        # bwrap's own tmpfs for / and /dev is owned by the sandbox user: make them read-only, so the only
        # writable places are the size-capped /box, /tmp and /dev/shm.
        return [*args, "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", BOX]

    def env(self, spec: Spec, workdir: str | None) -> dict[str, str]:
        home = workdir or BOX
        tmp = f"{workdir}/tmp" if workdir else "/tmp"
        return {"PATH": PATH, "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8", "USER": "sandbox", **spec.env}

    # -- the warm pool (server/sandbox/pool.py) ---------------------------------------------------------------------

    def take_warm(self, spec: Spec) -> Warm | None:
        if self.pool is None or spec.language is None:
            return None
        return self.pool.take(spec.language)

    def job_message(self, spec: Spec, warm: Warm) -> bytes:
        files, env, preload = spec.files, self.env(spec, None), None
        if spec.artifact is not None:
            files, spec = [(WARM_ARTIFACT, spec.artifact)], dataclasses.replace(spec, compile=WARM_UNPACK)
        lang = self._index.get(warm.language)
        # The pre-started interpreter runs the job only when the job is what it was started for: the same program,
        # no compile stage, and the environment it booted with (python reads PYTHON* and the locale at start-up).
        if warm.preloaded and lang is not None and lang.preload and not spec.compile and env == warm.env:
            if spec.run[0] == lang.preload[0]:
                preload = spec.run[1:]
        return driver.job_message(self._drive_args(spec), env, files, preload)

    def restrict(self, cgroup: JobCgroup, memory_mb: int) -> None:
        assert self._cgroups is not None
        self._cgroups.restrict(cgroup, memory_mb << 20)

    def warm_argv(self, spec: Spec, fds: Fds, cgroup: JobCgroup | None, job_fd: int, *, nice: int) -> list[str]:
        assert self._bwrap is not None and spec.language is not None
        wait = [HELPER_IN_BOX, "wait", str(job_fd), str(fds.status), str(fds.compile)]
        lang = self._index.get(spec.language)
        if lang is not None and lang.preload:
            wait += [part.replace("{preload}", PRELOAD) for part in lang.preload]
        return [*self._launch(cgroup, nice=nice), "--", self._bwrap, *self._bwrap_args(spec, fds), "--", *wait]

    def _start_warm(self, name: str, urgent: bool) -> Warm:
        """(A pool thread.) A sandbox for the next job in `name`, niced below running jobs when the server may
        renice it back (root) and no job is about to need it (see pool.REFILL_NICE)."""
        lang = self._index.get(name)
        assert lang is not None
        spec = self._spec(lang, f"warm-{secrets.token_hex(8)}", [])
        spec.language = lang.name
        warm = start_warm(self, spec, nice=REFILL_NICE if os.geteuid() == 0 and not urgent else 0)
        warm.env, warm.preloaded = self.env(spec, None), lang.preload is not None
        return warm

    def pool_status(self) -> dict[str, Any]:
        """The warm pool's state for /health, /metrics and the dashboard."""
        return self.pool.stats() if self.pool is not None else pool.off()

    # -- what the API shows ----------------------------------------------------------------------------------

    def _enforcer(self, controller: str) -> str | None:
        return self._cgroups.enforced_by(controller) if self._cgroups is not None else None

    @property
    def _memory_mb(self) -> int:
        """The memory one job may use (its cgroup's limit), or without a memory cgroup one process: the job's share
        divided by the processes it may have, so that all of them together stay within MEMORY_LIMIT_MB."""
        s = self.settings
        return s.memory_limit_mb if self._enforcer("memory") else max(1, s.memory_limit_mb // s.max_processes)

    def runtimes(self) -> list[dict[str, Any]]:
        """The languages offered: canonical name, detected version, aliases."""
        return [
            {
                "language": lang.name,
                "version": self._versions[lang.name],
                "aliases": list(lang.aliases),
                "compiled": lang.compile is not None,
                "packages": self._layers[lang.name].describe() if lang.name in self._layers else [],
                # For the editor's picker: the name people know, its highlighting mode and a starter program.
                "displayName": lang.display,
                "mode": lang.mode,
                "hello": lang.hello,
            }
            for lang in self._index
        ]

    def cache_status(self) -> dict[str, Any]:
        """The build cache's counters and size, and the package layers in use (blocks on a directory listing: call
        from a thread)."""
        builds = self.cache.stats() if self.cache is not None else dict.fromkeys(BUILD_COUNTERS, 0)
        builds["enabled"] = self.cache is not None
        return {"builds": builds, "packages": packages.stats(self._layers)}

    def resolve(self, name: str) -> str | None:
        """Canonical name for a language name or alias, or None when unknown or unavailable here."""
        return self._index.resolve(name)

    def _host_uids(self) -> str:
        if not self.drops_privileges:
            return "the server's own: jobs share it (only a root server can give each sandbox its own)"
        if self.backend != "bwrap" or self._uids.count == 0:
            return f"{SANDBOX_UID} for every sandbox"
        first, last = self._uids.base, self._uids.base + self._uids.count - 1
        return f"one of {first}-{last} for each sandbox (SANDBOX_UID_BASE, SANDBOX_UIDS), {SANDBOX_UID} inside"

    def describe(self) -> dict[str, Any]:
        """The backend and every limit with how this host enforces it (for GET /health)."""
        s = self.settings
        host_uid = SANDBOX_UID if self.drops_privileges else os.geteuid()
        memory: dict[str, Any] = {"limitMb": s.memory_limit_mb, "enforcedBy": self._enforcer("memory") or "RLIMIT_AS"}
        if memory["enforcedBy"] == "RLIMIT_AS":
            memory["perProcessMb"] = self._memory_mb
            memory["note"] = (
                "ALLOW_PER_PROCESS_LIMITS: address space of each process, MEMORY_LIMIT_MB / MAX_PROCESSES; java and "
                "javascript get headroom and cap their heap themselves"
            )
        processes = {"limit": s.max_processes, "counts": "tasks (threads too)", "enforcedBy": self._enforcer("pids")}
        if processes["enforcedBy"] is None:
            scope = "per job user namespace" if self.backend == "bwrap" else f"all of uid {host_uid} on the host"
            processes["enforcedBy"] = f"RLIMIT_NPROC ({scope})" if host_uid else "none (root is exempt)"
        cpu_by = self._cgroups.cpu_accounting() if self._cgroups is not None else None
        cpu = f"{cpu_by} (the whole job), RLIMIT_CPU (each process)" if cpu_by else "RLIMIT_CPU (each process)"
        workdir = "tmpfs size" if "--size" in self._bwrap_help else "memory only (bwrap without --size)"
        if self.backend == "none":
            workdir = "not capped (SANDBOX=none: a host temp dir; RLIMIT_FSIZE per file)"
        return {
            "backend": self.backend,
            "bwrapVersion": self._bwrap_version,
            "hostUid": host_uid,
            "hostUids": self._host_uids(),
            "sandboxUid": SANDBOX_UID if self.backend == "bwrap" else host_uid,
            "network": "none (empty network namespace)" if self.backend == "bwrap" else "host (SANDBOX=none)",
            "syscallFilter": self._filter.describe() if self.backend == "bwrap" else None,
            "keyring": "a new empty session keyring for each job",
            "stageDriver": "not dumpable (its pipes are out of the program's reach)",
            "launcher": "conveyor-run (C helper)" if self._helper else "sh, setpriv, perl, prlimit (no C helper built)",
            "limits": {
                "memory": memory,
                "processes": processes,
                "cpu": {"limitS": s.cpu_time_limit_s, "enforcedBy": cpu},
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
        """Destroy the warm pool, finish cleanups still running and remove this server's cgroups."""
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)
            self.pool = None
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


def _cached_build(cached: CachedBuild, lookup_ms: float, encoding: str) -> Build:
    """A build from the cache: the compile stage's result as it was (its output), with the lookup as its time."""
    output = cached.compile_output
    text = base64.b64encode(output).decode() if encoding == "base64" else output.decode(errors="replace")
    result = ExecutionResult(exit_code=0, compile_output=text, compile_time_ms=lookup_ms, compile_cached=True)
    return Build(result=result, artifact=cached.artifact)


def _lossy(data: bytes, truncated: bool) -> bool:
    """Whether the bytes are not valid UTF-8 (a character the output cap cut in two does not count)."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=not truncated)
    except UnicodeDecodeError:
        return True
    return False


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


def _result(lang: Language, out: Outcome, encoding: str = "utf8") -> ExecutionResult:
    """Map what the run observed to the result the queue understands."""
    result = ExecutionResult(
        stdout=out.stdout,
        stderr=out.stderr,
        truncated=out.truncated,
        compile_output=out.compile_output if lang.compile is not None else None,
        compile_time_ms=out.compile_time_ms,
        run_time_ms=out.run_time_ms,
        stdout_lossy=_lossy(out.stdout_bytes, out.truncated),
        stderr_lossy=_lossy(out.stderr_bytes, out.truncated),
        cpu_time_ms=out.cpu_time_ms,
        memory_peak_bytes=out.memory_peak_bytes,
        compile_cpu_time_ms=out.compile_cpu_time_ms,
        compile_memory_peak_bytes=out.compile_memory_peak_bytes,
    )
    if encoding == "base64":
        result.stdout = base64.b64encode(out.stdout_bytes).decode()
        result.stderr = base64.b64encode(out.stderr_bytes).decode()
        if result.compile_output is not None:
            result.compile_output = base64.b64encode(out.compile_output_bytes).decode()
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
