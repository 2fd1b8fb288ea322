"""Stages: a run's compile and run stages as its status pipe reports them: their deadlines and times, each stage's
CPU time and memory peak from the job's cgroup, the job-wide CPU limit, and a warm sandbox's go-aheads."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from .cgroups import JobCgroup
from .driver import CHILD_PID, EXIT_CODE, STAGE_END, STATUS_LINE_LIMIT
from .pipes import Lines
from .result import Outcome
from .spec import RunSpec

logger = logging.getLogger(__name__)

CPU_POLL_S = 0.01  # the job-wide CPU check's shortest interval, as the job nears its limit
CPUS = os.cpu_count() or 1  # read once: os.cpu_count() reads /sys each time, and CPUs come and go rarely
GO = b"g"  # a stage's go-ahead on a warm sandbox's job pipe (conveyor-run.c await_gate)


class Stages:
    """One run's stages, followed from the status pipe; `stop` ends the run early for a reason."""

    def __init__(self, spec: RunSpec, out: Outcome, stop: Callable[[str], None], *, bwrap: bool) -> None:
        self._spec = spec
        self._out = out
        self._stop = stop
        self._bwrap = bwrap
        self.cgroup: JobCgroup | None = None
        self.child_pid: int | None = None  # bwrap's pid 1, from --json-status-fd
        self.gate: asyncio.StreamWriter | None = None  # a warm sandbox's job pipe: a stage's go-ahead
        self.close_status: Callable[[], None] | None = None  # stop reading the status pipe and close it
        self._stage: str | None = None  # the stage being accounted, from its start report to its end
        self._armed: str | None = None  # a warm sandbox's first stage, begun and let go before its start report
        self._armed_at: float | None = None  # when that stage was let go: its clock starts there, not at the report
        self._cpu_base: int | None = None  # the job's cgroup CPU time when that stage started
        self._cpu_watch: asyncio.TimerHandle | None = None  # the job-wide CPU limit's next check
        self._peak_started = False  # the next stage's memory peak restarted already (a warm sandbox's, when ready)

    def arm(self) -> None:
        """A warm sandbox's first stage: its accounting starts before its job exists in the sandbox (the driver is
        idle until the message arrives), and the message ends with that stage's go-ahead: one round trip fewer. Its
        memory peak restarted when the sandbox became ready (warm.start_warm), idle since: not on the job's path."""
        self._armed = "compile" if self._spec.compile else "run"
        self._armed_at = asyncio.get_running_loop().time()
        self._peak_started = True
        self._begin_stage(self._armed)

    async def supervise(self, status: Lines) -> None:
        """Follow the driver's stage reports and stop the run when a stage outlives its deadline.

        The status pipe carries a handful of short lines, each expected in its order: bwrap's pid report, the
        driver's stage reports, and bwrap's exit report if the driver dies early. Anything else means a process of
        the job got hold of the pipe (the driver is not dumpable and pidfd_getfd is filtered, so it should not): the
        job ends at once with reason internal_error, and nothing more is read from it. Reads are bounded by
        STATUS_LINE_LIMIT, so no flood on this channel costs the server more than a line.
        """
        loop = asyncio.get_running_loop()
        expected = ["run-start", "run-end"]
        if self._spec.compile:
            expected[:0] = ["compile-start", "compile-end"]
        stage = expected[0].partition("-")[0]
        started = loop.time()
        while expected:
            line = await self._next_line(status, stage, started)
            if not line or EXIT_CODE.fullmatch(line):
                return  # stopped, or the driver is gone: the result comes from bwrap's exit status
            if self._bwrap and self.child_pid is None:
                if not self._child_pid(line):
                    return
                continue
            report = self._report(line, expected[0])
            if report is None:
                return
            stage, phase, detail = report
            expected.pop(0)
            now = loop.time()
            if phase == "start":
                started = self._stage_started(stage, now)
                continue
            if not self._stage_ended(stage, detail, now - started):
                return
            stage, started = "run", now

    async def _next_line(self, status: Lines, stage: str, started: float) -> bytes | None:
        """The status pipe's next line, or None once the run is stopped: the stage past its deadline, or a line
        longer than STATUS_LINE_LIMIT."""
        loop = asyncio.get_running_loop()
        try:
            # Not wait_for: on Python 3.11 it swallows a cancellation that arrives as the line does, and the
            # cancelled job would then run on to its end. Lines' deadline is a timer on its own waiter.
            return await status.readline(started + self._limit_s(stage))
        except TimeoutError:
            self._record_time(stage, loop.time() - started)
            self._stop("compile_timeout" if stage == "compile" else "timeout")
        except ValueError:
            self._unexpected(b"a line longer than %d bytes" % STATUS_LINE_LIMIT)
        return None

    def _child_pid(self, line: bytes) -> bool:
        """bwrap's pid report: it writes this before its pid 1 runs anything, so it is always the first line."""
        match = CHILD_PID.fullmatch(line)
        if match is None:
            self._unexpected(line)
            return False
        self.child_pid = int(match.group(1))
        return True

    def _report(self, line: bytes, expected: str) -> tuple[str, str, str] | None:
        """A stage report as (stage, phase, detail), or None when it is not the one expected (the run is stopped)."""
        event, _, detail = line.decode(errors="replace").removesuffix("\n").partition(" ")
        stage, _, phase = event.partition("-")
        if event != expected or (detail if phase == "start" else not STAGE_END.fullmatch(detail)):
            self._unexpected(line)
            return None
        return stage, phase, detail

    def _stage_ended(self, stage: str, detail: str, seconds: float) -> bool:
        """Record a stage's end; whether the run stage follows."""
        self._record_time(stage, seconds)
        if stage == "run":
            self._out.run_status = detail
            return False
        self._out.compile_status = detail
        if self._stage is not None:
            self.account()
        return detail == "exit 0"

    def _unexpected(self, data: bytes) -> None:
        logger.error("%s: unexpected data on the status pipe (%r); ending the job", self._spec.name, data[:100])
        self._stop("internal_error")
        # Nothing more is read from it: closed, so that a writer (bwrap's monitor reporting the exit, once the pipe
        # is full) fails at once rather than blocking, and the job's teardown does not wait on it.
        if self.close_status is not None:
            self.close_status()

    def _stage_started(self, stage: str, now: float) -> float:
        """Begin a stage's accounting and let it go; returns when its clock started. A stage let go with the job
        message has run since then: its start report may arrive together with its end report, so timing it from the
        report would measure nothing."""
        if stage == self._armed:
            self._armed = None  # begun before the job message, which carried its go-ahead
            return self._armed_at if self._armed_at is not None else now
        self._begin_stage(stage)
        self._release()
        return now

    def _release(self) -> None:
        """A warm sandbox's driver waits after each start report until the stage's accounting has begun."""
        gate = self.gate
        if gate is not None and not gate.transport.is_closing():
            gate.write(GO)

    def _begin_stage(self, stage: str) -> None:
        """Start a stage's accounting (the driver's own start-up is not the program's), and the job-wide CPU limit
        for the run stage."""
        cgroup = self.cgroup
        if cgroup is None:
            return
        if not self._peak_started:
            cgroup.start_stage()
        self._peak_started = False
        self._stage, self._cpu_base = stage, cgroup.cpu_ns()
        if stage == "run" and self._cpu_base is not None:
            self._check_cpu(cgroup, self._cpu_base, self._cpu_base)

    def account(self) -> None:
        """Record the stage's CPU time and memory peak, read from the job's cgroup."""
        assert self.cgroup is not None
        used, peak = self.cgroup.cpu_ns(), self.cgroup.memory_peak()
        cpu_ms = None if used is None or self._cpu_base is None else (used - self._cpu_base) / 1e6
        if self._stage == "compile":
            self._out.compile_cpu_time_ms, self._out.compile_memory_peak_bytes = cpu_ms, peak
        else:
            self._out.cpu_time_ms, self._out.memory_peak_bytes = cpu_ms, peak
        self._stage = None

    def finish(self) -> None:
        """Once the whole tree is gone, background processes included: the last stage's figures (a stage begun early
        that never started has none)."""
        if self._stage is not None and self._armed is None:
            self.account()

    def stop_watching(self) -> None:
        """The run is ending (or torn down): no more CPU checks."""
        if self._cpu_watch is not None:
            self._cpu_watch.cancel()
            self._cpu_watch = None

    def _check_cpu(self, cgroup: JobCgroup, base: int, used: int | None) -> None:
        """End the job with reason cpu_limit once its whole process tree has used its CPU time (CPU_TIME_LIMIT_S, or
        less when the job asked).

        RLIMIT_CPU is per process: a job that keeps forking short-lived spinners never meets it. The job cannot use
        more than one CPU-second per CPU each second, so the next check is due no sooner than the CPU time left
        divided by the CPUs: few reads, and the overrun is at most CPU_POLL_S on each CPU. A timer, not a task: one
        callback per check (the first, due after the whole limit / cpus, is all a short job ever schedules).
        """
        self._cpu_watch = None
        if used is None:
            return
        limit = self._spec.cpu_time_ms * 1_000_000
        if used - base < limit:
            delay = max((limit - (used - base)) / 1e9 / CPUS, CPU_POLL_S)
            self._cpu_watch = asyncio.get_running_loop().call_later(delay, self._recheck_cpu, cgroup, base)
            return
        logger.info("%s: used %.0f ms of CPU, over its limit; ending it", self._spec.name, (used - base) / 1e6)
        self._stop("cpu_limit")

    def _recheck_cpu(self, cgroup: JobCgroup, base: int) -> None:
        try:
            used = cgroup.cpu_ns()
        except Exception:  # the task's old failure mode: the check ends, logged, and the run goes on
            logger.exception("%s: reading the job's CPU time failed", self._spec.name)
            self._cpu_watch = None
            return
        self._check_cpu(cgroup, base, used)

    def _limit_s(self, stage: str) -> float:
        return (self._spec.compile_timeout_ms if stage == "compile" else self._spec.run_timeout_ms) / 1000.0

    def _record_time(self, stage: str, seconds: float) -> None:
        if stage == "compile":
            self._out.compile_time_ms = seconds * 1000.0
        else:
            self._out.run_time_ms = seconds * 1000.0
