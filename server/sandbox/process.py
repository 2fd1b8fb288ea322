"""Process: a sandbox's launcher as a run sees it, warm or cold: its exit through a pidfd and its stdio as streams
on the running loop. No child-watcher thread per launcher and no subprocess transport: a plain Popen (vfork)."""

from __future__ import annotations

import asyncio
import os
import subprocess


class SandboxProcess:
    """A launcher as the run sees it: what it uses of an asyncio.subprocess.Process."""

    def __init__(self, popen: subprocess.Popen[bytes], stdin: asyncio.StreamWriter | None,
                 stdout: asyncio.StreamReader, stderr: asyncio.StreamReader) -> None:  # fmt: skip
        self._popen = popen
        self.pid = popen.pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        """Wait for the launcher to exit and reap it, through a pidfd on the running loop (no thread, no SIGCHLD);
        in a thread on a kernel without pidfds (before Linux 5.3)."""
        if self._popen.returncode is not None:
            return self._popen.returncode
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            return await asyncio.to_thread(self._popen.wait)
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return self._popen.wait()


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
    """Hand a launcher's stdio pipe ends to the running loop (`stdin` None: closed already); returns the process
    and the transports to close."""
    out, out_pipe = await reader(stdout)
    err, err_pipe = await reader(stderr)
    if stdin is None:
        return SandboxProcess(popen, None, out, err), [out_pipe, err_pipe]
    feed = await writer(stdin)
    return SandboxProcess(popen, feed, out, err), [out_pipe, err_pipe, feed.transport]


async def reader(fd: int, limit: int = 65536) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """A StreamReader over a pipe's read end (whose transport then owns it)."""
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(stream, loop=loop)
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
    return stream, transport


async def writer(fd: int) -> asyncio.StreamWriter:
    """A StreamWriter over a pipe's write end (which it then owns)."""
    loop = asyncio.get_running_loop()
    pipe = os.fdopen(fd, "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(lambda: asyncio.streams.FlowControlMixin(loop=loop), pipe)
    return asyncio.StreamWriter(transport, protocol, None, loop)
