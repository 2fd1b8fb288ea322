"""Process: a sandbox's launcher as a run sees it, warm or cold: its exit through a pidfd on the running loop, its
stdin as a stream, its stdout and stderr as raw read ends (for Pipes). No child-watcher thread per launcher and no
subprocess transport: a plain Popen (vfork)."""

from __future__ import annotations

import asyncio
import os
import subprocess

from .pipes import Poller


class SandboxProcess:
    """A launcher as the run sees it: what it uses of an asyncio.subprocess.Process."""

    def __init__(self, popen: subprocess.Popen[bytes], stdin: asyncio.StreamWriter | None,
                 stdout: int, stderr: int) -> None:  # fmt: skip
        self._popen = popen
        self.pid = popen.pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def exited(self, poller: Poller) -> asyncio.Future[int]:
        """The launcher's exit status once it has exited and is reaped, through a pidfd in `poller` (no thread, no
        SIGCHLD, no task); in a thread on a kernel without pidfds (before Linux 5.3). Cancelling the future stops
        watching."""
        loop = asyncio.get_running_loop()
        popen = self._popen
        if popen.returncode is not None:
            done: asyncio.Future[int] = loop.create_future()
            done.set_result(popen.returncode)
            return done
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            return asyncio.ensure_future(asyncio.to_thread(popen.wait))
        exited: asyncio.Future[int] = loop.create_future()

        def readable(_: int) -> None:
            if exited.done():
                return
            try:
                returncode = popen.poll()  # reaps it; None only on a spurious wake-up (see Poller)
            except Exception as exc:
                exited.set_exception(exc)
                return
            if returncode is not None:
                exited.set_result(returncode)

        def unwatch(_: asyncio.Future[int]) -> None:
            poller.unwatch(pidfd)
            os.close(pidfd)

        poller.watch(pidfd, readable)
        exited.add_done_callback(unwatch)
        return exited


def launch(
    argv: list[str], *, env: dict[str, str], cwd: str, pass_fds: list[int]
) -> tuple[subprocess.Popen[bytes], int, int, int]:
    """Start a cold sandbox's launcher in its own session with a pipe for each of its stdio; returns it and the
    server's ends (close-on-exec): stdin's write end, stdout's and stderr's read ends."""
    ours: list[int] = []
    theirs: list[int] = []
    try:
        for name in ("stdin", "stdout", "stderr"):
            read, write = os.pipe()
            mine, its = (write, read) if name == "stdin" else (read, write)
            ours.append(mine)
            theirs.append(its)
        popen = subprocess.Popen(
            argv,
            stdin=theirs[0],
            stdout=theirs[1],
            stderr=theirs[2],
            pass_fds=pass_fds,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    return popen, ours[0], ours[1], ours[2]


async def attach(
    popen: subprocess.Popen[bytes], stdin: int | None, stdout: int, stderr: int
) -> tuple[SandboxProcess, list[asyncio.BaseTransport]]:
    """Hand a launcher's stdin pipe end to the running loop (`stdin` None: closed already); stdout's and stderr's
    read ends stay raw, the run's to read (Pipes). Returns the process and the transports to close."""
    if stdin is None:
        return SandboxProcess(popen, None, stdout, stderr), []
    feed = await writer(stdin)
    return SandboxProcess(popen, feed, stdout, stderr), [feed.transport]


async def writer(fd: int) -> asyncio.StreamWriter:
    """A StreamWriter over a pipe's write end (which it then owns)."""
    loop = asyncio.get_running_loop()
    pipe = os.fdopen(fd, "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(lambda: asyncio.streams.FlowControlMixin(loop=loop), pipe)
    return asyncio.StreamWriter(transport, protocol, None, loop)


def write_now(fd: int, message: bytes) -> bytes:
    """Write what the pipe takes without blocking; returns the rest. Past a sandbox that is gone it returns nothing,
    as if all was written: the status pipe's EOF then ends the run."""
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


async def send(job: asyncio.StreamWriter, message: bytes) -> None:
    """Write a warm sandbox's job message (the pipe stays open for the stages' go-aheads: see Run._release)."""
    try:
        job.write(message)
        await job.drain()
    except (BrokenPipeError, ConnectionResetError):
        job.close()  # the sandbox is gone: the status pipe's EOF ends the run
