"""Seccomp: the syscall filter every job runs under, built with libseccomp and handed to bubblewrap as BPF."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

INSTALL_HINT = "libseccomp is needed for the syscall filter: apt-get install libseccomp2"

# Refused with EPERM whatever their arguments. A program never needs these, and each is either a way out of the
# sandbox's view (other processes' memory and fds, the host's keyrings), a kernel interface with a long record of
# privilege escalations (io_uring, bpf, userfaultfd, perf), or something only an administrator does.
DENIED = {
    "keyrings (shared with the host, not namespaced)": ("keyctl", "add_key", "request_key"),
    "asynchronous I/O that bypasses this filter": ("io_uring_setup", "io_uring_enter", "io_uring_register"),
    "other processes' memory, fds and state": (
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "pidfd_getfd",
        "process_madvise",
        "kcmp",
    ),
    "kernel attack surface": (
        "perf_event_open",
        "userfaultfd",
        "bpf",
        "fanotify_init",
        "open_by_handle_at",
        "modify_ldt",
    ),
    "kernels and modules": ("kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module"),
    "mounts": (
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "open_tree",
        "move_mount",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "mount_setattr",
    ),
    "namespaces": ("setns", "unshare"),
    "system administration": (
        "reboot",
        "swapon",
        "swapoff",
        "acct",
        "quotactl",
        "quotactl_fd",
        "syslog",
        "settimeofday",
        "clock_settime",
        "iopl",
        "ioperm",
        "lookup_dcookie",
        "uselib",
        "ustat",
        "sysfs",
        "_sysctl",
        "nfsservctl",
        "vm86",
        "vm86old",
    ),
}
# clone3 passes its flags in a struct the filter cannot read: ENOSYS, so glibc and runtimes fall back to clone,
# whose flags it can.
NOT_IMPLEMENTED = ("clone3",)
CLONE_NAMESPACES = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
SOCKET_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10}
PERSONALITY_QUERY = 0xFFFFFFFF
# What our perl helpers call by number (perl's syscall()), for the native architecture.
NUMBERED = ("prctl", "keyctl")


@dataclass(frozen=True, slots=True)
class SyscallFilter:
    """The compiled filter and what it does, for GET /health and docs/security.md."""

    bpf: bytes
    arch: str
    denied: tuple[str, ...]  # the names in DENIED that exist on this architecture
    numbers: dict[str, int]  # NUMBERED -> native number

    def describe(self) -> dict[str, Any]:
        return {
            "builtWith": "libseccomp",
            "defaultAction": "allow",
            "deniedEperm": list(self.denied),
            "deniedEnosys": list(NOT_IMPLEMENTED),
            "personality": "query only (0xffffffff)",
            "clone": "refused with namespace flags: " + ", ".join(CLONE_NAMESPACES),
            "socketFamilies": list(SOCKET_FAMILIES),
            "arch": f"{self.arch} only; other ABIs (on x86-64: i386 and x32) kill the process",
        }


def build() -> SyscallFilter:
    """Compile the filter for the native architecture. Raises RuntimeError naming the package when libseccomp is
    missing."""
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError, OSError) as exc:
        raise RuntimeError(f"{INSTALL_HINT} ({exc})") from None
    native = sc.system_arch()
    flt = sc.SyscallFilter(sc.ALLOW)
    # A syscall of another ABI (int 0x80, or x32's numbers with bit 30 set on x86-64) does not match the native
    # architecture: libseccomp's filter then applies this action. Killing is what a program that tries gets.
    flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    eperm = sc.ERRNO(errno.EPERM)
    denied = []
    for names in DENIED.values():
        for name in names:
            if sc.resolve_syscall(native, name) >= 0:  # pseudo-numbers (< 0): not on this architecture
                flt.add_rule(eperm, name)
                denied.append(name)
    for name in NOT_IMPLEMENTED:
        flt.add_rule(sc.ERRNO(errno.ENOSYS), name)
    flt.add_rule(eperm, "personality", sc.Arg(0, sc.NE, PERSONALITY_QUERY))
    flags_arg = 1 if native in (sc.Arch.S390, sc.Arch.S390X) else 0  # s390 swaps clone's first two arguments
    for flag in CLONE_NAMESPACES.values():
        flt.add_rule(eperm, "clone", sc.Arg(flags_arg, sc.MASKED_EQ, flag, flag))
    # One comparison per rule (libseccomp's limit): every family above AF_INET6 (and any value with high bits set,
    # which the kernel would truncate to an int), then each one below it that is not allowed.
    no_family = sc.ERRNO(errno.EAFNOSUPPORT)
    allowed = set(SOCKET_FAMILIES.values())
    for call in ("socket", "socketpair"):
        flt.add_rule(no_family, call, sc.Arg(0, sc.GT, max(allowed)))
        for family in range(max(allowed)):
            if family not in allowed:
                flt.add_rule(no_family, call, sc.Arg(0, sc.EQ, family))
    numbers = {name: sc.resolve_syscall(native, name) for name in NUMBERED}
    return SyscallFilter(bpf=_export(flt), arch=_arch_name(native), denied=tuple(denied), numbers=numbers)


def _export(flt: Any) -> bytes:
    fd = os.memfd_create("conveyor-seccomp")
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            flt.export_bpf(out)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _arch_name(token: int) -> str:
    import pyseccomp as sc

    names: dict[int, str] = {
        value: name.lower() for name, value in vars(sc.Arch).items() if name.isupper() and name != "NATIVE"
    }
    return names.get(token, hex(token))
