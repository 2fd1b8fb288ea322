"""Piston v2's WebSocket (`/api/v2/connect`): one interactive native job per socket, in Piston's messages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from ...access.identity import Client, check_priority
from ...access.ratelimit import raise_if_denied
from ...access.ratelimit.limiter import LIMITER
from ...doors.api import client_of
from ...doors.payloads import parse_run
from ...doors.submissions import submit
from ...errors import BadRequest, Conflict, ConveyorError, Forbidden, PayloadTooLarge, TooManyRequests
from ...hub.budget import MessageBudget, Spend
from ...hub.hub import HUB
from ...hub.watch import job_watch
from ...keys import QUEUE, RUNNER, SETTINGS
from ...queue.events import Event
from ...queue.jobs import TERMINAL_TYPES, ExecutionResult, Job
from .result import compile_stage, run_stage
from .runtimes import PistonRuntime, Runtimes
from .submission import parse_execute

logger = logging.getLogger(__name__)

# Piston closes a socket that has not sent `init` within a second (api/src/api/v2.js).
INIT_TIMEOUT_S = 1.0
# The signal names Piston accepts (api/src/globals.js).
SIGNALS = frozenset(
    f"SIG{name}"
    for name in [
        *"HUP INT QUIT ILL TRAP ABRT BUS FPE KILL USR1 SEGV USR2 PIPE ALRM TERM STKFLT CHLD CONT STOP TSTP TTIN TTOU "
        "URG XCPU XFSZ VTALRM PROF WINCH IO PWR SYS".split(),
        "RTMIN",
        *(f"RTMIN+{n}" for n in range(1, 16)),
        *(f"RTMAX-{n}" for n in range(1, 15)),
        "RTMAX",
    ]
)
# Signals whose default action does not end a process: accepted and ignored, as the program would.
HARMLESS = frozenset({"SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGWINCH"})


@dataclass(frozen=True, slots=True)
class Close:
    """Close the socket with a Piston close code."""

    code: int
    reason: str


class Finished:
    """The job ended: report the stages' exits, then close with 4999."""


Item = dict[str, Any] | Close | Finished


class PistonSockets:
    """The sockets of `/api/v2/connect`: admission (origin, per-address count) and shutdown."""

    def __init__(self, app: web.Application, runtimes: Callable[[], Runtimes]) -> None:
        self.app = app
        self.runtimes = runtimes
        self.sessions: set[Session] = set()
        self.closing = False
        self.tasks: set[asyncio.Task[None]] = set()

    def setup(self) -> None:
        self.app.router.add_get("/api/v2/connect", self.connect)
        self.app.on_shutdown.append(self.close_all)

    async def close_all(self, app: web.Application) -> None:
        self.closing = True
        for session in tuple(self.sessions):
            session.request_close(Close(1001, "server shutting down"))
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def connect(self, request: web.Request) -> web.StreamResponse:
        settings = request.app[SETTINGS]
        # As /ws does: a page on another origin must not drive a visitor's socket (cross-site WebSocket hijacking).
        origin = request.headers.get("Origin")
        if origin is not None and origin not in (settings.allowed_origins or (f"{request.scheme}://{request.host}",)):
            raise Forbidden(f"Origin {origin!r} may not open a WebSocket here.", origin=origin)
        if self.closing:
            raise web.HTTPServiceUnavailable(text="The server is shutting down.")
        client = client_of(request)
        # One per-address cap for every WebSocket, the hub's and these (each had its own: two caps' worth).
        hub = request.app[HUB]
        if not hub.hold_address(client.ip):
            raise TooManyRequests(
                f"At most {settings.ws_max_connections_per_ip} WebSocket connections per address.",
                headers={"Retry-After": "5"},
                retryAfter=5,
            )
        ws = web.WebSocketResponse(max_msg_size=settings.ws_max_message_bytes)
        try:
            await ws.prepare(request)
        except BaseException:
            hub.release_address(client.ip)
            raise
        session = Session(self, ws, client)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            hub.release_address(client.ip)
            self.sessions.discard(session)
            if session.job is not None and not session.finished:
                # Nobody can feed or watch it any more: stop it, whatever happens to this handler.
                task = asyncio.ensure_future(_stop_quietly(request.app, session.job.id))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        return ws


async def _stop_quietly(app: web.Application, job_id: str) -> None:
    with suppress(ConveyorError):
        await app[QUEUE].stop(job_id, "stopped")


