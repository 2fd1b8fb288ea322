"""One WebSocket connection as the hub sees it: who it is, what it watches, and a bounded send queue with its
writer task. Reading the client's messages is the door's (server.doors.websocket)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any

import orjson
from aiohttp import WSCloseCode, web

from ..access.identity import Client
from ..errors import ConveyorError

logger = logging.getLogger(__name__)

# A stalled client whose close handshake does not finish in this time has its transport aborted.
CLOSE_TIMEOUT_S = 1.0
TRY_AGAIN_LATER = 1013
# A socket's writes: WRITE_BURST at once (a quiet socket's run: queued, running, its first output, its end), then at
# most one per WRITE_COALESCE_S, what comes meanwhile sharing it (live output stays well under 20 ms).
WRITE_COALESCE_S = 0.004
WRITE_BURST = 4
HIGH_WATER = 256 * 1024


def _text_frame_header(length: int) -> bytes:
    """RFC 6455 header of an unmasked, final text frame (server to client frames are never masked)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return bytes((0x81, 126)) + length.to_bytes(2, "big")
    return bytes((0x81, 127)) + length.to_bytes(8, "big")


class Pacer:
    """A socket's writes as a token bucket: WRITE_BURST at once, then one per WRITE_COALESCE_S. Without it a socket
    watching the queue topic would cost a send() per event; with a fixed wait before every write, a quiet socket's
    messages would wait for nothing."""

    __slots__ = ("_at", "_tokens")

    def __init__(self, now: float) -> None:
        self._tokens = float(WRITE_BURST)
        self._at = now

    def take(self, now: float) -> float:
        """Seconds to wait before the next write (0: at the next turn of the loop); the write is counted."""
        tokens = min(float(WRITE_BURST), self._tokens + (now - self._at) / WRITE_COALESCE_S)
        if tokens >= 1.0:
            self._tokens, self._at = tokens - 1.0, now
            return 0.0
        wait = (1.0 - tokens) * WRITE_COALESCE_S
        self._tokens, self._at = 0.0, now + wait
        return wait


