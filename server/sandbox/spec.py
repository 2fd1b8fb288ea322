"""Run spec: everything one sandboxed run is started with, made once from a request and read, never changed, by the
rest of the sandbox."""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ..settings import Settings
from . import packages
from .artifact import SOURCE_MODE, Artifact, WorkFile
from .contract import Request
from .languages import Language

# "nobody": inside every sandbox; on the host, SANDBOX=none's jobs (and bwrap's with SANDBOX_UIDS=0) when root.
# Otherwise each bwrap sandbox of a root server has a host uid of its own (HostUids, SANDBOX_UID_BASE).
SANDBOX_UID = 65534
BOX = "/box"  # the job's work dir inside the sandbox
# A build: the work dir after the compile stage, packed (a tar on stdout) for fresh sandboxes to run. The host reads
# it into files and directories (artifact.unpack, every member checked) that a run of the build is given like a job's
# own files: no unpack stage.
PACK = ("tar", "--exclude=./tmp", "-cf", "-", ".")
# Where a cold sandbox cannot be given a file's mode (bwrap older than 0.5 has no --perms: every file is 0666), a run
# of a build first sets its files' modes with this stage: `sh -c CHMOD sh MODE NAME MODE NAME ...`.
CHMOD = 'while [ "$#" -gt 1 ]; do chmod -- "$1" "$2" || exit; shift 2; done'
PROBE_TIMEOUT_MS = 10_000  # generous for a cold JVM start on a busy two-core host
SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The pre-started interpreters' code (languages.toml `preload`, sandbox/command.py), by interpreter: java's is the
# class `make helper` compiles with javac (none where there is no javac: java then has no pre-started JVM).
HELPER_DIR = Path(__file__).with_name("helper")
PRELOADS = {"python3": HELPER_DIR / "preload.py", "node": HELPER_DIR / "preload.js", "java": HELPER_DIR / "java"}


