"""Start-up: what the sandbox checks on this host before it takes a job (bwrap works, a language's toolchain
answers), and the one-line refusals when jobs cannot run safely here."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import SandboxUnavailable
from ..settings import Settings
from . import hostpaths, seccomp
from .cgroups import Cgroups
from .command import HELPER_TASKS, PATH
from .languages import Language
from .result import Outcome

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "bubblewrap must be installed (apt-get install bubblewrap) and able to create user namespaces "
    "(sysctl user.max_user_namespaces>0, kernel.unprivileged_userns_clone=1 on Debian kernels, "
    "kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu 24.04+); SANDBOX=none is for development only"
)
VERSION = re.compile(r"\d+(?:\.\d+)+")
PROBE_CONCURRENCY = 4  # start-up probes at once: 50 languages take about 4 s this way on 2 cores


async def prerequisites(settings: Settings, *, cgroups: bool) -> tuple[seccomp.SyscallFilter, Cgroups | None]:
    """What every sandbox needs from the host: prlimit and perl, the syscall filter, and (unless `cgroups` is
    False) this server's cgroups."""
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
    return syscall_filter, groups


@dataclass(frozen=True, slots=True)
class Bwrap:
    """bubblewrap as found here."""

    version: str | None
    help: str  # its --help: which options it has
    root_only: bool  # it works only for root here: jobs then run as host root in a user namespace (warned)


async def check_bwrap(bwrap: str | None, roots: Iterable[str], privdrop: list[str]) -> Bwrap:
    """Whether bwrap makes a sandbox here, run as jobs run it (after `privdrop`, when the server is root)."""
    if bwrap is None:
        raise SandboxUnavailable("bwrap not found on PATH: " + INSTALL_HINT)
    version = (await capture([bwrap, "--version"]))[1].strip().removeprefix("bubblewrap ") or None
    usage = (await capture([bwrap, "--help"]))[1]
    argv = [bwrap, "--unshare-all", "--unshare-user", "--ro-bind", "/usr", "/usr", *roots, "true"]
    code, out = await capture(privdrop + argv)
    if code == 0:
        return Bwrap(version, usage, root_only=False)
    detail = out.strip().splitlines()[-1] if out.strip() else f"exit {code}"
    if privdrop and (await capture(argv))[0] == 0:
        logger.warning(
            "bubblewrap works only for root here (%s): sandboxed processes run as host root in a user namespace "
            "and RLIMIT_NPROC does not bind them; allow unprivileged user namespaces to run them as nobody",
            detail,
        )
        return Bwrap(version, usage, root_only=True)
    raise SandboxUnavailable(f"bubblewrap cannot create a sandbox here ({detail}): {INSTALL_HINT}")


async def probe_languages(
    languages: Mapping[str, Language], probe: Callable[[Language], Awaitable[Outcome]], *, backend: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Each language's version command run by `probe` inside the sandbox: the versions of those that work, and
    what the others said (for no_toolchain). Logs what is offered and what is configured but not."""
    # A few at a time: fifty sandboxes at once took more descriptors than a 256-file limit (every probe then
    # failed with EMFILE) and started a dozen JVMs on two cores.
    gate = asyncio.Semaphore(PROBE_CONCURRENCY)
    failures: dict[str, str] = {}

    async def version(lang: Language) -> str | None:
        async with gate:
            try:
                out = await probe(lang)
            except OSError as exc:  # the launcher itself could not start (a noexec mount, a missing binary)
                found, said = None, str(exc)
            else:
                found, said = version_of(out)
        if found is None:
            failures[lang.name] = said
            logger.info("language %s unavailable: %s", lang.name, said)
        return found

    langs = list(languages.values())
    found = await asyncio.gather(*(version(lang) for lang in langs))
    versions = {lang.name: v for lang, v in zip(langs, found, strict=True) if v}
    if versions:
        offered = ", ".join(f"{n} {v}" for n, v in sorted(versions.items()))
        logger.info("sandbox %s ready: %d languages: %s", backend, len(versions), offered)
    missing = sorted(set(languages) - set(versions))
    if versions and missing:
        logger.info(
            "languages configured but not offered: %s (python -m server languages install %s)",
            ", ".join(missing),
            " ".join(missing),
        )
    return versions, failures


def version_of(out: Outcome) -> tuple[str | None, str]:
    """A probe's outcome: the toolchain's version, or None and what it said instead."""
    text = out.stdout + out.stderr
    match = VERSION.search(text)
    if out.run_status != "exit 0" or match is None:
        return None, (text.strip() or out.reason or out.run_status or "no output")[:200]
    return match.group(0), ""


def no_toolchain(bound: Iterable[Path], failures: dict[str, str]) -> str:
    """Why no language works: a bound path the jobs' uid cannot reach (`bound` is empty when jobs run as the
    server's uid), else what the probes said."""
    for path in bound:
        blocked = hostpaths.unreachable(path)
        if blocked is not None:
            return (
                f"jobs run as unprivileged uids, which cannot reach {path} ({blocked} is closed to other "
                f"users): chmod o+rx {blocked}, or keep that file outside it"
            )
    said = "; ".join(f"{name}: {text}" for name, text in sorted(failures.items()))
    return f"no language toolchain works inside the sandbox ({said or 'no language configured'})"


def no_memory_cgroup(problem: str | None) -> str:
    """The start-up refusal without a memory cgroup: the cause found, and the ways out."""
    cause = f": {problem}" if problem else ""
    return (
        f"no memory cgroup for per-job limits{cause}. RLIMIT_AS alone is per process (a job of 16 processes could use "
        "16 times MEMORY_LIMIT_MB). Run the server as root, or as a user whose systemd user manager delegates memory "
        "(make run from a login session), or as a systemd service with Delegate=yes (deploy/conveyor.service); or set "
        "ALLOW_PER_PROCESS_LIMITS=1 to accept per-process limits of MEMORY_LIMIT_MB / MAX_PROCESSES each"
    )


def root_links() -> tuple[str, ...]:
    """/bin, /lib* and /sbin as on the host: symlinks into /usr (merged /usr), else read-only binds."""
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/", name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return tuple(args)


async def capture(argv: list[str]) -> tuple[int, str]:
    """Run a short host command; exit code and combined output."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        return 127, str(exc)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")
