"""Warm pool: sandboxes started before their job, one job each, refilled in the background by recent demand.

A warm sandbox is the cold one (sandbox/runner.py) stopped at the last moment before it needs its job: the launcher
has joined its cgroups, dropped to the sandbox uid and a new keyring, bwrap has built the namespaces, mounts and the
syscall filter, and the C driver (`conveyor-run wait`) has made itself not dumpable and reported "ready". It then
blocks on a pipe. The job that takes it writes its arguments, environment and files there (driver.job_message),
and from that point on it is a cold run: the same limits, stages, reports, accounting (which starts at the stage's
start report, so the sandbox's own start-up is never the job's) and teardown, which destroys it. Nothing is reused.

The pool's processes are started by long-lived threads (REFILL_THREADS), not by an event loop: the sandbox outlives
the loop that happens to be running when it starts (tests share one Sandbox across loops), and bwrap's
--die-with-parent follows the thread that forked it, so those threads stay until close(). Their pipes stay raw
descriptors until a job takes one and attaches them to its own loop.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import process
from .cgroups import JobCgroup
from .driver import CHILD_PID
from .process import SandboxProcess

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 10.0  # a sandbox not ready by then is discarded (a busy two-core host starts one in ~10 ms)
DEMAND_WINDOW_S = 60.0  # takes counted for sizing; a language with none in DEMAND_KEEP_S gets no sandbox
DEMAND_KEEP_S = 600.0
IDLE_POLL_S = 1.0
BACKOFF_MAX_S = 30.0
# A top-up (its language has a sandbox ready) starts at this nice value, below running jobs; a sandbox that the next
# job would otherwise start cold for starts at 0, as that cold start would: it adds no load, only starts earlier (at
# nice 10 under sustained load it starved, and most jobs started cold). Taken sandboxes get 0.
REFILL_NICE = 10
# Sandboxes started at once. Two raised the hit rate (72 % against 50 %) but not the throughput on two cores, and a
# second start beside a running job made a sequential hello 2-2.3 ms slower (two runs on a quiet host, 2026-12-07,
# docs/benchmarks.md): one, with urgent starts at nice 0.
REFILL_THREADS = 1
READY = b"ready\n"


@dataclass(slots=True, eq=False)
class Warm:
    """One started sandbox waiting for its job: its launcher process, cgroup and pipe ends (raw, loop-free)."""

    language: str
    popen: subprocess.Popen[bytes]
    cgroup: JobCgroup | None
    child_pid: int  # bwrap's pid 1
    job: int  # write end: the job message
    stdin: int
    stdout: int
    stderr: int
    status: int  # read ends
    compile: int
    niced: bool
    # Pid 1's mount namespace, held so that its teardown is not pid 1's exit (see reaper.Reaper), or None.
    mount_ns: int | None = None
    # The driver (pid 1's one child before any job), or None when that was not clear: with the launcher and pid 1,
    # the processes of the sandbox's own (see execution.Run._whole_at_its_end).
    driver_pid: int | None = None
    # Set by the sandbox: the environment it started with, and whether an interpreter was started in it.
    env: dict[str, str] = field(default_factory=dict)
    preloaded: bool = False
    on_done: Callable[[], None] = field(default=lambda: None)

    @property
    def fds(self) -> list[int]:
        pipes = [self.job, self.stdin, self.stdout, self.stderr, self.status, self.compile]
        return pipes if self.mount_ns is None else [*pipes, self.mount_ns]

    def renice(self) -> None:
        """Back to the priority of a cold job, for the launcher's tree: two process groups, the launcher's (bwrap's
        monitor) and the one bwrap's --new-session made for pid 1, which the driver and a pre-started interpreter
        are in (nothing of the job has run yet to leave it). Two calls, where walking /proc took ten."""
        if not self.niced:
            return
        for group in (self.popen.pid, self.child_pid):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PGRP, group, 0)

    def alone(self) -> bool:
        """Whether no process is left in it but its own: the launcher (bwrap's monitor), pid 1 and the driver, none of
        which writes to the job's output. A process of the job's is pid 1's child (orphans are reparented to it) or
        the driver's. The driver's pid, were it freed by then, could be reused only by a process of the job made
        after its end, and it has none left to fork one."""
        if self.driver_pid is None:
            return False
        driven = children_or_none(self.driver_pid)  # before pid 1's: the driver's children are pid 1's once it exits
        # Twice: the kernel lists a process's children one at a time, and one reaped meanwhile (the driver, exiting)
        # can make it skip the next (get_children_pid).
        left = children_or_none(self.child_pid)
        return (
            left is not None
            and left == children_or_none(self.child_pid)
            and set(left) <= {self.driver_pid}
            and not driven
        )

    def discard(self) -> None:
        """Kill it and release everything it holds (never taken: nothing of a job's is lost)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.child_pid, signal.SIGKILL)
        end(self.popen, self.cgroup)
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


async def attach(warm: Warm, *, stdin: bool) -> tuple[SandboxProcess, list[asyncio.BaseTransport]]:
    """Hand a taken sandbox's stdio to the running loop; returns the process and the transports to close. Without
    `stdin` (the job writes none) the program's stdin is closed at once: it reads EOF, as a cold run's does."""
    if not stdin:
        os.close(warm.stdin)
    return await process.attach(warm.popen, warm.stdin if stdin else None, warm.stdout, warm.stderr)


class Demand:
    """Recent takes per language, and the pool's target for each within its budget."""

    def __init__(self, budget: int, per_language_max: int) -> None:
        self._budget = budget
        self._max = per_language_max
        self._takes: dict[str, deque[float]] = {}

    def record(self, language: str, now: float) -> None:
        self._takes.setdefault(language, deque(maxlen=1024)).append(now)

    def targets(self, now: float) -> dict[str, int]:
        """Every language used in DEMAND_KEEP_S gets one sandbox (most used first, while the budget lasts); what is
        left goes to the languages by their share of the last DEMAND_WINDOW_S, each at most per_language_max."""
        recent: dict[str, int] = {}
        for language, takes in list(self._takes.items()):
            while takes and takes[0] < now - DEMAND_KEEP_S:
                takes.popleft()
            if not takes:
                del self._takes[language]
                continue
            # Takes are recorded in time order (under the pool's lock), so the window's count is a bisection: the
            # refill asks for targets after every take, and counting 1,024 times one by one took 37 us, 2 us now.
            recent[language] = len(takes) - bisect.bisect_left(takes, now - DEMAND_WINDOW_S)
        ranked = sorted(recent, key=lambda name: (-recent[name], name))
        targets = {name: 1 for name in ranked[: self._budget]}
        spare, total = self._budget - len(targets), sum(recent.values())
        for name in ranked:
            if spare <= 0 or not total or name not in targets:
                break
            extra = min(math.ceil(spare * recent[name] / total), self._max - targets[name], spare)
            targets[name] += max(0, extra)
            spare -= max(0, extra)
        return targets


class WarmPool:
    """Ready sandboxes per language, taken by jobs and refilled by background threads."""

    def __init__(self, start: Callable[[str, bool], Warm], *, budget: int, per_language_max: int) -> None:
        self._start = start
        self._budget = budget
        self._demand = Demand(budget, per_language_max)
        self._ready: dict[str, deque[Warm]] = {}
        self._lock = threading.Condition()
        self._closed = False
        self.in_use = 0
        self.hits = 0
        self.misses = 0
        self.failures = 0
        self.refill_ms: float | None = None  # the last sandbox's start-to-ready time
        self._starting: dict[str, int] = {}  # sandboxes being started, per language
        self._threads = [
            threading.Thread(target=self._refill, name=f"conveyor-warm-pool-{i}", daemon=True)
            for i in range(REFILL_THREADS)
        ]
        for thread in self._threads:
            thread.start()

    def take(self, language: str) -> Warm | None:
        """A ready sandbox for `language`, or None (a miss: the job starts cold, as it would without a pool)."""
        with self._lock:
            self._demand.record(language, time.monotonic())
            ready = self._ready.get(language)
            warm = ready.popleft() if ready and not self._closed else None
            if warm is None:
                self.misses += 1
            else:
                self.hits += 1
                self.in_use += 1
                warm.on_done = self._done
            self._lock.notify()
        return warm

    def _done(self) -> None:
        with self._lock:
            self.in_use -= 1

    def stats(self) -> dict[str, Any]:
        """The pool's state for /health (WarmPool in openapi.json), /metrics and the dashboard."""
        with self._lock:
            targets = self._demand.targets(time.monotonic())
            languages = {
                name: {"ready": len(self._ready.get(name, ())), "target": targets.get(name, 0)}
                for name in sorted(set(targets) | {n for n, q in self._ready.items() if q})
            }
            return {
                "enabled": True,
                "budget": self._budget,
                "ready": sum(len(q) for q in self._ready.values()),
                "inUse": self.in_use,
                "hits": self.hits,
                "misses": self.misses,
                "failures": self.failures,
                "refillMs": None if self.refill_ms is None else round(self.refill_ms, 2),
                "languages": languages,
            }

    def close(self) -> None:
        """Stop refilling and destroy the ready sandboxes (taken ones finish with their jobs)."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        for thread in self._threads:
            thread.join()
        with self._lock:
            ready = [warm for queue in self._ready.values() for warm in queue]
            self._ready.clear()
        for warm in ready:
            warm.discard()

    def _next(self, stale: list[Warm]) -> str | None:
        """The language most short of its target, or None when every target is met or the budget is spent.
        Sandboxes past their language's target (its demand faded) go to `stale`, oldest first, freeing the budget."""
        targets = self._demand.targets(time.monotonic())
        for name, ready in self._ready.items():
            while len(ready) > targets.get(name, 0):
                stale.append(ready.popleft())
        if sum(len(q) for q in self._ready.values()) + sum(self._starting.values()) >= self._budget:
            return None
        short = {name: n - len(self._ready.get(name, ())) - self._starting.get(name, 0) for name, n in targets.items()}
        best = max(short, key=lambda n: short[n], default=None)
        return best if best is not None and short[best] > 0 else None

    def _refill(self) -> None:
        """One refill thread: start the sandbox most wanted, one at a time, until close()."""
        backoff = 0.0
        while True:
            stale: list[Warm] = []
            name: str | None = None
            urgent = False
            with self._lock:
                while not self._closed and not stale and (name := self._next(stale)) is None:
                    self._lock.wait(IDLE_POLL_S)
                closed = self._closed
                if name is not None and not closed:
                    urgent = not self._ready.get(name) and not self._starting.get(name)
                    self._starting[name] = self._starting.get(name, 0) + 1
            for warm in stale:
                warm.discard()
            if closed:
                return
            if name is None:
                continue
            if self._start_one(name, urgent):
                backoff = 0.0
                continue
            backoff = min(max(backoff * 2, 0.1), BACKOFF_MAX_S)
            logger.warning("warm pool: cannot start a %s sandbox; retrying in %.1f s", name, backoff)
            with self._lock:
                self._lock.wait(backoff)

    def _start_one(self, name: str, urgent: bool) -> bool:
        """Start one sandbox for `name` and make it ready (or discard it if the pool closed meanwhile); `urgent`: none
        is ready or starting for it, so the next job would start cold."""
        started = time.monotonic()
        warm = None
        try:
            warm = self._start(name, urgent)
        except Exception:
            logger.debug("warm pool: starting a %s sandbox failed", name, exc_info=True)
        with self._lock:
            self._starting[name] -= 1
            if warm is None:
                self.failures += 1
                return False
            self.refill_ms = (time.monotonic() - started) * 1000.0
            keep = not self._closed
            if keep:
                self._ready.setdefault(name, deque()).append(warm)
        if not keep:
            warm.discard()
        return True


def off() -> dict[str, Any]:
    """WarmPool.stats() of a server without a pool (WARM_POOL=0, SANDBOX=none, no C helper)."""
    return {"enabled": False, "budget": 0, "ready": 0, "inUse": 0, "hits": 0, "misses": 0, "failures": 0,
            "refillMs": None, "languages": {}}  # fmt: skip


def wait_ready(warm_popen: subprocess.Popen[bytes], status: int) -> int:
    """Block until the sandbox reports bwrap's pid 1 and the driver's "ready"; returns that pid.

    Raises RuntimeError on anything else: EOF (it failed to start), another line, or READY_TIMEOUT_S passing.
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    data = b""
    poller = select.poll()
    poller.register(status, select.POLLIN)
    while not data.endswith(READY) or data.count(b"\n") < 2:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise RuntimeError("not ready in time")
        chunk = os.read(status, 1024)
        if not chunk:
            raise RuntimeError(f"exited before it was ready (status {warm_popen.poll()})")
        data += chunk
        if len(data) > 2048:
            break
    line, _, rest = data.partition(b"\n")
    match = CHILD_PID.fullmatch(line + b"\n")
    if match is None or rest != READY:
        raise RuntimeError(f"unexpected start-up report {data[:200]!r}")
    return int(match.group(1))


def end(popen: subprocess.Popen[bytes], cgroup: JobCgroup | None) -> None:
    """Kill a sandbox's launcher tree and cgroup, reap the launcher and remove the cgroup (blocking, briefly)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    for child in children(popen.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
    if cgroup is not None:
        cgroup.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(READY_TIMEOUT_S)
    if cgroup is not None:
        cgroup.remove_now()


def children(pid: int) -> list[int]:
    """The children of a running process (its main thread's; bwrap's monitor is single-threaded)."""
    return children_or_none(pid) or []


def children_or_none(pid: int) -> list[int] | None:
    """`children`, or None when they could not be read (the process gone, or /proc refusing)."""
    try:
        fd = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return [int(child) for child in os.read(fd, 65536).split()]
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
