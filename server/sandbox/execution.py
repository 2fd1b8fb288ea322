"""Execution: one sandboxed process tree, from spawn through streamed output and stage deadlines to teardown."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import shutil
import signal
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..settings import Settings
from .cgroups import JobCgroup
from .contract import JobIO, Stream
from .driver import CHILD_PID, EXIT_CODE, STAGE_END, STATUS_LINE_LIMIT
from .pool import Warm, WarmProcess, attach, children, reader, writer
from .spawn import Fds, above_stdio, sandbox_fds, workdir

logger = logging.getLogger(__name__)

READ_SIZE = 65536
CHUNK = 16384  # largest piece handed to on_output, so one flood cannot become one huge event
EXIT_GRACE_S = 2.0
CPU_POLL_S = 0.01  # the job-wide CPU check's shortest interval, as the job nears its limit
GO = b"g"  # a stage's go-ahead on a warm sandbox's job pipe (conveyor-run.c await_gate)


@dataclass(slots=True)
class Spec:
    """What to run once: a job, or a start-up probe."""

    name: str
    run: list[str]
    compile: list[str] | None = None
    language: str | None = None  # a job's (a warm sandbox of it may run the job); None for a start-up probe
    # The job's files, relative to the work dir (validated by payloads: no absolute paths, no `..`).
    files: list[tuple[str, bytes]] = field(default_factory=list)
    # A build to unpack into the work dir before the program runs (in place of the compile stage).
    artifact: bytes | None = None
    env: dict[str, str] = field(default_factory=dict)
    etc: list[str] = field(default_factory=list)
    # Read-only directories mounted into the sandbox: (host path, path inside), e.g. a package layer.
    layers: list[tuple[str, str]] = field(default_factory=list)
    address_space_mb: int = 0
    memory_mb: int | None = None  # the job's own memory limit, when below the server's
    compile_timeout_ms: int = 10_000
    run_timeout_ms: int = 10_000
    cpu_time_ms: int = 10_000  # the whole process tree's CPU time (RLIMIT_CPU per process, rounded up, too)
    stdin: bytes = b""
    output_cap: int | None = None  # stdout+stderr cap, when not MAX_OUTPUT_BYTES (a packed build)

    @property
    def directories(self) -> list[str]:
        """The directories the files need, parents first."""
        dirs = {
            "/".join(parts[:depth])
            for name, _ in self.files
            for parts in [name.split("/")]
            for depth in range(1, len(parts))
        }
        return sorted(dirs, key=lambda d: (d.count("/"), d))


@dataclass(slots=True)
class Outcome:
    """What one run observed, before it is mapped to an ExecutionResult."""

    stdout: str = ""
    stderr: str = ""
    stdout_bytes: bytes = b""  # exactly what the program wrote (within the cap), for binary-safe output
    stderr_bytes: bytes = b""
    compile_output: str = ""
    compile_output_bytes: bytes = b""
    truncated: bool = False
    reason: str | None = None  # timeout, compile_timeout, output_limit: set when the executor stopped the job
    compile_status: str | None = None  # "exit 0", "signal 9", ...
    run_status: str | None = None
    returncode: int | None = None  # of the launcher/bwrap, used only when the driver could not report
    oom_killed: bool = False
    compile_time_ms: float | None = None
    run_time_ms: float | None = None
    # From the job's cgroup, per stage; None without cgroups.
    cpu_time_ms: float | None = None
    memory_peak_bytes: int | None = None
    compile_cpu_time_ms: float | None = None
    compile_memory_peak_bytes: int | None = None


class Launcher(Protocol):
    """What a run needs from the executor that starts it (the Sandbox): its host set-up and the command line."""

    @property
    def backend(self) -> str: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def drops_privileges(self) -> bool:
        """Whether jobs run as SANDBOX_UID on the host too, so a SANDBOX=none work dir must be theirs."""
        ...

    @property
    def seccomp_bpf(self) -> bytes | None:
        """The syscall filter to hand to bwrap, or None (SANDBOX=none)."""
        ...

    def job_cgroup(self, name: str, memory_mb: int | None = None) -> JobCgroup | None:
        """Create the job's cgroup, or None when only rlimits apply."""
        ...

    def argv(self, spec: Spec, fds: Fds, cgroup: JobCgroup | None) -> list[str]: ...

    def take_warm(self, spec: Spec) -> Warm | None:
        """A warm sandbox for the spec, ready for its job message, or None to start a cold one."""
        ...

    def job_message(self, spec: Spec, warm: Warm) -> bytes:
        """What a warm sandbox's driver reads: the spec's driver arguments, environment and files."""
        ...

    def restrict(self, cgroup: JobCgroup, memory_mb: int) -> None:
        """Lower a warm sandbox's cgroup memory limit to the job's."""
        ...

    def warm_argv(self, spec: Spec, fds: Fds, cgroup: JobCgroup | None, job_fd: int, *, nice: int) -> list[str]:
        """argv() for a warm sandbox: its driver waits for the job message on job_fd."""
        ...

    def env(self, spec: Spec, workdir: str | None) -> dict[str, str]: ...