class Session:
    """One socket's conversation. Queue events arrive synchronously and go through `outbox`; only this task
    reads and writes the socket (aiohttp finishes a close handshake only when no other task is receiving)."""

    def __init__(self, sockets: PistonSockets, ws: web.WebSocketResponse, client: Client) -> None:
        self.sockets = sockets
        self.app = sockets.app
        self.ws = ws
        self.client = client
        self.outbox: asyncio.Queue[Item] = asyncio.Queue()
        self.limit = self.app[SETTINGS].ws_send_queue_size
        self.budget = MessageBudget(self.app[SETTINGS])
        self.job: Job | None = None
        self.rt: PistonRuntime | None = None
        self.running = False
        self.compiling = False
        self.finished = False
        self.pending_stdin: list[bytes | None] = []
        self.pending_size = 0
        self.unfollow: Any = None

    def request_close(self, close: Close) -> None:
        self.outbox.put_nowait(close)

    def send(self, message: dict[str, Any]) -> None:
        if self.outbox.qsize() >= self.limit:
            # A client that does not read is not buffered for without bound.
            self.request_close(Close(1013, "send queue overflow"))
            return
        self.outbox.put_nowait(message)

    async def run(self) -> None:
        try:
            first = await asyncio.wait_for(self.ws.receive(), INIT_TIMEOUT_S)
        except TimeoutError:
            await self.ws.close(code=4001, message=b"Initialization Timeout")
            return
        try:
            await self._loop(first)
        finally:
            if self.unfollow is not None:
                self.unfollow()

    async def _loop(self, message: Any) -> None:
        receive: asyncio.Task[Any] | None = None
        take: asyncio.Task[Item] = asyncio.ensure_future(self.outbox.get())
        try:
            while True:
                if message is not None:
                    if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                        return  # closed by the client, or broken
                    close = await self.within_budget(message.data)
                    message = None
                    if close is not None:
                        await self._close(receive, close)
                        return
                if receive is None:
                    receive = asyncio.ensure_future(self.ws.receive())
                done, _ = await asyncio.wait({receive, take}, return_when=asyncio.FIRST_COMPLETED)
                if take in done:
                    # No getter while the item is handled: the last messages are drained from the outbox then.
                    close = await self.on_item(take.result())
                    if close is not None:
                        await self._close(receive, close)
                        return
                    take = asyncio.ensure_future(self.outbox.get())
                if receive in done:
                    message, receive = receive.result(), None
        finally:
            for task in (receive, take):
                if task is not None and not task.done():
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task

    async def _close(self, receive: asyncio.Task[Any] | None, close: Close) -> None:
        if receive is not None and not receive.done():
            receive.cancel()
            with suppress(asyncio.CancelledError):
                await receive
        await self.ws.close(code=close.code, message=close.reason.encode())

    async def on_item(self, item: Item) -> Close | None:
        if isinstance(item, Close):
            return item
        if isinstance(item, Finished):
            await self.report_exit()
            return Close(4999, "Job Completed")
        if item.get("type") == "_flush":
            await self.flush_stdin()
            return None
        await self.ws.send_str(orjson.dumps(item).decode())
        return None

    async def within_budget(self, raw: str | bytes) -> Close | None:
        """The hub's message budget (WS_MESSAGES_PER_SECOND, WS_MESSAGE_BURST), then Piston's handling."""
        spent = self.budget.spend()
        if spent is Spend.TAKE:
            return await self.on_message(raw)
        if spent is Spend.NOTIFY:
            await self.ws.send_str(orjson.dumps({"type": "error", "message": self.budget.refusal().message}).decode())
        elif spent is Spend.CLOSE:
            logger.warning("closing a Piston WebSocket (%s): message budget exceeded", self.client.ip)
            return Close(1008, "message budget exceeded")
        return None

    async def on_message(self, raw: str | bytes) -> Close | None:
        """Piston's message handling (v2.js), with its close codes; an error is reported, then 4002."""
        try:
            message = orjson.loads(raw)
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "init":
                if self.job is not None:
                    return Close(4000, "Already Initialized")
                await self.init(message)
            elif kind == "data":
                if self.job is None:
                    return Close(4003, "Not yet initialized")
                if message.get("stream") != "stdin":
                    return Close(4004, "Can only write to stdin")
                await self.stdin(message)
            elif kind == "signal":
                if self.job is None:
                    return Close(4003, "Not yet initialized")
                name = message.get("signal")
                if not isinstance(name, str) or name not in SIGNALS:  # a list is unhashable: check the type first
                    return Close(4005, "Invalid signal")
                if name not in HARMLESS:
                    await _stop_quietly(self.app, self.job.id)
        except orjson.JSONDecodeError as exc:
            return await self.fail(f"The message is not valid JSON: {exc}")
        except ConveyorError as exc:
            return await self.fail(exc.message)
        return None

    async def fail(self, message: str) -> Close:
        # A close reason is limited to 123 bytes, so Piston sends the error as a message first.
        await self.ws.send_str(orjson.dumps({"type": "error", "message": message}).decode())
        return Close(4002, "Notified Error")

    async def init(self, message: dict[str, Any]) -> None:
        app, settings = self.app, self.app[SETTINGS]
        rt, native = parse_execute(message, self.sockets.runtimes(), settings)
        # Piston's socket never writes init's stdin; here it is the program's first input, sent as given.
        native["stdin"] = message.get("stdin") or ""
        native["interactive"] = True
        run = parse_run(native, settings, app[RUNNER], allow_interactive=True)
        check_priority(self.client, run.priority)
        raise_if_denied(await app[LIMITER].hit(self.client, "submit"), "submit")  # the limiter counts a denial
        job = run.to_job(self.client.job_owner)
        # Before submitting: the job can start (and send `stage`) before submit returns.
        self.rt = rt
        self.send({"type": "runtime", "language": rt.language, "version": rt.version})
        self.unfollow = job_watch(app).follow(job.id, self.on_event)
        await submit(app, job)
        self.job = job

    async def stdin(self, message: dict[str, Any]) -> None:
        """`{"type": "data", "stream": "stdin", "data": ...}`; `"eof": true` (our addition) closes stdin after."""
        data = message.get("data", "")
        if not isinstance(data, str):
            raise BadRequest("data must be a string")
        chunks: list[bytes | None] = [data.encode()] if data else []
        if message.get("eof") is True:
            chunks.append(None)
        if not self.running:
            self.pending_size += len(data.encode())
            if self.pending_size > self.app[SETTINGS].max_stdin_bytes:
                raise PayloadTooLarge(f"stdin sent before the program started is over {self.pending_size} bytes")
            self.pending_stdin += chunks
            return
        await self._write(chunks)

    async def flush_stdin(self) -> None:
        chunks, self.pending_stdin = self.pending_stdin, []
        await self._write(chunks)

    async def _write(self, chunks: list[bytes | None]) -> None:
        assert self.job is not None
        for chunk in chunks:
            try:
                await self.app[QUEUE].write_stdin(self.job.id, chunk)
            except Conflict:
                return  # the program has ended; its input goes nowhere, as a closed pipe's would

    def on_event(self, event: Event) -> None:
        """The job's queue events, as Piston's `stage` and `data` messages (called synchronously by the queue)."""
        kind = event["type"]
        if kind == "running":
            self.running = True
            self.compiling = bool(self.rt and self.rt.compiled)
            self.send({"type": "stage", "stage": "compile" if self.compiling else "run"})
            self.outbox.put_nowait({"type": "_flush"})
        elif kind == "output":
            if self.compiling:
                self.end_compile(ExecutionResult())
            self.send({"type": "data", "stream": event["stream"], "data": event["data"]})
        elif kind in TERMINAL_TYPES:
            self.finished = True
            self.outbox.put_nowait(Finished())

    def end_compile(self, result: ExecutionResult) -> bool:
        """Close the compile stage; True when it succeeded and the run stage follows. Conveyor does not stream
        the compiler's output: a failed compile sends it as one stderr message."""
        self.compiling = False
        stage = compile_stage(result)
        if stage["code"] != 0 and stage["output"]:
            self.send({"type": "data", "stream": "stderr", "data": stage["output"]})
        self.send({"type": "exit", "stage": "compile", "code": stage["code"], "signal": stage["signal"]})
        if stage["code"] != 0:
            return False
        self.send({"type": "stage", "stage": "run"})
        return True

    async def report_exit(self) -> None:
        assert self.job is not None
        job = await self.app[QUEUE].get(self.job.id) or self.job
        result = job.result or ExecutionResult()
        if self.compiling and not self.end_compile(result):
            await self.drain()
            return
        stage = run_stage(result, "", job.execution_time_ms)
        self.send({"type": "exit", "stage": "run", "code": stage["code"], "signal": stage["signal"]})
        await self.drain()

    async def drain(self) -> None:
        """Send what is queued (the last stage messages) before the close."""
        while not self.outbox.empty():
            item = self.outbox.get_nowait()
            if isinstance(item, dict) and item.get("type") != "_flush":
                await self.ws.send_str(orjson.dumps(item).decode())
