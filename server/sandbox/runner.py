"""Sandbox: runs each job in bubblewrap under cgroup and rlimit limits, streaming its output as it arrives."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..errors import SandboxUnavailable
from ..settings import Settings
from . import health, hostpaths, packages, pool, seccomp, startup
from .artifact import ArtifactRefused, unpack
from .buildcache import BUILD_COUNTERS, BuildCache, CachedBuild, build_key, builds_dir
from .cgroups import Cgroups
from .command import JOIN_FAILED, Host, privdrop
from .contract import Build, ExecutionResult, JobIO, Request
from .execution import Run
from .languages import Language, LanguageIndex, chosen, load_languages, runtimes
from .pool import WarmPool
from .reaper import Reaper
from .result import Outcome, cached_build, result_of
from .spec import PRELOADS, RunSpec, Specs
from .teardowns import TEARDOWNS_AFTER, Teardowns
from .uids import HostUids, close_host_claims, open_host_claims
from .warm import WarmStarter

logger = logging.getLogger(__name__)

# The C helper (sandbox/helper/conveyor-run.c, built by `make install`) that launches a sandbox and drives its
# stages in one exec per side of bwrap; without it (no C compiler) jobs start through sh, setpriv, perl and prlimit.
HELPER = Path(__file__).with_name("helper") / "conveyor-run"


class Sandbox:
    """Runs programs in bubblewrap with fresh namespaces, cgroup/rlimit limits, and one stage driver per run: each
    request becomes one RunSpec (spec.py), started by a Run (execution.py) with this host's Host (command.py)."""

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
        self._as_root = False  # jobs run as root only if bwrap works only for root here (_check_bwrap, warned)
        self._preloads: dict[str, str] = {}  # reachable copies of spec.PRELOADS (_check_host)
        self._claims = open_host_claims() if settings.sandbox_uids else None  # closed by close()
        self._uids = HostUids(settings.sandbox_uid_base, settings.sandbox_uids, claims=self._claims)
        self._helper = str(HELPER) if helper and os.access(HELPER, os.X_OK) else None
        self._roots = startup.root_links()
        self.teardowns = Teardowns()  # see create()
        self._layers: dict[str, packages.Layer] = {}
        self.pool: WarmPool | None = None
        self._reaper: Reaper | None = None  # releases the cgroups ended runs leave (with cgroups)
        self._probe_failures: dict[str, str] = {}
        self.builds = 0  # compile-and-pack runs, for tests and statistics
        self.cache = BuildCache(builds_dir(settings), settings.cache_max_mb << 20) if settings.cache_max_mb else None
        # Fixed once the start-up checks are done (the helper's reachable copy, the cgroups that work, the layers).
        self._host = self._current_host()
        self._specs = self._current_specs()

    # -- start-up --------------------------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        settings: Settings,
        *,
        cgroups: bool = True,
        languages: Collection[str] | None = None,
        helper: bool = True,
        one_loop: bool = False,
    ) -> Sandbox:
        """Check the sandbox works on this host and find the toolchains that work inside it.

        `cgroups=False` forces the rlimit fallbacks, `languages` limits probing to some languages, and
        `helper=False` starts jobs through the perl helpers even where the C helper is built (tests, benchmarks).
        `one_loop`: every run and close() on one event loop (the server's), which then tears runs down after their
        results (TEARDOWNS_AFTER); a loop that ends would leave them unfinished. Raises SandboxUnavailable with a
        one-line fix when jobs cannot run safely here.
        """
        defs = chosen(load_languages(), languages if languages is not None else (settings.languages or None))
        syscall_filter, groups = await startup.prerequisites(settings, cgroups=cgroups)
        sandbox = cls(settings, defs, cgroups=groups, syscall_filter=syscall_filter, helper=helper)
        sandbox.teardowns.after = TEARDOWNS_AFTER if one_loop else 0
        try:
            await sandbox._start()
        except BaseException:
            await sandbox.close()
            raise
        return sandbox

    async def _start(self) -> None:
        await self._check_host()
        self._layers = await asyncio.to_thread(packages.find_layers, self.settings)
        self._host, self._specs = self._current_host(), self._current_specs()
        await self._probe_languages()
        if self._cgroups is not None:
            self._reaper = Reaper()
        if self.settings.warm_pool and self.backend == "bwrap" and self._helper is not None:
            self.pool = WarmPool(
                WarmStarter(self._host, self._cgroups, self._specs, self._index),
                # No cap per language below the budget: a language alone in demand may hold all of it, since jobs
                # that follow each other faster than a sandbox starts drain more than the job slots.
                budget=self.settings.warm_pool,
                per_language_max=self.settings.warm_pool,
            )

    async def _check_host(self) -> None:
        """bwrap, the cgroups and the helper as this host has them; the helper copied where jobs' uids reach it."""
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
                self._preloads = await asyncio.to_thread(self._reachable_preloads)
            except OSError as exc:
                raise SandboxUnavailable(str(exc)) from None

    def _reachable_preloads(self) -> dict[str, str]:
        """The pre-started interpreters' code bound into sandboxes (preload.js, java's launcher), copied where the
        jobs' uid reaches it when the checkout is closed to it (a clone in /root)."""
        cache = self.settings.cache_path
        return {name: str(hostpaths.reachable_tree(path, cache)) for name, path in PRELOADS.items() if path.exists()}

    async def _probe_languages(self) -> None:
        """Offer the languages whose version command works inside the sandbox."""

        async def probe(lang: Language) -> Outcome:
            return await self._execute(self._specs.probe(lang), None)

        self._versions, self._probe_failures = await startup.probe_languages(self._all, probe, backend=self.backend)
        self._index = LanguageIndex(lang for lang in self._all.values() if lang.name in self._versions)
        if not self._versions:
            raise SandboxUnavailable(self._no_toolchain())

    async def _check_cgroups(self) -> None:
        """Jobs must join their cgroups, and a job's memory must be bounded as a whole (or the operator accepted
        per-process limits)."""
        problem = None
        if self._cgroups is not None:
            try:
                probe = await self._execute(RunSpec(name="probe-cgroups", run=("true",)), None, self._current_host())
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
                raise SandboxUnavailable(startup.no_memory_cgroup(problem))
            logger.warning(
                "ALLOW_PER_PROCESS_LIMITS: no memory cgroup, each process of a job gets RLIMIT_AS of %d MB "
                "(MEMORY_LIMIT_MB / MAX_PROCESSES)",
                self._memory_mb,
            )

    def _no_toolchain(self) -> str:
        """Why no language works (startup.no_toolchain): the paths bound into every sandbox, and the probes' words."""
        bound = []
        if self.drops_privileges:
            bound = [Path(p) for p in (self._helper, self._bwrap) if p]
            bound += [Path(layer.path) for layer in self._layers.values()]
        return startup.no_toolchain(bound, self._probe_failures)

    async def _check_bwrap(self) -> None:
        drop = privdrop(self._setpriv, self._uids.take()) if self._setpriv is not None else []
        found = await startup.check_bwrap(self._bwrap, self._roots, drop)
        self._bwrap_version, self._bwrap_help = found.version, found.help
        if found.root_only:
            self._setpriv, self._as_root = None, True

    def _current_host(self) -> Host:
        """How a sandbox is started here, as the start-up checks have found it so far."""
        return Host(
            settings=self.settings,
            backend=self.backend,
            uids=self._uids,
            bwrap=self._bwrap,
            bwrap_help=self._bwrap_help,
            helper=self._helper,
            setpriv=self._setpriv,
            roots=self._roots,
            drops_privileges=self.drops_privileges,
            seccomp_bpf=self.seccomp_bpf,
            syscalls=self._filter.numbers,
            pids_enforced=self._enforcer("pids") is not None,
            memory_enforced=self._enforcer("memory") is not None,
            preloads=self._preloads,
        )

    def _current_specs(self) -> Specs:
        # bwrap gives a file its mode with --perms (0.5 and later); with an older one a build run sets them in a stage.
        modes = self.backend != "bwrap" or "--perms" in self._bwrap_help
        return Specs(
            self.settings, backend=self.backend, layers=self._layers, memory_mb=self._memory_mb, file_modes=modes
        )

    # -- runs ------------------------------------------------------------------------------------------------

    def offers(self, language: str) -> bool:
        """Whether the language (a name or alias) works here."""
        return self._index.get(language) is not None

    def compiles(self, language: str) -> bool:
        lang = self._index.get(language)
        return lang is not None and lang.compile is not None

    def caches(self, language: str) -> bool:
        """Whether a one-shot run in this language goes through build() (and so the build cache) too."""
        return self.cache is not None and self.compiles(language)

    async def build(self, request: Request) -> Build:
        """Compile the request's files once and pack the work dir as it is then, for fresh sandboxes to run; an
        identical earlier build comes from the build cache instead (checked, and handed to jobs as a copy)."""
        lang = self._language(request.language)
        spec = self._specs.build(lang, request)
        key = None
        if self.cache is not None:
            assert spec.compile is not None, "build() is only called for compiled languages"
            key = build_key(
                language=lang.name,
                version=self._versions[lang.name],
                compile_argv=spec.compile,
                env=spec.env,
                files=[(f.name, f.content) for f in spec.files],
                owner=request.owner,
            )
            started = time.perf_counter()
            cached = await asyncio.to_thread(self.cache.files, key, request.owner)
            if cached is not None:
                lookup_ms = (time.perf_counter() - started) * 1000.0
                return cached_build(*cached, lookup_ms, request.output_encoding)
        self.builds += 1
        out = await self._execute(spec, None)
        result = result_of(lang, out, request.output_encoding)
        if out.compile_status == "exit 0" and result.reason is None and result.exit_code == 0:
            result.stdout = result.stderr = ""
            try:
                files = await asyncio.to_thread(unpack, out.stdout_bytes)
            except ArtifactRefused as exc:
                logger.error("job %s: the build holds what no sandbox is given: %s", request.name, exc)
                result.reason = "internal_error"
                return Build(result=result, artifact=None)
            if self.cache is not None and key is not None:
                entry = CachedBuild(compile_output=out.compile_output_bytes, artifact=out.stdout_bytes)
                await asyncio.to_thread(self.cache.put, key, entry, request.owner)
            return Build(result=result, artifact=files)
        if result.reason is None or result.reason in ("runtime_error", "output_limit"):
            logger.error("job %s: packing the build failed: %s", request.name, out.stderr[-500:])
            result.reason = "internal_error"
        return Build(result=result, artifact=None)

    async def run(
        self, request: Request, io: JobIO | None, *, stdin: bytes, build: Build | None = None
    ) -> ExecutionResult:
        """Run the request's program once: compiling its files first, or given the files of a build made by build(). On
        cancellation the process tree, cgroup and work dir are gone before re-raise."""
        lang = self._language(request.language)
        artifact = build.artifact if build is not None else None
        out = await self._execute(self._specs.job(lang, request, stdin=stdin, artifact=artifact), io)
        result = result_of(lang, out, request.output_encoding)
        if build is not None:
            result.compile_output, result.compile_time_ms = None, None
        if result.reason == "internal_error":
            logger.error("job %s: sandbox failed (exit %s): %s", request.name, out.returncode, out.stderr[-500:])
        return result

    def _language(self, name: str) -> Language:
        lang = self._index.get(name)
        assert lang is not None, "checked by the caller (offers)"
        return lang

    async def _execute(self, spec: RunSpec, io: JobIO | None, host: Host | None = None) -> Outcome:
        run = Run(spec, host or self._host, io, cgroups=self._cgroups, pool=self.pool, reaper=self._reaper)
        try:
            return await run.start_and_wait()
        finally:
            await self.teardowns.end(run)

    # -- what the API shows ----------------------------------------------------------------------------------

    @property
    def drops_privileges(self) -> bool:
        """Whether jobs run as SANDBOX_UID on the host (the C helper or setpriv, when the server is root)."""
        if os.geteuid() != 0 or self._as_root:
            return False
        return self._helper is not None or self._setpriv is not None

    @property
    def seccomp_bpf(self) -> bytes | None:
        """The syscall filter for bwrap --seccomp (SANDBOX=none runs without one)."""
        return self._filter.bpf if self.backend == "bwrap" else None

    @property
    def helper(self) -> str | None:
        """The C launch/driver helper jobs start through, or None when it is not built (the perl helpers then)."""
        return self._helper

    def _enforcer(self, controller: str) -> str | None:
        return self._cgroups.enforced_by(controller) if self._cgroups is not None else None

    @property
    def _memory_mb(self) -> int:
        """The memory one job may use (its cgroup's limit), or without a memory cgroup one process: the job's share
        divided by the processes it may have, so that all of them together stay within MEMORY_LIMIT_MB."""
        s = self.settings
        return s.memory_limit_mb if self._enforcer("memory") else max(1, s.memory_limit_mb // s.max_processes)

    def pool_status(self) -> dict[str, Any]:
        """The warm pool's state for /health, /metrics and the dashboard."""
        return self.pool.stats() if self.pool is not None else pool.off()

    def runtimes(self) -> list[dict[str, Any]]:
        """The languages offered: canonical name, detected version, aliases (languages.runtimes)."""
        return runtimes(self._index, self._versions, self._layers)

    def cache_status(self) -> dict[str, Any]:
        """The build cache's counters and size, and the package layers in use (blocks on a directory listing: call
        from a thread)."""
        builds = self.cache.stats() if self.cache is not None else dict.fromkeys(BUILD_COUNTERS, 0)
        builds["enabled"] = self.cache is not None
        return {"builds": builds, "packages": packages.stats(self._layers)}

    def resolve(self, name: str) -> str | None:
        """Canonical name for a language name or alias, or None when unknown or unavailable here."""
        return self._index.resolve(name)

    def describe(self) -> dict[str, Any]:
        """The backend and every limit with how this host enforces it (for GET /health)."""
        return health.describe(
            self._host,
            memory_by=self._enforcer("memory"),
            pids_by=self._enforcer("pids"),
            cpu_by=self._cgroups.cpu_accounting() if self._cgroups is not None else None,
            memory_mb=self._memory_mb,
            bwrap_version=self._bwrap_version,
            syscall_filter=self._filter,
        )

    async def released(self) -> None:
        """Until what the runs ended so far left behind (their trees being torn down, their cgroups: see
        reaper.Reaper) is released."""
        await self.teardowns.finished()
        if self._reaper is not None:
            await asyncio.to_thread(self._reaper.caught_up().wait)

    async def close(self) -> None:
        """Destroy the warm pool, finish cleanups still running and remove this server's cgroups."""
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)
            self.pool = None
        await self.teardowns.finished()
        if self._reaper is not None:
            await asyncio.to_thread(self._reaper.close)
            self._reaper = None
        if self._cgroups is not None:
            self._cgroups.close()
        if self._claims is not None:
            close_host_claims(self._claims)
            self._claims = None