class Run:
    """One sandboxed process tree: spawn it, stream its output, enforce the stage deadlines, tear it down."""

    def __init__(self, launcher: Launcher, spec: Spec, io: JobIO | None) -> None:
        self._launcher = launcher
        self._spec = spec
        self._io = io
        self._out = Outcome()
        self._cap = spec.output_cap or launcher.settings.max_output_bytes
        self._used = 0
        self._raw: dict[Stream, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._compile_output = bytearray()
        self._proc: asyncio.subprocess.Process | WarmProcess | None = None
        self._warm: Warm | None = None  # the warm sandbox this run took, if it did
        self._sender: asyncio.Task[None] | None = None  # writes the job message to a warm sandbox
        self._gate: asyncio.StreamWriter | None = None  # that sandbox's job pipe: a stage's go-ahead
        self._cgroup: JobCgroup | None = None
        self._workdir: str | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self._readers: list[asyncio.Future[Any]] = []  # output pumps and the process exit
        self._feeder: asyncio.Task[None] | None = None
        self._child_pid: int | None = None  # bwrap's pid 1, from --json-status-fd
        self._spawning: asyncio.Future[asyncio.subprocess.Process | WarmProcess] | None = None  # cancelled midway
        self._raw_fds: list[int] = []  # pipe read ends not yet handed to a transport
        self._draining = False
        self._stage: str | None = None  # the stage being accounted, from its start report to its end
        self._armed: str | None = None  # a warm sandbox's first stage, begun and let go before its start report
        self._armed_at: float | None = None  # when that stage was let go: its clock starts there, not at the report
        self._cpu_base: int | None = None  # the job's cgroup CPU time when that stage started
        self._cpu_watch: asyncio.Task[None] | None = None
        self._status_pipe: asyncio.BaseTransport | None = None

    async def start_and_wait(self) -> Outcome:
        status_fd, compile_fd = await self._spawn()
        proc = self._proc
        assert proc is not None
        status = await self._reader(status_fd, limit=STATUS_LINE_LIMIT)
        self._status_pipe = self._transports[-1]
        self._readers.append(asyncio.ensure_future(self._collect(await self._reader(compile_fd))))
        self._feeder = asyncio.create_task(self._feed())
        await self._supervise(status)
        if self._cpu_watch is not None:
            self._cpu_watch.cancel()
        # The program has ended, failed to compile, or is being stopped. Left alone, the driver's exit makes
        # bwrap's monitor exit and --die-with-parent takes pid 1 and every background process with it; killing pid
        # 1 now does the same without trusting the driver's report. Output already written stays readable.
        self.kill()
        await self._settle()
        if self._stage is not None and self._armed is None:  # (a stage begun early that never started has no figures)
            self._account()  # now that the whole tree is gone, background processes included
        out = self._out
        out.returncode = proc.returncode
        out.stdout_bytes, out.stderr_bytes = bytes(self._raw["stdout"]), bytes(self._raw["stderr"])
        out.stdout, out.stderr = _text(out.stdout_bytes, out.truncated), _text(out.stderr_bytes, out.truncated)
        out.compile_output_bytes = bytes(self._compile_output)
        out.compile_output = out.compile_output_bytes.decode(errors="replace")
        out.oom_killed = self._cgroup is not None and self._cgroup.oom_killed()
        return out

    async def _settle(self) -> None:
        """Wait until the process has exited and its pipes are drained, killing harder if that does not happen.

        Once bwrap's pid 1 is gone the kernel has killed every process of the job's pid namespace, so the pipes
        close at once; only SANDBOX=none (without cgroups) can leave stragglers holding them.
        """
        for _ in range(2):
            _, pending = await asyncio.wait(self._readers, timeout=EXIT_GRACE_S)
            if not pending:
                return
            logger.warning("%s: still running or holding its pipes after it was ended; killing", self._spec.name)
            self._kill_all()
        logger.error("%s: process tree did not go away", self._spec.name)

    async def _spawn(self) -> tuple[int, int]:
        """Start the launcher (or take a warm sandbox) and the output pumps; returns the read ends of the status and
        compiler pipes."""
        launcher, spec = self._launcher, self._spec
        taken = await self._take_warm()
        if taken is not None:
            warm, message = taken
            self._warm, self._cgroup, self._child_pid = warm, warm.cgroup, warm.child_pid
            self._raw_fds = [warm.status, warm.compile]
            # The first stage's accounting starts before its job exists in the sandbox (the driver is idle until the
            # message arrives), and the message ends with that stage's go-ahead: one round trip fewer per job.
            self._armed = "compile" if spec.compile else "run"
            self._armed_at = asyncio.get_running_loop().time()
            self._begin_stage(self._armed)
            return await self._settled_spawn(self._attach(warm, message + GO))
        self._cgroup = launcher.job_cgroup(spec.name, spec.memory_mb)
        status_r, status_w = os.pipe()
        compile_r, compile_w = os.pipe()
        self._raw_fds = [status_r, compile_r]
        fds = Fds(status=above_stdio(status_w), compile=above_stdio(compile_w))
        theirs = [fds.status, fds.compile]
        try:
            if launcher.backend == "bwrap":
                theirs += sandbox_fds(launcher, fds, spec)
            else:
                self._workdir = workdir(spec, chown=launcher.drops_privileges)
            argv, env = launcher.argv(spec, fds, self._cgroup), launcher.env(spec, self._workdir)
        except BaseException:
            for fd in theirs:
                os.close(fd)
            raise
        return await self._settled_spawn(self._start(argv, env, theirs))

    async def _settled_spawn(self, start: Any) -> tuple[int, int]:
        # A cancelled create_subprocess_exec SIGKILLs the launcher's pid alone and then waits for its pipes to close.
        # By then that pid may be bwrap's monitor, and a child it has not released yet outlives it, blocked for ever
        # (see kill()) and holding those pipes: the wait never ends, and nothing kills the child. So the spawn (or a
        # warm sandbox's hand-over) always runs to its end, and a cancelled one is finished and killed by cleanup().
        spawn = asyncio.ensure_future(start)
        try:
            self._proc = proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            self._spawning = spawn
            raise
        self._watch(proc)
        status_r, compile_r = self._raw_fds
        return status_r, compile_r

    async def _take_warm(self) -> tuple[Warm, bytes] | None:
        """A warm sandbox made the job's (its priority a job's, its memory limit the job's) and the job message for it;
        or None, to start cold. One that cannot take the job (a memory limit below what it already holds: the kernel
        refuses with EBUSY) is destroyed unused, and the job starts cold as it would without a pool."""
        spec = self._spec
        warm = self._launcher.take_warm(spec)
        if warm is None:
            return None
        try:
            warm.renice()
            if spec.memory_mb is not None and warm.cgroup is not None:
                self._launcher.restrict(warm.cgroup, spec.memory_mb)
            return warm, self._launcher.job_message(spec, warm)
        except Exception as exc:
            logger.info("%s: a warm sandbox cannot take this job (%s); starting it cold", spec.name, exc)
            warm.on_done()
            await asyncio.to_thread(warm.discard)
            return None

    async def _attach(self, warm: Warm, message: bytes) -> WarmProcess:
        """Take over a warm sandbox: its job message first (written at once as far as the pipe has room, so that the
        driver works on it while the rest is set up), then its pipes on this loop."""
        rest = _write_now(warm.job, message)
        job = await writer(warm.job)
        self._transports.append(job.transport)
        self._gate = job
        if rest:
            self._sender = asyncio.create_task(_send(job, rest))
        proc, transports = await attach(warm)
        self._transports += transports
        return proc

    async def _start(self, argv: list[str], env: dict[str, str], theirs: list[int]) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=theirs,
                start_new_session=True,
                env=env,
                cwd=self._workdir or "/",
            )
        finally:
            for fd in theirs:  # the launcher has its own copies now (or never started)
                os.close(fd)

    def _watch(self, proc: asyncio.subprocess.Process | WarmProcess) -> None:
        """Pumps for the output pipes and the process exit: from here on cleanup() can drain the pipes to their end."""
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.ensure_future(self._pump(proc.stdout, "stdout")),
            asyncio.ensure_future(self._pump(proc.stderr, "stderr")),
            asyncio.ensure_future(proc.wait()),
        ]

    async def _reader(self, fd: int, limit: int = READ_SIZE) -> asyncio.StreamReader:
        self._raw_fds.remove(fd)  # its transport owns it from here on, and closes it
        stream, transport = await reader(fd, limit)
        self._transports.append(transport)
        return stream

    async def _supervise(self, status: asyncio.StreamReader) -> None:
        """Follow the driver's stage reports and kill the tree when a stage outlives its deadline.

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
        deadline = started + self._limit_s(stage)
        while expected:
            try:
                # Not wait_for: on Python 3.11 it swallows a cancellation that arrives as the line does, and the
                # cancelled job would then run on to its end.
                async with asyncio.timeout_at(deadline):
                    line = await status.readline()
            except TimeoutError:
                self._record_time(stage, loop.time() - started)
                self.stop("compile_timeout" if stage == "compile" else "timeout")
                return
            except ValueError:
                self._unexpected(b"a line longer than %d bytes" % STATUS_LINE_LIMIT)
                return
            if not line or EXIT_CODE.fullmatch(line):
                return  # the driver is gone: the result comes from bwrap's exit status
            if self._launcher.backend == "bwrap" and self._child_pid is None:
                # bwrap writes this before its pid 1 runs anything, so it is always the first line.
                match = CHILD_PID.fullmatch(line)
                if match is None:
                    self._unexpected(line)
                    return
                self._child_pid = int(match.group(1))
                continue
            event, _, detail = line.decode(errors="replace").removesuffix("\n").partition(" ")
            stage, _, phase = event.partition("-")
            if event != expected[0] or (detail if phase == "start" else not STAGE_END.fullmatch(detail)):
                self._unexpected(line)
                return
            expected.pop(0)
            now = loop.time()
            if phase == "start":
                # A stage let go with the job message has run since then: its start report may arrive together
                # with its end report, so timing it from the report would measure nothing.
                early = stage == self._armed
                started = self._armed_at if early and self._armed_at is not None else now
                deadline = started + self._limit_s(stage)
                self._stage_started(stage)
                continue
            self._record_time(stage, now - started)
            if stage == "run":
                self._out.run_status = detail
                return
            self._out.compile_status = detail
            if self._stage is not None:
                self._account()
            if detail != "exit 0":
                return
            stage, started, deadline = "run", now, now + self._limit_s("run")

    def _unexpected(self, data: bytes) -> None:
        logger.error("%s: unexpected data on the status pipe (%r); ending the job", self._spec.name, data[:100])
        self.stop("internal_error")
        # Nothing more is read from it: closed, so that a writer (bwrap's monitor reporting the exit, once the pipe
        # is full) fails at once rather than blocking, and the job's teardown does not wait on it.
        if self._status_pipe is not None:
            self._status_pipe.close()

    def _stage_started(self, stage: str) -> None:
        if stage == self._armed:
            self._armed = None  # begun before the job message, which carried its go-ahead
            return
        self._begin_stage(stage)
        self._release()

    def _release(self) -> None:
        """A warm sandbox's driver waits after each start report until the stage's accounting has begun."""
        gate = self._gate
        if gate is not None and not gate.transport.is_closing():
            gate.write(GO)

    def _begin_stage(self, stage: str) -> None:
        """Start a stage's accounting (the driver's own start-up is not the program's), and the job-wide CPU limit
        for the run stage."""
        cgroup = self._cgroup
        if cgroup is None:
            return
        cgroup.start_stage()
        self._stage, self._cpu_base = stage, cgroup.cpu_ns()
        if stage == "run" and self._cpu_base is not None:
            self._cpu_watch = asyncio.create_task(self._watch_cpu(cgroup, self._cpu_base))

    def _account(self) -> None:
        """Record the stage's CPU time and memory peak, read from the job's cgroup."""
        assert self._cgroup is not None
        used, peak = self._cgroup.cpu_ns(), self._cgroup.memory_peak()
        cpu_ms = None if used is None or self._cpu_base is None else (used - self._cpu_base) / 1e6
        if self._stage == "compile":
            self._out.compile_cpu_time_ms, self._out.compile_memory_peak_bytes = cpu_ms, peak
        else:
            self._out.cpu_time_ms, self._out.memory_peak_bytes = cpu_ms, peak
        self._stage = None

    async def _watch_cpu(self, cgroup: JobCgroup, base: int) -> None:
        """End the job with reason cpu_limit once its whole process tree has used its CPU time (CPU_TIME_LIMIT_S, or
        less when the job asked).

        RLIMIT_CPU is per process: a job that keeps forking short-lived spinners never meets it. The job cannot use
        more than one CPU-second per CPU each second, so the next check is due no sooner than the CPU time left
        divided by the CPUs: few reads, and the overrun is at most CPU_POLL_S on each CPU.
        """
        limit = self._spec.cpu_time_ms * 1_000_000
        cpus = os.cpu_count() or 1
        while (used := cgroup.cpu_ns()) is not None and used - base < limit:
            await asyncio.sleep(max((limit - (used - base)) / 1e9 / cpus, CPU_POLL_S))
        if used is not None:
            logger.info("%s: used %.0f ms of CPU, over its limit; ending it", self._spec.name, (used - base) / 1e6)
            self.stop("cpu_limit")

    def _limit_s(self, stage: str) -> float:
        return (self._spec.compile_timeout_ms if stage == "compile" else self._spec.run_timeout_ms) / 1000.0

    def _record_time(self, stage: str, seconds: float) -> None:
        if stage == "compile":
            self._out.compile_time_ms = seconds * 1000.0
        else:
            self._out.run_time_ms = seconds * 1000.0

    async def _pump(self, reader: asyncio.StreamReader, stream: Stream) -> None:
        """Forward one output pipe as it arrives, decoded incrementally, within the shared output cap."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        on_output = self._io.on_output if self._io is not None else None
        raw = self._raw[stream]
        while data := await reader.read(READ_SIZE):
            if self._out.truncated or self._draining:
                continue  # read until the killed tree closes the pipe
            room = self._cap - self._used
            if len(data) > room:
                data = data[:room]
                self._out.truncated = True
            self._used += len(data)
            raw += data
            if on_output is not None:
                for start in range(0, len(data), CHUNK):
                    text = decoder.decode(data[start : start + CHUNK])
                    if text:
                        on_output(stream, text)
            if self._out.truncated:
                self.stop("output_limit")
        tail = "" if on_output is None or self._out.truncated or self._draining else decoder.decode(b"", final=True)
        if tail and on_output is not None:
            on_output(stream, tail)

    async def _collect(self, reader: asyncio.StreamReader) -> None:
        """Compiler output: kept up to the output cap, the rest read and dropped so the compiler never blocks."""
        while data := await reader.read(READ_SIZE):
            self._compile_output += data[: max(0, self._cap - len(self._compile_output))]

    async def _feed(self) -> None:
        """Write job.stdin, then live input for interactive jobs until None; then close the program's stdin."""
        assert self._proc is not None and self._proc.stdin is not None
        writer = self._proc.stdin
        try:
            if self._spec.stdin:
                writer.write(self._spec.stdin)
                await writer.drain()
            live = self._io.stdin if self._io is not None else None
            while live is not None and (item := await live.get()) is not None:
                writer.write(item)
                await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the program exited or closed its stdin
        finally:
            writer.close()

    def stop(self, reason: str) -> None:
        """End the job early for `reason`; the first reason wins."""
        if self._out.reason is None:
            self._out.reason = reason
        self.kill()

    def kill(self) -> None:
        """End the whole tree now.

        Normally bwrap's pid 1 is known and its monitor is running: SIGKILL to pid 1 ends the job's pid namespace at
        once (the kernel kills every process in it and no fork can race that), and the monitor then exits on its own
        and reports. The pid cannot have been reused: the monitor, its parent, has not been reaped.

        Otherwise the job is ending before bwrap reported, or after its monitor died: the launcher's process group,
        the monitor's child and everything in the job's cgroups are killed. This must include a child bwrap has not
        released yet. Until its monitor's go-ahead it has no parent-death signal (bwrap sets that later, in pid 1) and
        it waits on an eventfd, which never reports the writer gone: if the monitor dies first, it stays blocked for
        ever as pid 1 of its pid namespace, reparented to host init.
        """
        proc = self._proc
        if self._launcher.backend == "none":
            self._kill_all()
            return
        running = proc is not None and proc.returncode is None
        if running and self._child_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self._child_pid, signal.SIGKILL)
            return
        if proc is not None and running:
            # A child not released yet is still in the launcher's process group (it calls setsid only once released);
            # a released one is not, so its pid is killed too.
            for child in children(proc.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._cgroup is not None:
            self._cgroup.kill()

    def _kill_all(self) -> None:
        """Last resort, and SANDBOX=none: the launcher's process group and everything in the job's cgroups."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        if self._cgroup is not None:
            self._cgroup.kill()

    async def cleanup(self) -> None:
        """After kill(): reap, close pipes, remove the cgroup and the work dir."""
        spawning = self._spawning
        if spawning is not None:
            # Cancelled while spawning: take the process the spawn started and end it like any other.
            await asyncio.wait([spawning])
            if not spawning.cancelled() and spawning.exception() is None:
                self._proc = spawning.result()
                self._watch(self._proc)
            self.kill()
        self._draining = True  # pumps keep reading to EOF (a paused pipe never reports it) but keep nothing
        if self._cpu_watch is not None:
            self._cpu_watch.cancel()
            await asyncio.gather(self._cpu_watch, return_exceptions=True)
        for task in (self._feeder, self._sender):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._readers:
            await self._settle()
        for future in self._readers:
            future.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for transport in self._transports:
            transport.close()
        for fd in self._raw_fds:
            os.close(fd)
        if self._cgroup is not None:
            await self._cgroup.remove()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        if self._warm is not None:
            self._warm.on_done()


def _text(data: bytes, truncated: bool) -> str:
    """Output as text: invalid UTF-8 replaced, and a character the output cap cut in two dropped."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=not truncated)


def _write_now(fd: int, message: bytes) -> bytes:
    """Write what the pipe takes without blocking; returns the rest (all of it past a sandbox that is gone: the
    status pipe's EOF then ends the run)."""
    os.set_blocking(fd, False)
    view = memoryview(message)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except BlockingIOError:
        pass
    except OSError:
        return b""
    return bytes(view)


async def _send(job: asyncio.StreamWriter, message: bytes) -> None:
    """Write a warm sandbox's job message (the pipe stays open for the stages' go-aheads: see Run._release)."""
    try:
        job.write(message)
        await job.drain()
    except (BrokenPipeError, ConnectionResetError):
        job.close()  # the sandbox is gone: the status pipe's EOF ends the run
