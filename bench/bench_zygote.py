"""What a zygote would cost (issue 25's direction, measured, not built): a booted python forking a single-use child
into fresh user, mount, network, IPC, UTS and pid namespaces (its own uid mapped, a private mount tree, a tmpfs /tmp,
then pid 1 of its pid namespace running the program), against one bare bwrap + python3 start. The child here has no
seccomp filter, cgroup, rlimits or bind-mounted root (its uid map is written by the parent, as bwrap's helper or a real
zygote would): the floor of the design, not its cost.

Run by hand, as root (it maps an arbitrary uid): `python -m bench zygote`. Ratios in one run: wall time per start
(median of ROUNDS x STARTS, alternating) and the host's busy CPU per start (/proc/stat, all processes).
"""

from __future__ import annotations

import ctypes
import os
import statistics
import subprocess
import sys
import time

from bench.bench_sandbox import BARE_ARGV

ROUNDS, STARTS = 3, 100
UID = 65_000  # the child's uid on the host (any unused one)
NEWNS, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET = 0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def _child(code: str, unshared: int, mapped: int) -> None:
    """In the forked child: its namespaces, its uid (mapped by the parent: a process may map only its own uid into a
    namespace it made), its mounts; then pid 1 of its pid namespace runs `code`."""
    _check(libc.unshare(NEWUSER | NEWNS | NEWNET | NEWIPC | NEWUTS | NEWPID))
    os.write(unshared, b"u")
    if os.read(mapped, 1) != b"m":
        os._exit(98)
    os.setresgid(0, 0, 0)  # from host root to the mapped uid: 0 in the namespace, UID on the host
    os.setresuid(0, 0, 0)
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None))
    _check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, b"size=16m"))
    pid = os.fork()
    if pid == 0:
        exec(compile(code, "<job>", "exec"), {"__name__": "__main__"})
        sys.stdout.flush()
        os._exit(0)
    os._exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))


def zygote_start() -> None:
    read, write = os.pipe()
    unshared_r, unshared_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(write, 1)
        try:
            _child("print(1)", unshared_w, mapped_r)
        except BaseException as exc:
            os.write(2, repr(exc).encode())
            os._exit(99)
    for fd in (write, unshared_w, mapped_r):
        os.close(fd)
    if os.read(unshared_r, 1) == b"u":
        for name, text in (("setgroups", b"deny"), ("uid_map", b"0 %d 1" % UID), ("gid_map", b"0 %d 1" % UID)):
            fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY)
            try:
                os.write(fd, text)
            finally:
                os.close(fd)
        os.write(mapped_w, b"m")
    os.close(unshared_r)
    os.close(mapped_w)
    out = b""
    while chunk := os.read(read, 4096):
        out += chunk
    os.close(read)
    status = os.waitpid(pid, 0)[1]
    if out != b"1\n" or status != 0:
        raise RuntimeError(f"zygote child failed: {out!r}, status {status}")


def bare_start() -> None:
    out = subprocess.run(BARE_ARGV, capture_output=True, check=True).stdout
    if out != b"1\n":
        raise RuntimeError(f"bare bwrap failed: {out!r}")


def _busy_ticks() -> int:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def measure() -> dict[str, dict[str, float]]:
    starts = {"zygote": zygote_start, "bare": bare_start}
    walls: dict[str, list[float]] = {name: [] for name in starts}
    cpu: dict[str, list[float]] = {name: [] for name in starts}
    for _ in range(ROUNDS):
        for name, start in starts.items():
            before = _busy_ticks()
            for _ in range(STARTS):
                began = time.perf_counter()
                start()
                walls[name].append((time.perf_counter() - began) * 1000)
            cpu[name].append((_busy_ticks() - before) / os.sysconf("SC_CLK_TCK") / STARTS * 1000)
    return {
        name: {"wall_ms": statistics.median(walls[name]), "cpu_ms": statistics.median(cpu[name])} for name in starts
    }


def main() -> dict[str, dict[str, float]]:
    if os.geteuid() != 0:
        print("bench zygote: needs root (it maps an arbitrary uid)")
        return {}
    load = os.getloadavg()[0]
    figures = measure()
    zygote, bare = figures["zygote"], figures["bare"]
    print(f"load average {load:.2f}; {ROUNDS} rounds of {STARTS} starts each, alternating")
    for name, figure in figures.items():
        print(f"  {name:<7} wall {figure['wall_ms']:6.2f} ms a start (median)   host CPU {figure['cpu_ms']:6.2f} ms")
    wall, cpu = zygote["wall_ms"] / bare["wall_ms"], zygote["cpu_ms"] / bare["cpu_ms"]
    print(f"  zygote / bare: wall {wall:.2f}x, CPU {cpu:.2f}x")
    return figures


if __name__ == "__main__":
    main()
