"""Pipes: a run's read ends (stdout, stderr, the compiler's output, the status pipe, the launcher's pidfd) watched by
one epoll per event loop, which the loop watches as one reader, each into a plain callback: no transport, protocol,
stream, task or loop reader per pipe (those were about half of a warm hello's Python calls on the event loop).
asyncio offers nothing lighter for raw pipes than a loop reader per descriptor (connect_read_pipe builds a transport
and a protocol); one epoll registered as a single reader is written here for that, measured in
docs/benchmarks-sandbox.md."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import weakref
from collections.abc import Callable

logger = logging.getLogger(__name__)

READ_SIZE = 65536

# What a pipe's data goes to; b"" is its end (EOF). It returns False to stop reading that pipe (it stays open, unread:
# its writer blocks once the pipe is full, as a paused transport's would).
Sink = Callable[[bytes], bool]


class Poller:
    """Readiness of the sandboxes' pipes on one event loop: an epoll of its own (level-triggered, like the loop's),
    itself one reader of the loop, shared by the loop's runs and closed when the last of them ends (so no descriptor
    outlives them). Registering a pipe here is one epoll_ctl, not a loop handle and selector key."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = weakref.ref(loop)
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self.users = 0
        # Not a method of self: the loop's reference to the callback must not keep the poller (which a weak
        # per-loop table holds) from going with its loop.
        loop.add_reader(self._epoll.fileno(), _dispatch, weakref.ref(self))

    @property
    def closed(self) -> bool:
        return self._epoll.closed

    def watch(self, fd: int, callback: Callable[[int], None]) -> None:
        """Call `callback(fd)` on the loop while `fd` is readable (or at its end), until unwatch()."""
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback

    def unwatch(self, fd: int) -> None:
        """Before `fd` is closed: a closed descriptor leaves an epoll only once no copy of it is left open."""
        if self._callbacks.pop(fd, None) is not None and not self._epoll.closed:
            self._epoll.unregister(fd)

    def release(self) -> None:
        """A run is done with it: the last one closes it."""
        self.users -= 1
        if self.users > 0 or self._epoll.closed:
            return
        self._callbacks.clear()
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._epoll.fileno())
        self._epoll.close()

    def ready(self) -> None:
        """The loop's reader: each readable pipe's callback."""
        for fd, _ in self._epoll.poll(0):
            # One callback may have unwatched (and closed) another pipe of the same batch: skip what is gone. A
            # descriptor number reused since is only woken spuriously (every callback tolerates that).
            callback = self._callbacks.get(fd)
            if callback is not None:
                callback(fd)


def _dispatch(ref: weakref.ref[Poller]) -> None:
    poller = ref()
    if poller is not None and not poller.closed:
        poller.ready()


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Poller] = weakref.WeakKeyDictionary()


def _acquire() -> Poller:
    """The running loop's poller, for one more run (made if none is open)."""
    loop = asyncio.get_running_loop()
    found = _pollers.get(loop)
    if found is None or found.closed:
        found = _pollers[loop] = Poller()
    found.users += 1
    return found


class Pipes:
    """A run's read ends on the running loop. `drained` is done once every pipe added with `awaited` has reached its
    end (or was closed)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.poller = _acquire()
        self._released = False
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
        self.poller.watch(fd, self._readable)

    def _readable(self, fd: int) -> None:
        self._read(fd)

    def _read(self, fd: int) -> bool:
        """One read of `fd` into its sink; whether there may be more to read now."""
        try:
            data = os.read(fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
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
        return bool(data) and keep

    def read_now(self) -> None:
        """Every awaited pipe read as far as it is written, and each sink told of its end, now: when its writers are
        known to be gone (Run.teardown_after). What still comes before a pipe's real end is read as ever."""
        for fd in list(self._awaited):
            while self._read(fd):
                pass
            if fd in self._awaited:
                try:
                    self._sinks[fd](b"")
                except Exception:
                    logger.exception("reading a sandbox's pipe failed")

    def _stop_reading(self, fd: int) -> None:
        if self._sinks.pop(fd, None) is not None:
            self.poller.unwatch(fd)
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
        """At the run's end: every pipe closed, and the poller let go."""
        for fd in list(self._open):
            self.close(fd)
        if not self._released:
            self._released = True
            self.poller.release()


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
