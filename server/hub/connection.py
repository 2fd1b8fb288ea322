"""One WebSocket connection: a bounded send queue with its writer task, and the client's messages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from ..access.identity import OWNER_TOKEN, Client, check_priority, new_owner_token
from ..access.permissions import drivable_job, is_owner, readable_job
from ..doors.accesslog import audit
from ..doors.payloads import parse_run
from ..errors import BadRequest, ConveyorError, TooManyRequests, Unauthorized
from ..queue.jobs import Job

if TYPE_CHECKING:
    from .hub import Hub

logger = logging.getLogger(__name__)

# A stalled client whose close handshake does not finish in this time has its transport aborted.
CLOSE_TIMEOUT_S = 1.0
TRY_AGAIN_LATER = 1013
POLICY_VIOLATION = 1008
# Jobs a connection submitted and may drive as their submitter; the oldest are forgotten past this.
MAX_SUBMITTED = 1024
# Jobs one connection may watch at once.
MAX_WATCHED = 256
# Messages for one socket that arrive within this window go out in one write (live output stays well under 20 ms).
WRITE_COALESCE_S = 0.004
HIGH_WATER = 256 * 1024
MAX_REQUEST_ID = 128
# The fields of a `run` message that are not the submission's.
RUN_ENVELOPE = frozenset({"type", "requestId"})


def _text_frame_header(length: int) -> bytes:
    """RFC 6455 header of an unmasked, final text frame (server to client frames are never masked)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return bytes((0x81, 126)) + length.to_bytes(2, "big")
    return bytes((0x81, 127)) + length.to_bytes(8, "big")