class Connection:
    """A connected browser or client. `send` never awaits: it enqueues bytes for the writer task."""

    def __init__(
        self, conn_id: int, ws: web.WebSocketResponse, request: web.Request, client: Client, size: int
    ) -> None:
        self.id = conn_id
        self.ws = ws
        self.request = request
        self.client = client
        self.jobs: set[str] = set()
        # The last seq sent of each watched job: a replay and the live stream can carry the same event (on Redis a
        # job's log is written before the shared stream), and a client must see each seq once.
        self.sent: dict[str, int] = {}
        self.interactive: set[str] = set()
        # Insertion-ordered set: the jobs submitted on this socket (driving an anonymous job needs its token or
        # the socket that submitted it).
        self.submitted: dict[str, None] = {}
        self.in_topic = False
        self._outbox: deque[bytes] = deque()
        self._outbox_size = size
        self._pending = asyncio.Event()
        # Kept now: aiohttp lets go of the request's transport while closing, and abort() may be needed then.
        self._transport = request.transport
        self._closing = False
        self._close_request: tuple[int, str] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()
        self._close_asked = asyncio.Event()
        self._closer: asyncio.Task[None] | None = None
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{conn_id}")

    def send(self, data: bytes) -> None:
        """Queue one encoded message (a JSON text frame's payload). Never awaits, never blocks the caller."""
        if self._closing:
            return
        if len(self._outbox) >= self._outbox_size:
            # Never buffer without bound for a client that does not read: close it; it may reconnect and
            # resume with `since`.
            logger.warning("closing WebSocket %d (%s): send queue overflowed", self.id, self.client.ip)
            self._closing = True
            self._closer = asyncio.get_running_loop().create_task(self.close(TRY_AGAIN_LATER, "send queue overflow"))
            return
        self._outbox.append(data)
        self._pending.set()

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(orjson.dumps(message))

    def send_error(self, exc: ConveyorError, **context: Any) -> None:
        self.send_json({"type": "error", **exc.body(), **{k: v for k, v in context.items() if v is not None}})

    async def _write_loop(self) -> None:
        """Write what is queued, many frames per write: with a thousand sockets, one send() per event per socket
        is what saturates a core, so past a short burst the messages arriving within a few ms share one write (and
        one TCP segment); what one turn of the loop queued always does."""
        transport = self._transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        pacer = Pacer(loop.time())
        while True:
            await self._pending.wait()
            await asyncio.sleep(pacer.take(loop.time()))
            self._pending.clear()
            frames = []
            while self._outbox:
                payload = self._outbox.popleft()
                frames.append(_text_frame_header(len(payload)))
                frames.append(payload)
            if transport.is_closing() or self.ws.closed:
                return  # nothing may follow a close frame; the reader side notices and unregisters
            transport.write(b"".join(frames))
            # Flow control: let the kernel take what is buffered before writing more. A client that never reads
            # stays here while its outbox fills up, and is closed with 1013 when it overflows.
            while transport.get_write_buffer_size() > HIGH_WATER and not transport.is_closing():
                await asyncio.sleep(0.01)

    async def close(self, code: int, message: str) -> None:
        """Close from outside (shutdown 1001, overflow 1013). The connection's own task does it: aiohttp completes
        the close handshake only when no other task is inside receive(), so we stop the reader and wait."""
        if self._close_request is None:
            self._close_request = (code, message)
        if code == WSCloseCode.GOING_AWAY:
            self._flush_now()  # at shutdown the last events (a job's `cancelled`) go out before the close frame
        self._closing = True
        self._close_asked.set()
        self._writer.cancel()
        if self._reader is not None:
            self._reader.cancel()
        with suppress(TimeoutError):
            async with asyncio.timeout(2 * CLOSE_TIMEOUT_S):
                await self._finished.wait()

    def _flush_now(self) -> None:
        transport = self._transport
        if not self._outbox or transport is None or transport.is_closing() or self.ws.closed:
            return
        frames: list[bytes] = []
        while self._outbox:
            payload = self._outbox.popleft()
            frames += (_text_frame_header(len(payload)), payload)
        transport.write(b"".join(frames))

    async def serve(self, read: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `read` (the door's reader) until the client leaves or `close` is asked for; then finish the close
        handshake."""
        reader = self._reader = asyncio.create_task(read(), name=f"ws-reader-{self.id}")
        asked = asyncio.create_task(self._close_asked.wait(), name=f"ws-close-{self.id}")
        try:
            # Never raises. The close does not wait on the reader alone: a handler that turns the reader's
            # cancellation into an error of its own (a store client may) would keep it reading a silent socket.
            await asyncio.wait([reader, asked], return_when=asyncio.FIRST_COMPLETED)
            if self._close_request is not None:
                if not reader.done():
                    reader.cancel()
                    await asyncio.wait([reader], timeout=CLOSE_TIMEOUT_S)
                await self._close_handshake(*self._close_request)
        finally:
            asked.cancel()
            if not reader.done():
                # Past the handshake the transport is closed or aborted, so its receive() ends at once.
                reader.cancel()
                await asyncio.wait([reader], timeout=CLOSE_TIMEOUT_S)
            self._finished.set()

    async def _close_handshake(self, code: int, message: str) -> None:
        transport = self._transport
        # A client that does not read never lets the close frame out: drop it at once.
        if code == TRY_AGAIN_LATER and transport is not None and transport.get_write_buffer_size() > 0:
            transport.abort()
            return
        # Not wait_for: aiohttp's close can outlive a cancellation while its send buffer drains.
        closer = asyncio.create_task(self.ws.close(code=code, message=message.encode()))
        await asyncio.wait([closer], timeout=CLOSE_TIMEOUT_S)
        if not closer.done() and transport is not None:
            transport.abort()
            closer.cancel()

    async def shutdown(self) -> None:
        self._closing = True
        self._writer.cancel()
        with suppress(asyncio.CancelledError):
            await self._writer

    def end(self, code: int, message: str) -> None:
        """Close once the reader returns (the door's reader stops reading after asking)."""
        self._close_request = (code, message)

    @property
    def close_requested(self) -> bool:
        return self._close_request is not None
