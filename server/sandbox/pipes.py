"""Pipes: a run's read ends (stdout, stderr, the compiler's output, the status pipe) read straight from the loop's
selector, each into a plain callback: no transport, protocol, stream or task per pipe (those were about half of a
warm hello's Python calls on the event loop)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

logger = logging.getLogger(__name__)

READ_SIZE = 65536

# What a pipe's data goes to; b"" is its end (EOF). It returns False to stop reading that pipe (it stays open, unread:
# its writer blocks once the pipe is full, as a paused transport's would).
Sink = Callable[[bytes], bool]


class Pipes:
    """A run's read ends on the running loop. `drained` is done once every pipe added with `awaited` has reached its
    end (or was closed)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sinks: dict[int, Sink] = {}
        self._awaited: set[int] = set()
        self._open: set[int] = set()  # ours to close, read or not
        # Done once the awaited pipes have all ended: the first is added before any can end, the rest with it.
        self.drained: asyncio.Future[None] = self._loop.create_future()

    def add(self, fd: int, sink: Sink, *, awaited: bool = True) -> None:
        """Read `fd` (which this then owns) into `sink` as data arrives."""
        os.set_blocking(fd, False)
        self._open.add(fd)
        self._sinks[fd] = sink
        if awaited:
            self._awaited.add(fd)
        self._loop.add_reader(fd, self._readable, fd)

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        sink = self._sinks[fd]
        try:
            keep = sink(data)
        except Exception:
            logger.exception("reading a sandbox's pipe failed")
            keep = False
        if not data:
            self.close(fd)
        elif not keep:
            self._stop_reading(fd)

    def _stop_reading(self, fd: int) -> None:
        if self._sinks.pop(fd, None) is not None:
            self._loop.remove_reader(fd)
        self._awaited.discard(fd)
        if not self._awaited and not self.drained.done():
            self.drained.set_result(None)

    def close(self, fd: int) -> None:
        """Stop reading `fd` and close it (a writer then fails at once rather than blocking)."""
        self._stop_reading(fd)
        if fd in self._open:
            self._open.discard(fd)
            os.close(fd)

    def close_all(self) -> None:
        for fd in list(self._open):
            self.close(fd)


class Lines:
    """A pipe's lines as a sink collects them, each at most `limit` bytes; kept at most twice that many bytes ahead of
    the reader (then the pipe is left unread), as asyncio's StreamReader over a paused transport would."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> bool:
        if data:
            self._buffer += data
        else:
            self._eof = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return len(self._buffer) <= 2 * self._limit

    async def readline(self, deadline: float) -> bytes:
        """The next line with its newline (what is left at the end, without one; b"" once all is read). Raises
        ValueError for a line longer than the limit (dropping what was buffered), TimeoutError past `deadline` (the
        loop's time)."""
        loop = asyncio.get_running_loop()
        while True:
            buffer = self._buffer
            end = buffer.find(b"\n")
            if end > self._limit or (end < 0 and len(buffer) > self._limit):
                buffer.clear()
                raise ValueError("a status line longer than the limit")
            if end >= 0 or self._eof:
                size = end + 1 if end >= 0 else len(buffer)
                line = bytes(buffer[:size])
                del buffer[:size]
                return line
            if loop.time() >= deadline:
                raise TimeoutError
            self._waiter = waiter = loop.create_future()
            timer = loop.call_at(deadline, _time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