class Connection:
    """A connected browser or client. `send` never awaits: it enqueues bytes for the writer task."""

    def __init__(
        self, hub: Hub, conn_id: int, ws: web.WebSocketResponse, request: web.Request, client: Client, size: int
    ) -> None:
        self.hub = hub
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
        # The message budget: a token bucket refilled at ws_messages_per_second, holding ws_message_burst.
        self._tokens = float(hub.settings.ws_message_burst)
        self._budget_at = time.monotonic()
        self._dropped = 0
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
        is what saturates a core, so messages arriving within a few ms share one write (and one TCP segment)."""
        transport = self._transport
        if transport is None:
            return
        while True:
            await self._pending.wait()
            await asyncio.sleep(WRITE_COALESCE_S)
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

    async def serve(self) -> None:
        """Read until the client leaves or `close` is asked for; then finish the close handshake."""
        reader = self._reader = asyncio.create_task(self.read_loop(), name=f"ws-reader-{self.id}")
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

    # -- reading ---------------------------------------------------------------------------------------------

    def _within_budget(self) -> bool:
        """Take one message from the budget. Past it: one clear error, then drops; a client that keeps sending
        a whole burst more after being told is closed (1008)."""
        settings = self.hub.settings
        now = time.monotonic()
        self._tokens = min(
            float(settings.ws_message_burst), self._tokens + (now - self._budget_at) * settings.ws_messages_per_second
        )
        self._budget_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._dropped = 0
            return True
        self._dropped += 1
        if self._dropped == 1:
            self.hub.note_rate_limited()
            retry = max(1, int((1.0 - self._tokens) / settings.ws_messages_per_second + 0.999))
            self.send_error(
                TooManyRequests(
                    f"Too many messages: at most {settings.ws_messages_per_second} per second (bursts of "
                    f"{settings.ws_message_burst}). Messages are dropped until then; keep sending and the "
                    "connection is closed.",
                    retryAfter=retry,
                )
            )
        elif self._dropped > settings.ws_message_burst:
            logger.warning("closing WebSocket %d (%s): message budget exceeded", self.id, self.client.ip)
            self._close_request = (POLICY_VIOLATION, "message budget exceeded")
            return False
        return False

    async def read_loop(self) -> None:
        async for msg in self.ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and not self._within_budget():
                if self._close_request is not None:
                    break
                continue
            if msg.type == WSMsgType.TEXT:
                await self._handle_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self.send_error(BadRequest("Send JSON text frames, not binary ones."))
            elif msg.type == WSMsgType.ERROR:
                break

    async def _handle_text(self, text: str) -> None:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.send_error(BadRequest("The message is not valid JSON."))
            return
        if not isinstance(message, dict):
            self.send_error(BadRequest("A message must be a JSON object with a type."))
            return
        request_id = message.get("requestId")
        if request_id is not None and not _valid_request_id(request_id):
            self.send_error(
                BadRequest(
                    f"requestId must be a string of at most {MAX_REQUEST_ID} characters or an integer.",
                    field="requestId",
                )
            )
            return
        kind = message.get("type")
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            shown = repr(kind)[:64] if isinstance(kind, str) else f"of JSON type {type(kind).__name__}"
            self.send_error(
                BadRequest(f"Unknown message type {shown}.", field="type", valid=sorted(_HANDLERS)),
                requestId=request_id,
            )
            return
        try:
            await handler(self, message)
        except ConveyorError as exc:
            job_id = message.get("jobId") if isinstance(message.get("jobId"), str) else None
            self.send_error(exc, requestId=request_id, jobId=job_id)
        except Exception:
            logger.exception("WebSocket %d: %s message failed", self.id, message.get("type"))
            self.send_error(ConveyorError("Something went wrong on our side; it has been logged."))

    # -- message handlers ------------------------------------------------------------------------------------

    async def on_auth(self, message: dict[str, Any]) -> None:
        """`key`: become that API-key user. `ownerToken`: own what that token owns (a reconnecting client takes
        back its jobs). Either or both."""
        if "key" not in message and "ownerToken" not in message:
            raise BadRequest("auth needs a key, an ownerToken, or both.", field="key")
        client = self.client
        if "key" in message:
            client = await self._authenticate(_str_field(message, "key"))
        if "ownerToken" in message:
            token = _str_field(message, "ownerToken")
            if not OWNER_TOKEN.fullmatch(token):
                raise BadRequest(
                    "ownerToken must be 32 to 128 characters of letters, digits, - and _.", field="ownerToken"
                )
            client = client.with_owner_token(token)
        await self.hub.reidentify(self, client)
        self.send_json({"type": "auth", "user": self.client.user, "admin": self.client.admin})

    async def _authenticate(self, key: str) -> Client:
        hub = self.hub
        if hub.authenticate_key is None:
            raise BadRequest("This server has no API keys configured.")
        try:
            if hub.lockout is not None:
                hub.lockout.check(self.client.ip)
            try:
                return hub.authenticate_key(key, self.client.ip)
            except Unauthorized as exc:
                audit("auth-failure", user="-", ip=self.client.ip, door="websocket")  # as HTTP 401s are (accesslog)
                refusal = await hub.lockout.failed(self.client.ip) if hub.lockout is not None else None
                raise refusal or exc from None
        except TooManyRequests:
            hub.note_rate_limited()
            raise

    async def on_run(self, message: dict[str, Any]) -> None:
        hub = self.hub
        run = parse_run(message, hub.settings, hub.runner, allow_interactive=True, envelope=RUN_ENVELOPE)
        check_priority(self.client, run.priority)
        if hub.check_submit is not None:
            await hub.check_submit(self.client)
        job = await hub.submit(run.to_job(self.client.job_owner), self.client)
        self.submitted[job.id] = None
        if len(self.submitted) > MAX_SUBMITTED:
            del self.submitted[next(iter(self.submitted))]
        if job.interactive:
            self.interactive.add(job.id)
        position = await hub.queue.position(job)
        queued: dict[str, Any] = {"type": "queued", "jobId": job.id, "seq": 1, "position": position}
        if "requestId" in message:
            queued["requestId"] = message["requestId"]
        self.send_json(queued)
        # Events after `queued` may already be logged (the job can start at once): replay them, then go live.
        await hub.watch(self, job.id, since=1)
        hub.track_position(job.id, position)

    async def on_stdin(self, message: dict[str, Any]) -> None:
        job = await self._drivable_job(message)
        data = _str_field(message, "data")
        await self.hub.queue.write_stdin(job.id, data.encode())

    async def on_eof(self, message: dict[str, Any]) -> None:
        job = await self._drivable_job(message)
        await self.hub.queue.write_stdin(job.id, None)

    async def on_stop(self, message: dict[str, Any]) -> None:
        job = await self._drivable_job(message)
        # Our watchers get the terminal `cancelled` event; nothing else to send.
        await self.hub.queue.stop(job.id, "stopped")

    async def on_subscribe(self, message: dict[str, Any]) -> None:
        if message.get("topic") == "queue":
            await self.hub.subscribe_topic(self)
            return
        if "topic" in message:
            raise BadRequest(f"Unknown topic {message['topic']!r}; the only topic is 'queue'.", field="topic")
        job_id = _str_field(message, "jobId")
        since = message.get("since", 0)
        if not isinstance(since, int) or isinstance(since, bool) or since < 0:
            raise BadRequest("since must be a non-negative integer (the last seq you saw).", field="since")
        job = await readable_job(self.hub.queue, self.client, job_id)
        if len(self.jobs) >= MAX_WATCHED and job_id not in self.jobs:
            raise BadRequest(f"A connection watches at most {MAX_WATCHED} jobs; unsubscribe from some first.")
        if self.hub.check_read is not None:
            await self.hub.check_read(self.client)
        await self.hub.watch(self, job_id, since=since)
        if is_owner(self.client, job) or job_id in self.submitted:
            self.hub.adopt(self, job)
        self.hub.track_position(job_id, await self.hub.queue.position(job))
        self.send_json({"type": "subscribed", "jobId": job_id, "status": job.status.value})

    async def on_unsubscribe(self, message: dict[str, Any]) -> None:
        if message.get("topic") == "queue":
            self.hub.unsubscribe_topic(self)
        else:
            self.hub.unwatch(self, _str_field(message, "jobId"))
        self.send_json({"type": "unsubscribed", **{k: message[k] for k in ("topic", "jobId") if k in message}})

    async def on_ping(self, message: dict[str, Any]) -> None:
        self.send_json({"type": "pong"})

    async def _drivable_job(self, message: dict[str, Any]) -> Job:
        job_id = _str_field(message, "jobId")
        return await drivable_job(self.hub.queue, self.client, job_id, submitted_here=job_id in self.submitted)


def _valid_request_id(value: Any) -> bool:
    """A client's tag echoed back: a short string or a JSON-safe integer, nothing nested."""
    if isinstance(value, str):
        return len(value) <= MAX_REQUEST_ID
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53


