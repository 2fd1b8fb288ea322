"""Execution: one sandboxed process tree, from spawn through streamed output and stage deadlines to teardown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from typing import Any

from . import command, process
from .cgroups import Cgroups, JobCgroup, job_cgroup
from .command import Host
from .contract import JobIO
from .driver import STATUS_LINE_LIMIT
from .output import Output
from .pipes import Lines, Pipes
from .pool import Warm, WarmPool, attach, children
from .process import SandboxProcess, send, write_now, writer
from .reaper import Reaper
from .result import Outcome
from .spawn import Fds, above_stdio, sandbox_fds, workdir
from .spec import RunSpec
from .stages import GO, Stages

logger = logging.getLogger(__name__)

EXIT_GRACE_S = 2.0


class Run:
    """One sandboxed process tree: spawn it, stream its output, enforce the stage deadlines, tear it down."""

    def __init__(
        self,
        spec: RunSpec,
        host: Host,
        io: JobIO | None,
        *,
        cgroups: Cgroups | None = None,
        pool: WarmPool | None = None,
        reaper: Reaper | None = None,
    ) -> None:
        self._spec = spec
        self._host = host
        self._io = io
        self._cgroups = cgroups
        self._pool = pool
        self._reaper = reaper
        self._out = Outcome()
        self._output = Output(spec.output_cap or host.settings.max_output_bytes, io, self._out, self.stop)
        self._stages = Stages(spec, self._out, self.stop, bwrap=host.backend == "bwrap")
        self._proc: SandboxProcess | None = None
        self._warm: Warm | None = None  # the warm sandbox this run took, if it did
        self._sender: asyncio.Task[None] | None = None  # writes the job message to a warm sandbox
        self._cgroup: JobCgroup | None = None
        self._workdir: str | None = None
        self._stdin = spec.stdin  # what of job.stdin is still to be written
        self._transports: list[asyncio.BaseTransport] = []  # writers: stdin, a warm sandbox's job pipe
        self._pipes = Pipes()  # the read ends: stdout, stderr, the compiler's output, the status pipe
        self._readers: list[asyncio.Future[Any]] = []  # the output pipes drained, and the process exit
        self._feeder: asyncio.Task[None] | None = None
        self._spawning: asyncio.Future[SandboxProcess] | None = None  # cancelled midway
        self._raw_fds: list[int] = []  # pipe read ends not yet handed to Pipes
        self._ended = False  # killed, exited and its pipes drained (start_and_wait)
        # Its result whole before its tree is gone: the teardown is cleanup()'s, which need not be awaited first.
        self.teardown_after = False

    async def start_and_wait(self) -> Outcome:
        status_fd, compile_fd = await self._spawn()
        proc = self._proc
        assert proc is not None
        status = Lines(STATUS_LINE_LIMIT)
        self._read(status_fd, status.feed, awaited=False)
        self._stages.close_status = lambda: self._pipes.close(status_fd)
        if self._two_stages:
            self._read(compile_fd, self._output.collect)  # with stdout's and stderr's, before any could end
        else:  # nothing writes there without a compile stage (the driver ignores SIGPIPE)
            self._raw_fds.remove(compile_fd)
            os.close(compile_fd)
        if self._writes_stdin:
            self._feeder = asyncio.create_task(self._feed())
        elif proc.stdin is not None:
            proc.stdin.close()  # what _feed() would do with nothing to write
        await self._stages.supervise(status)
        self._stages.stop_watching()
        self.teardown_after = self._whole_at_its_end()
        # The program has ended, failed to compile, or is being stopped. Left alone, the driver's exit makes
        # bwrap's monitor exit and --die-with-parent takes pid 1 and every background process with it; killing pid
        # 1 now does the same without trusting the driver's report. Output already written stays readable.
        self.kill()
        if self.teardown_after:
            self._pipes.read_now()
            self._output.draining = True
        else:
            self._ended = await self._settle()
        self._stages.finish()
        self._output.finish()
        out = self._out
        out.returncode = proc.returncode
        out.oom_killed = self._cgroup is not None and self._cgroup.oom_killed()
        return out

    @property
    def name(self) -> str:
        return self._spec.name

    def _whole_at_its_end(self) -> bool:
        """Whether the result is whole at the run stage's reported end, before the tree is gone: no stop, and only the
        warm sandbox's own processes left (Warm.alone). Its output is then read as far as it goes, and the teardown
        (1-1.5 ms of waiting for the kernel to end pid 1 and the monitor to exit) goes after the result."""
        out = self._out
        return self._warm is not None and out.run_status is not None and out.reason is None and self._warm.alone()

    @property
    def _two_stages(self) -> bool:
        """Whether the driver runs a compile stage before the run stage."""
        return bool(self._spec.compile)

    @property
    def _writes_stdin(self) -> bool:
        return bool(self._stdin) or (self._io is not None and self._io.stdin is not None)

    async def _settle(self) -> bool:
        """Wait until the process has exited and its pipes are drained, killing harder if that does not happen;
        True once they have.

        Once bwrap's pid 1 is gone the kernel has killed every process of the job's pid namespace, so the pipes
        close at once; only SANDBOX=none (without cgroups) can leave stragglers holding them.
        """
        for _ in range(2):
            if all(future.done() for future in self._readers):
                return True
            _, pending = await asyncio.wait(self._readers, timeout=EXIT_GRACE_S)
            if not pending:
                return True
            logger.warning("%s: still running or holding its pipes after it was ended; killing", self._spec.name)
            self._kill_all()
        logger.error("%s: process tree did not go away", self._spec.name)
        return False

    async def _spawn(self) -> tuple[int, int]:
        """Start the launcher (or take a warm sandbox) and read its output pipes; returns the read ends of the status
        and compiler pipes."""
        taken = await self._take_warm()
        if taken is not None:
            warm, message = taken
            self._warm, self._cgroup = warm, warm.cgroup
            self._stages.cgroup, self._stages.child_pid = warm.cgroup, warm.child_pid
            self._raw_fds = [warm.status, warm.compile]
            self._stages.arm()
            # Job.stdin first, as much as the pipe takes: a program started at once finds it there as a cold run's
            # program, slower to start, does (System.in.available(), select, a non-blocking read).
            self._stdin = write_now(warm.stdin, self._stdin) if self._stdin else b""
            rest = write_now(warm.job, message + GO)
            if rest or self._two_stages or self._writes_stdin:
                return await self._settled_spawn(self._attach(warm, rest))
            # All of the message written, and it ends with the only stage's go-ahead: the driver reads nothing more
            # on the job pipe, and the program's stdin is closed (it reads EOF, as pool.attach does without stdin).
            # Nothing here awaits, so nothing can cancel the hand-over midway: no task to shield it.
            os.close(warm.job)
            os.close(warm.stdin)
            return self._settled(SandboxProcess(warm.popen, None, warm.stdout, warm.stderr))
        return await self._settled_spawn(self._start())

    async def _settled_spawn(self, start: Any) -> tuple[int, int]:
        # The spawn (or a warm sandbox's hand-over) always runs to its end: cancelled between the launch and the
        # attach, the launcher would run on with nobody reading its pipes or knowing its pid, and a child bwrap has
        # not released yet would outlive it, blocked for ever (see kill()). A cancelled one is finished and killed by
        # cleanup(). (asyncio's create_subprocess_exec, cancelled, SIGKILLs the launcher's pid alone and then waits
        # for its pipes to close, which such a child holds: it is not used for this reason too.)
        spawn = asyncio.ensure_future(start)
        try:
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            self._spawning = spawn
            raise
        return self._settled(proc)

    def _settled(self, proc: SandboxProcess) -> tuple[int, int]:
        self._proc = proc
        self._watch(proc)
        status_r, compile_r = self._raw_fds
        return status_r, compile_r

    async def _take_warm(self) -> tuple[Warm, bytes] | None:
        """A warm sandbox made the job's (its priority a job's, its memory limit the job's) and the job message for it;
        or None, to start cold. One that cannot take the job (a memory limit below what it already holds: the kernel
        refuses with EBUSY) is destroyed unused, and the job starts cold as it would without a pool."""
        spec = self._spec
        # A compile stage (a build: javac) would discard the runtime a warm sandbox started ahead (the JVM, 30-40 ms of
        # the refill's CPU): the build starts cold and leaves the ready sandbox to the run that follows it.
        if self._pool is None or spec.language is None or (spec.compile and spec.preload is not None):
            return None
        warm = self._pool.take(spec.language)
        if warm is None:
            return None
        try:
            warm.renice()
            if spec.memory_mb is not None and warm.cgroup is not None:
                assert self._cgroups is not None
                self._cgroups.restrict(warm.cgroup, spec.memory_mb << 20)
            return warm, command.job_message(self._host, spec, warm_env=warm.env, preloaded=warm.preloaded)
        except Exception as exc:
            logger.info("%s: a warm sandbox cannot take this job (%s); starting it cold", spec.name, exc)
            warm.on_done()
            await asyncio.to_thread(warm.discard)
            return None

    async def _attach(self, warm: Warm, rest: bytes) -> SandboxProcess:
        """Take over a warm sandbox whose job message was written as far as the pipe had room (so that the driver
        works on it while the rest is set up): its pipes on this loop. The job pipe stays open only to carry the
        `rest` of the message or a later stage's go-ahead."""
        if rest or self._two_stages:
            job = await writer(warm.job)
            self._transports.append(job.transport)
            self._stages.gate = job
            if rest:
                self._sender = asyncio.create_task(send(job, rest))
        else:
            # All of it written, and it ends with the only stage's go-ahead: the driver reads nothing more there.
            os.close(warm.job)
        proc, transports = await attach(warm, stdin=self._writes_stdin)
        self._transports += transports
        return proc

    async def _start(self) -> SandboxProcess:
        """A cold start: the launcher started in a thread (_launch), then its pipes on this loop."""
        popen, stdin, stdout, stderr = await asyncio.to_thread(self._launch)
        self._stdin = write_now(stdin, self._stdin) if self._stdin else b""  # no feeder task for what fits
        if not self._writes_stdin:
            os.close(stdin)  # the program reads EOF, as from a pipe its feeder wrote nothing to and closed
        proc, transports = await process.attach(popen, stdin if self._writes_stdin else None, stdout, stderr)
        self._transports += transports
        return proc

    def _launch(self) -> tuple[subprocess.Popen[bytes], int, int, int]:
        """In a thread: the job's cgroups made, its files copied to memory, the launcher started. Each of these
        blocks (a cgroup v1 mkdir waits for the cgroup mutex, a fork for the exec): 2 ms of the event loop's time a
        cold job when done there. Its end is always awaited (_settled_spawn), so cleanup() finds what it made."""
        host, spec = self._host, self._spec
        self._cgroup = self._stages.cgroup = job_cgroup(self._cgroups, spec.name, spec.memory_mb)
        status_r, status_w = os.pipe()
        compile_r, compile_w = os.pipe()
        self._raw_fds = [status_r, compile_r]
        fds = Fds(status=above_stdio(status_w), compile=above_stdio(compile_w))
        theirs = [fds.status, fds.compile]
        try:
            if host.backend == "bwrap":
                theirs += sandbox_fds(host.seccomp_bpf, fds, spec)
            else:
                self._workdir = workdir(spec, chown=host.drops_privileges)
            argv, env = command.argv(host, spec, fds, self._cgroup), command.env_of(spec, self._workdir)
            return process.launch(argv, env=env, cwd=self._workdir or "/", pass_fds=theirs)
        finally:
            for fd in theirs:  # the launcher has its own copies now (or never started)
                os.close(fd)

    def _watch(self, proc: SandboxProcess) -> None:
        """The output pipes read and the process exit watched: from here on cleanup() can drain the pipes to their
        end."""
        self._pipes.add(proc.stdout, self._output.sink("stdout"))
        self._pipes.add(proc.stderr, self._output.sink("stderr"))
        self._readers = [self._pipes.drained, proc.exited(self._pipes.poller)]

    def _read(self, fd: int, sink: Callable[[bytes], bool], *, awaited: bool = True) -> None:
        self._raw_fds.remove(fd)  # Pipes owns it from here on, and closes it
        self._pipes.add(fd, sink, awaited=awaited)

    async def _feed(self) -> None:
        """Write what is left of job.stdin (what the pipe did not take before the start), then live input for
        interactive jobs until None; then close the program's stdin."""
        assert self._proc is not None and self._proc.stdin is not None
        writer = self._proc.stdin
        try:
            if self._stdin:
                writer.write(self._stdin)
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
        if self._host.backend == "none":
            self._kill_all()
            return
        if self._ended:
            # The launcher is reaped and nothing holds the job's pipes: a child bwrap never released would (it holds
            # them from the monitor), and every other process is in the pid namespace that pid 1's SIGKILL ends.
            # What may still be exiting is cleanup()'s: it removes the cgroups, and the kernel refuses while any
            # process is in them, so it kills them first.
            return
        running = proc is not None and proc.returncode is None
        child_pid = self._stages.child_pid
        if running and child_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child_pid, signal.SIGKILL)
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
        self._output.draining = True  # still read to their end (the tree is gone then), nothing kept
        self._stages.stop_watching()
        for task in (self._feeder, self._sender):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._readers:
            ended = await self._settle()
            self._ended = self._ended or (self.teardown_after and ended)
        for future in self._readers:
            future.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for transport in self._transports:
            transport.close()
        self._pipes.close_all()
        for fd in self._raw_fds:
            os.close(fd)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        await self._release()

    async def _release(self) -> None:
        """Last in cleanup(): a warm sandbox's mount namespace and the cgroups, then the pool's count."""
        warm, held = self._warm, []
        if warm is not None and warm.mount_ns is not None:
            held, warm.mount_ns = [warm.mount_ns], None
        done = warm.on_done if warm is not None else _nothing
        if self._reaper is not None and self._ended and self._reaper.release(self._cgroup, held, done):
            # An ended run (pid 1 reaped, pipes drained): its cgroups and a warm sandbox's mount namespace go after
            # the result (Reaper; the pool counts it in use until then; a name reused meanwhile: Cgroups.create).
            return
        for fd in held:
            os.close(fd)
        if self._cgroup is not None:
            await self._cgroup.remove()
        done()


def _nothing() -> None:
    pass
