"""The WebSocket door (`GET /ws`): the upgrade, then the client's messages read, checked and answered.

The hub (server.hub) routes the queue's events to the socket; this door is where a socket meets access (who may
connect, authenticate, submit, drive and watch), as the HTTP doors do.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from ..access.identity import CLIENT, OWNER_TOKEN, Client, anonymous, check_priority, new_owner_token, peer_ip
from ..access.lockout import AuthLockout
from ..access.permissions import drivable_job, is_owner, may_read, readable_job
from ..errors import BadRequest, ConveyorError, Forbidden, TooManyRequests, Unauthorized
from ..hub.budget import MessageBudget, Spend
from ..hub.connection import Connection
from ..hub.hub import HUB, Hub
from ..keys import RUNNER
from ..queue.jobs import Job, Runner
from ..settings import Settings
from .accesslog import audit
from .payloads import parse_run

logger = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
# Jobs a connection submitted and may drive as their submitter; the oldest are forgotten past this.
MAX_SUBMITTED = 1024
# Jobs one connection may watch at once.
MAX_WATCHED = 256
MAX_REQUEST_ID = 128
# The fields of a `run` message that are not the submission's.
RUN_ENVELOPE = frozenset({"type", "requestId"})

# Draws one token from the client's bucket (submit or read); raises TooManyRequests past it, counted.
BucketCheck = Callable[[Client], Awaitable[None]]
KeyAuth = Callable[[str, str], Client]


class SocketDoor:
    """`GET /ws`, and what a socket's messages are checked against: the buckets, API keys, the lockout, and the
    app's one submission path."""

    def __init__(
        self,
        settings: Settings,
        *,
        check_submit: BucketCheck | None = None,
        check_read: BucketCheck | None = None,
        authenticate_key: KeyAuth | None = None,
        lockout: AuthLockout | None = None,
        submit: Callable[[Job, Client], Awaitable[Job]] | None = None,
    ) -> None:
        self.settings = settings
        self.check_submit = check_submit
        # A replay sends a job's whole log (up to MAX_OUTPUT_BYTES) for one short message: it is a read.
        self.check_read = check_read
        self.authenticate_key = authenticate_key
        self.lockout = lockout
        # How a `run` message is queued: the app's one submission path (callbacks followed), else the queue's own.
        self.submit = submit

    async def open_socket(self, request: web.Request) -> web.StreamResponse:
        """GET /ws: refuse cross-origin upgrades (cross-site WebSocket hijacking) and too many sockets per address."""
        hub = request.app[HUB]
        origin = request.headers.get("Origin")
        if origin is not None:
            allowed = self.settings.allowed_origins or (f"{request.scheme}://{request.host}",)
            if origin not in allowed:
                raise Forbidden(f"Origin {origin!r} may not open a WebSocket here.", origin=origin)
        if hub.closing:
            raise web.HTTPServiceUnavailable(text="The server is shutting down.")
        client = request.get(CLIENT) or anonymous(peer_ip(request))
        if not hub.admit(client.ip):
            hub.note_rate_limited()
            raise TooManyRequests(
                f"At most {self.settings.ws_max_connections_per_ip} WebSocket connections per address.",
                headers={"Retry-After": "5"},
                retryAfter=5,
            )
        return await self._serve(request, hub, client)

    async def _serve(self, request: web.Request, hub: Hub, client: Client) -> web.WebSocketResponse:
        """Upgrade after the origin and per-IP checks, then serve until the socket closes."""
        ws = web.WebSocketResponse(
            heartbeat=25.0,
            max_msg_size=self.settings.ws_max_message_bytes,
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
        conn = Socket(self, hub, request.app[RUNNER], hub.next_id(), ws, request, client)
        hub.register(conn)
        hello["connectionId"] = conn.id
        try:
            conn.send_json(hello)
            await conn.serve(conn.read_loop)
        finally:
            await hub.unregister(conn)
        if ws.close_code is None:
            await ws.close(code=WSCloseCode.OK)
        return ws


class Socket(Connection):
    """One connection as the door sees it: its messages, within the message budget, handled in order."""

    def __init__(
        self,
        door: SocketDoor,
        hub: Hub,
        runner: Runner,
        conn_id: int,
        ws: web.WebSocketResponse,
        request: web.Request,
        client: Client,
    ) -> None:
        super().__init__(conn_id, ws, request, client, door.settings.ws_send_queue_size)
        self.door = door
        self.hub = hub
        self.runner = runner
        self.budget = MessageBudget(door.settings)

    def _within_budget(self) -> bool:
        """Take one message from the budget. Past it: one clear error, then drops; a client that keeps sending
        a whole burst more after being told is closed (1008)."""
        spent = self.budget.spend()
        if spent is Spend.TAKE:
            return True
        if spent is Spend.NOTIFY:
            self.hub.note_rate_limited()
            self.send_error(self.budget.refusal())
        elif spent is Spend.CLOSE:
            logger.warning("closing WebSocket %d (%s): message budget exceeded", self.id, self.client.ip)
            self.end(POLICY_VIOLATION, "message budget exceeded")
        return False

    async def read_loop(self) -> None:
        async for msg in self.ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and not self._within_budget():
                if self.close_requested:
                    break
                continue
            if msg.type == WSMsgType.TEXT:
                await self._handle_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self.send_error(BadRequest("Send JSON text frames, not binary ones."))
            elif msg.type == WSMsgType.ERROR:
                break

    async def _handle_text(self, text: str) -> None:
        message = self._parse_message(text)
        if message is None:
            return
        request_id = message.get("requestId")
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

    def _parse_message(self, text: str) -> dict[str, Any] | None:
        """The message as a JSON object with a valid requestId, or None when the client was told it is not one."""
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.send_error(BadRequest("The message is not valid JSON."))
            return None
        if not isinstance(message, dict):
            self.send_error(BadRequest("A message must be a JSON object with a type."))
            return None
        request_id = message.get("requestId")
        if request_id is not None and not _valid_request_id(request_id):
            self.send_error(
                BadRequest(
                    f"requestId must be a string of at most {MAX_REQUEST_ID} characters or an integer.",
                    field="requestId",
                )
            )
            return None
        return message

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
        await self._reidentify(client)
        self.send_json({"type": "auth", "user": self.client.user, "admin": self.client.admin})

    async def _authenticate(self, key: str) -> Client:
        door, hub = self.door, self.hub
        if door.authenticate_key is None:
            raise BadRequest("This server has no API keys configured.")
        try:
            if door.lockout is not None:
                door.lockout.check(self.client.ip)
            try:
                return door.authenticate_key(key, self.client.ip)
            except Unauthorized as exc:
                audit("auth-failure", user="-", ip=self.client.ip, door="websocket")  # as HTTP 401s are (accesslog)
                refusal = await door.lockout.failed(self.client.ip) if door.lockout is not None else None
                raise refusal or exc from None
        except TooManyRequests:
            hub.note_rate_limited()
            raise

    async def _reidentify(self, client: Client) -> None:
        """The connection authenticated as someone else: drop what it may no longer watch, and give it the queue
        topic as its new audience sees it (an admin gets ids, a viewer handles)."""
        before, self.client = self.client, client
        # Only a key user or an admin can have been watching a job that others may not read.
        if (before.user is not None or before.admin) and (before.owner, before.admin) != (client.owner, client.admin):
            for job_id in list(self.jobs):
                job = await self.hub.queue.get(job_id)
                if job is not None and not may_read(client, job):
                    self.hub.unwatch(self, job_id)
        await self.hub.readdress(self, was_admin=before.admin)

    async def on_run(self, message: dict[str, Any]) -> None:
        door, hub = self.door, self.hub
        run = parse_run(message, door.settings, self.runner, allow_interactive=True, envelope=RUN_ENVELOPE)
        check_priority(self.client, run.priority)
        if door.check_submit is not None:
            await door.check_submit(self.client)
        job = run.to_job(self.client.job_owner)
        job = await door.submit(job, self.client) if door.submit is not None else await hub.queue.submit(job)
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
        if self.door.check_read is not None:
            await self.door.check_read(self.client)
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
    "auth": Socket.on_auth,
    "run": Socket.on_run,
    "stdin": Socket.on_stdin,
    "eof": Socket.on_eof,
    "stop": Socket.on_stop,
    "subscribe": Socket.on_subscribe,
    "unsubscribe": Socket.on_unsubscribe,
    "ping": Socket.on_ping,
}