def _str_field(message: dict[str, Any], name: str) -> str:
    value = message.get(name)
    if not isinstance(value, str):
        raise BadRequest(f"{name} is required and must be a string.", field=name)
    return value


_HANDLERS = {
    "auth": Connection.on_auth,
    "run": Connection.on_run,
    "stdin": Connection.on_stdin,
    "eof": Connection.on_eof,
    "stop": Connection.on_stop,
    "subscribe": Connection.on_subscribe,
    "unsubscribe": Connection.on_unsubscribe,
    "ping": Connection.on_ping,
}


async def handle_ws(request: web.Request, hub: Hub, client: Client) -> web.WebSocketResponse:
    """Upgrade after the origin and per-IP checks (done by the caller), then serve until the socket closes."""
    ws = web.WebSocketResponse(
        heartbeat=25.0,
        max_msg_size=hub.settings.ws_max_message_bytes,
        compress=False,  # messages are encoded once for all sockets; per-socket deflate would undo that
    )
    await ws.prepare(request)
    hello: dict[str, Any] = {"type": "hello", "connectionId": 0, "user": client.user, "admin": client.admin}
    if client.owner is None:
        # No cookie, no header: an owner token for this client, so that it can take its jobs back on another
        # connection (`auth` with `ownerToken`) and stop them over REST (X-Owner-Token). Never sent to a browser
        # that has the HttpOnly cookie: page scripts never see that one.
        token = new_owner_token()
        client = client.with_owner_token(token)
        hello["ownerToken"] = token
    conn = hub.register(ws, request, client)
    hello["connectionId"] = conn.id
    try:
        conn.send_json(hello)
        await conn.serve()
    finally:
        await hub.unregister(conn)
    if ws.close_code is None:
        await ws.close(code=WSCloseCode.OK)
    return ws
