"""Health: the sandbox's backend and every limit with how this host enforces it (GET /health's `sandbox`)."""

from __future__ import annotations

import os
from typing import Any

from .command import Host
from .seccomp import SyscallFilter
from .spec import SANDBOX_UID


def describe(
    host: Host,
    *,
    memory_by: str | None,
    pids_by: str | None,
    cpu_by: str | None,
    memory_mb: int,
    bwrap_version: str | None,
    syscall_filter: SyscallFilter,
) -> dict[str, Any]:
    """The backend and every limit: `memory_by`, `pids_by` and `cpu_by` are the cgroups that enforce them (None:
    rlimits only), `memory_mb` what one job (or without a memory cgroup one process) may use."""
    s = host.settings
    bwrap = host.backend == "bwrap"
    host_uid = SANDBOX_UID if host.drops_privileges else os.geteuid()
    return {
        "backend": host.backend,
        "bwrapVersion": bwrap_version,
        "hostUid": host_uid,
        "hostUids": _host_uids(host),
        "sandboxUid": SANDBOX_UID if bwrap else host_uid,
        "network": "none (empty network namespace)" if bwrap else "host (SANDBOX=none)",
        "syscallFilter": syscall_filter.describe() if bwrap else None,
        "keyring": "a new empty session keyring for each job",
        "stageDriver": "not dumpable (its pipes are out of the program's reach)",
        "launcher": "conveyor-run (C helper)" if host.helper else "sh, setpriv, perl, prlimit (no C helper built)",
        "limits": {
            "memory": _memory(memory_by, memory_mb, s.memory_limit_mb),
            "processes": _processes(host, pids_by, host_uid),
            "cpu": {"limitS": s.cpu_time_limit_s, "enforcedBy": _cpu(cpu_by)},
            "fileSize": {"limitMb": s.max_file_size_mb, "enforcedBy": "RLIMIT_FSIZE"},
            "openFiles": {"limit": s.max_open_files, "enforcedBy": "RLIMIT_NOFILE"},
            "output": {"limitBytes": s.max_output_bytes, "enforcedBy": "executor kills the job past the cap"},
            "wallTime": {
                "defaultMs": s.job_timeout_ms,
                "compileMs": s.compile_timeout_ms,
                "enforcedBy": "executor kills the process tree",
            },
            "workdir": {"limitMb": s.workdir_size_mb, "enforcedBy": _workdir(host)},
        },
    }


def _memory(memory_by: str | None, memory_mb: int, limit_mb: int) -> dict[str, Any]:
    memory: dict[str, Any] = {"limitMb": limit_mb, "enforcedBy": memory_by or "RLIMIT_AS"}
    if memory["enforcedBy"] == "RLIMIT_AS":
        memory["perProcessMb"] = memory_mb
        memory["note"] = (
            "ALLOW_PER_PROCESS_LIMITS: address space of each process, MEMORY_LIMIT_MB / MAX_PROCESSES; java and "
            "javascript get headroom and cap their heap themselves"
        )
    return memory


def _processes(host: Host, pids_by: str | None, host_uid: int) -> dict[str, Any]:
    processes = {"limit": host.settings.max_processes, "counts": "tasks (threads too)", "enforcedBy": pids_by}
    if processes["enforcedBy"] is None:
        scope = "per job user namespace" if host.backend == "bwrap" else f"all of uid {host_uid} on the host"
        processes["enforcedBy"] = f"RLIMIT_NPROC ({scope})" if host_uid else "none (root is exempt)"
    return processes


def _cpu(cpu_by: str | None) -> str:
    return f"{cpu_by} (the whole job), RLIMIT_CPU (each process)" if cpu_by else "RLIMIT_CPU (each process)"


def _workdir(host: Host) -> str:
    if host.backend == "none":
        return "not capped (SANDBOX=none: a host temp dir; RLIMIT_FSIZE per file)"
    return "tmpfs size" if "--size" in host.bwrap_help else "memory only (bwrap without --size)"


def _host_uids(host: Host) -> str:
    if not host.drops_privileges:
        return "the server's own: jobs share it (only a root server can give each sandbox its own)"
    if host.backend != "bwrap" or host.uids.count == 0:
        return f"{SANDBOX_UID} for every sandbox"
    first, last = host.uids.base, host.uids.base + host.uids.count - 1
    return f"one of {first}-{last} for each sandbox (SANDBOX_UID_BASE, SANDBOX_UIDS), {SANDBOX_UID} inside"