def preload_built(interpreter: str) -> bool:
    """Whether the interpreter's pre-start code is there: java's launcher built whole (its class and native half), for
    the JDK the sandbox's `java` is (the Makefile writes helper/java/jdk; built for another, it would not run)."""
    path = PRELOADS[interpreter]
    if interpreter != "java":
        return path.exists()
    try:
        built_for = (path / "jdk").read_text().strip()
    except OSError:
        return False
    home = Path(os.path.realpath("/usr/bin/java")).parent.parent
    parts = (path / "conveyor/preload/Preload.class", path / "libconveyor-preload.so")
    return str(home) == built_for and all(part.exists() for part in parts)


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What to run once: a job's program (or its build, or one test from a build), a warm sandbox, or a start-up
    probe."""

    name: str
    run: tuple[str, ...]
    compile: tuple[str, ...] | None = None
    language: str | None = None  # a job's (a warm sandbox of it may run the job); None for a start-up probe
    preload: tuple[str, ...] | None = None  # the language's pre-started interpreter (languages.toml `preload`)
    # What a job's run command must begin with to be run by it, when not its command less its code (`preload_runs`).
    preload_runs: tuple[str, ...] = ()
    # The job's files, relative to the work dir (validated by payloads, or a build's by artifact.unpack: no absolute
    # paths, no `..`), and directories to make besides their parents (a build's, empty ones included).
    files: tuple[WorkFile, ...] = ()
    dirs: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    etc: tuple[str, ...] = ()
    # Read-only directories mounted into the sandbox: (host path, path inside), e.g. a package layer.
    layers: tuple[tuple[str, str], ...] = ()
    address_space_mb: int = 0
    memory_mb: int | None = None  # the job's own memory limit, when below the server's
    compile_timeout_ms: int = 10_000
    run_timeout_ms: int = 10_000
    cpu_time_ms: int = 10_000  # the whole process tree's CPU time (RLIMIT_CPU per process, rounded up, too)
    stdin: bytes = b""
    output_cap: int | None = None  # stdout+stderr cap, when not MAX_OUTPUT_BYTES (a packed build)

    @property
    def directories(self) -> list[str]:
        """The directories the files need and those asked for, parents first. Each is found once, walking up from a
        path until a directory already found (every prefix of every path was cubic in the depth of a tree)."""
        dirs: set[str] = set()
        for name in [*(f.name for f in self.files), *(f"{d}/" for d in self.dirs)]:
            parent = name.rpartition("/")[0]
            while parent and parent not in dirs:
                dirs.add(parent)
                parent = parent.rpartition("/")[0]
        return sorted(dirs, key=lambda d: (d.count("/"), d))


class Specs:
    """Makes every RunSpec: from a request (one run, its build, one test from that build), for a warm sandbox, or
    for a start-up probe. The server's limits and the package layers found at start-up are fixed here."""

    def __init__(
        self,
        settings: Settings,
        *,
        backend: str,
        layers: Mapping[str, packages.Layer],
        memory_mb: int,
        file_modes: bool = True,
    ) -> None:
        self._settings = settings
        self._file_modes = file_modes  # a cold sandbox is given each file's mode (else: a CHMOD stage for a build)
        self._backend = backend
        self._layers = layers
        self._memory_mb = memory_mb  # one job's (or without a memory cgroup one process's) memory
        self._etc: dict[str, tuple[str, ...]] = {}
        self._preloads: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...]]] = {}

    def compile_ms(self, lang: Language) -> int:
        """COMPILE_TIMEOUT_MS, or more for a compiler that needs it (languages.toml `compile_timeout_ms`)."""
        return max(self._settings.compile_timeout_ms, lang.compile_timeout_ms)

    def probe(self, lang: Language) -> RunSpec:
        """The version command. A toolchain is as slow to say its version as to compile (a JVM's cold start): the
        probe gets the compile stage's time (COMPILE_TIMEOUT_MS, or the language's own), at least PROBE_TIMEOUT_MS."""
        run = lang.version_argv(heap_mb=self._memory_mb // 2)
        timeout_ms = max(PROBE_TIMEOUT_MS, self.compile_ms(lang))
        return dataclasses.replace(self._spec(lang, f"probe-{lang.name}", run, probe=True), run_timeout_ms=timeout_ms)

    def warm(self, lang: Language) -> RunSpec:
        """A warm sandbox of the language, for its next job."""
        return self._spec(lang, f"warm-{secrets.token_hex(8)}", [])

    def job(self, lang: Language, request: Request, *, stdin: bytes, artifact: Artifact | None = None) -> RunSpec:
        """One run of the request's program: compiling its files first, or given the files of a build made by
        build()."""
        return self._job(lang, request, stdin=stdin, timeout_ms=request.timeout_ms, artifact=artifact)

    def build(self, lang: Language, request: Request) -> RunSpec:
        """The request's compile stage, then the work dir packed (a tar on stdout) for fresh sandboxes to run."""
        timeout_ms = request.limits.compile_timeout_ms or self.compile_ms(lang)
        return self._job(lang, request, stdin=b"", timeout_ms=timeout_ms, build=True)

    def _job(
        self,
        lang: Language,
        request: Request,
        *,
        stdin: bytes,
        timeout_ms: int,
        artifact: Artifact | None = None,
        build: bool = False,
    ) -> RunSpec:
        limits = request.limits
        memory_mb = min(limits.memory_mb or self._settings.memory_limit_mb, self._memory_mb)
        heap_mb = memory_mb // 2
        files = (
            tuple(WorkFile(f.name, f.raw) for f in request.files)
            if request.files
            else (WorkFile(lang.source, request.code.encode()),)
        )
        dirs: tuple[str, ...] = ()
        program = lang.program([f.name for f in files], request.compiler_options)
        compile_argv = lang.compile_argv(heap_mb=heap_mb, program=program)
        run = lang.run_argv(request.args, heap_mb=heap_mb, program=program, interactive=request.interactive)
        # The id names the job's cgroup and (SANDBOX=none) its temp dir: only use it when it is a safe file name.
        name = request.name if SAFE_NAME.fullmatch(request.name) else f"job-{secrets.token_hex(8)}"
        if build:
            name, run = f"{name}-build", list(PACK)
        elif artifact is not None:
            name = f"{name}-{secrets.token_hex(3)}"  # one cgroup per test
            files, dirs, compile_argv = artifact.files, artifact.dirs, self._chmod(artifact)
        return dataclasses.replace(
            self._spec(lang, name, run),
            compile=None if compile_argv is None else tuple(compile_argv),
            files=files,
            dirs=dirs,
            stdin=stdin,
            run_timeout_ms=timeout_ms,
            address_space_mb=memory_mb + lang.address_space_headroom_mb,
            memory_mb=limits.memory_mb,
            compile_timeout_ms=limits.compile_timeout_ms or self.compile_ms(lang),
            cpu_time_ms=self._settings.cpu_time_limit_s * 1000 if limits.cpu_time_ms is None else limits.cpu_time_ms,
            output_cap=self._settings.workdir_size_mb << 20 if build else None,
        )

    def _chmod(self, artifact: Artifact) -> list[str] | None:
        """A stage giving a build's files their modes where a cold sandbox cannot be given them, or None."""
        modes = [part for f in artifact.files if f.mode != SOURCE_MODE for part in (f"{f.mode:o}", f.name)]
        return None if self._file_modes or not modes else ["/bin/sh", "-c", CHMOD, "sh", *modes]

    def _spec(self, lang: Language, name: str, run: list[str], *, probe: bool = False) -> RunSpec:
        """The spec with the language's environment, package layer and /etc entries, and the server's limits."""
        env, layers = dict(lang.env), []
        layer = self._layers.get(lang.name)
        if layer is not None:
            # The layer as found at start-up: a later install is a new directory, so this one stays whole.
            inside = str(layer.path) if self._backend == "none" else packages.MOUNT
            layers.append((str(layer.path), inside))
            env.update(layer.env(inside))
        preload, preload_runs = self._preload(lang)
        return RunSpec(
            name=name,
            run=tuple(run),
            language=None if probe else lang.name,
            preload=preload,
            preload_runs=preload_runs,
            env=MappingProxyType(env),
            etc=self._etc_paths(lang),
            layers=tuple(layers),
            address_space_mb=self._memory_mb + lang.address_space_headroom_mb,
            compile_timeout_ms=self._settings.compile_timeout_ms,
            cpu_time_ms=self._settings.cpu_time_limit_s * 1000,
        )

    def _preload(self, lang: Language) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
        """The pre-started interpreter's command, with the heap of a job without a memory limit of its own (what a warm
        sandbox starts), and what else than that command less its code a job's run command must begin with to be run
        by it (`preload_runs`); none when its code is not there (java's class, built where javac is). Found once."""
        found = self._preloads.get(lang.name)
        if found is None:
            heap_mb = min(self._settings.memory_limit_mb, self._memory_mb) // 2
            if lang.preload is None or not preload_built(lang.preload[0]):
                found = (None, ())
            else:
                runs = tuple(lang.run_argv([], heap_mb=heap_mb)[: lang.preload_runs])
                found = (tuple(part.replace("{heap_mb}", str(heap_mb)) for part in lang.preload), runs)
            self._preloads[lang.name] = found
        return found

    def _etc_paths(self, lang: Language) -> tuple[str, ...]:
        """The language's /etc entries, globbed once (about 1 ms of CPU a job otherwise)."""
        paths = self._etc.get(lang.name)
        if paths is None:
            paths = self._etc[lang.name] = tuple(lang.etc_paths())
        return paths
