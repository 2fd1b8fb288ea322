"""The WebSocket hub: routes queue events to sockets, replays a job's logged events, pushes queue stats.

The sockets' door (`GET /ws` and the client's messages, where access is checked) is server.doors.websocket; the hub
knows who a socket is (`Client`) and shows job handles, nothing more of access.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from contextlib import suppress

import orjson
from aiohttp import WSCloseCode, web

from ..access.permissions import Handles
from ..errors import BackendUnavailable
from ..queue import QueueBackend
from ..queue.events import Event, topic_event
from ..queue.jobs import TERMINAL_TYPES, Job
from ..queue.loops import raise_if_cancelling, stop_task
from ..settings import Settings
from .connection import Connection

logger = logging.getLogger(__name__)

# Jobs in a topic snapshot: the dashboard lists jobs from GET /queue/jobs, so a snapshot only says what is recent.
RECENT_JOBS = 20
# How long an interactive job outlives its submitter's socket, waiting for the same client to reconnect.
ORPHAN_GRACE_S = 10.0
# Topic messages kept after a snapshot was built, sent after it to later subscribers; past this it is rebuilt.
SNAPSHOT_TAIL = 256


class Hub:
    """Fan-out of queue events to WebSocket connections.

    The queue calls `on_event` synchronously; it encodes each event once (orjson) and hands the bytes to every
    interested connection's bounded send queue, so no socket can slow the queue or another socket.
    """

    def __init__(self, settings: Settings, queue: QueueBackend) -> None:
        self.settings = settings
        self.queue = queue
        self.handles = Handles()
        self.snapshot_builds = 0
        self._snapshot: _Snapshot | None = None
        self.connections: set[Connection] = set()
        self._ids = itertools.count(1)
        self._per_ip: dict[str, int] = {}
        self._by_job: dict[str, set[Connection]] = {}
        self._topic: set[Connection] = set()
        # Watchers being replayed to: live events wait here (bounded by the job's own log) until the replay is sent.
        self._replaying: dict[tuple[Connection, str], list[tuple[int, bytes]]] = {}
        self._positions: dict[str, int | None] = {}
        self._positions_dirty = asyncio.Event()
        self._stats_dirty = asyncio.Event()
        self._orphans: dict[str, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._closing = False

    async def start(self) -> None:
        self._unsubscribe = self.queue.events.subscribe(self.on_event)
        self._tasks.append(asyncio.create_task(self._stats_loop(), name="conveyor-hub-stats"))
        self._tasks.append(asyncio.create_task(self._positions_loop(), name="conveyor-hub-positions"))

    async def close(self) -> None:
        """Tell every socket the server is going away (1001) and stop."""
        self._closing = True
        for timer in self._orphans.values():
            timer.cancel()
        if self._unsubscribe is not None:
            self._unsubscribe()
        await asyncio.gather(
            *(conn.close(WSCloseCode.GOING_AWAY, "server shutting down") for conn in list(self.connections)),
            return_exceptions=True,
        )
        for task in self._tasks:
            await stop_task(task)

    # -- connections -----------------------------------------------------------------------------------------

    def admit(self, ip: str) -> bool:
        return self._per_ip.get(ip, 0) < self.settings.ws_max_connections_per_ip

    def hold_address(self, ip: str) -> bool:
        """Count a socket served elsewhere (Piston's /api/v2/connect) under the one per-address cap; False when the
        address is at it. Give the place back with `release_address`."""
        if not self.admit(ip):
            return False
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return True

    def release_address(self, ip: str) -> None:
        left = self._per_ip.get(ip, 1) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    @property
    def closing(self) -> bool:
        return self._closing

    def next_id(self) -> int:
        """The id of the next connection (its `hello` says it)."""
        return next(self._ids)

    def register(self, conn: Connection) -> None:
        self.connections.add(conn)
        self._per_ip[conn.client.ip] = self._per_ip.get(conn.client.ip, 0) + 1

    async def unregister(self, conn: Connection) -> None:
        self.connections.discard(conn)
        left = self._per_ip.get(conn.client.ip, 1) - 1
        if left > 0:
            self._per_ip[conn.client.ip] = left
        else:
            self._per_ip.pop(conn.client.ip, None)
        self._topic.discard(conn)
        for job_id in list(conn.jobs):
            self.unwatch(conn, job_id)
        # Nobody can feed an interactive job once its submitter is gone: stop it, after a grace period in which
        # the same client may reconnect and take it over (a browser on a flaky network resumes with `since`).
        loop = asyncio.get_running_loop()
        for job_id in conn.interactive:
            self._orphans[job_id] = loop.call_later(ORPHAN_GRACE_S, self._stop_orphan, job_id)
        await conn.shutdown()

    def adopt(self, conn: Connection, job: Job) -> None:
        """A reconnecting submitter takes back its interactive job, so it is not stopped as an orphan."""
        timer = self._orphans.pop(job.id, None)
        if timer is not None:
            timer.cancel()
        if job.interactive and not job.status.finished:
            conn.interactive.add(job.id)

    def _stop_orphan(self, job_id: str) -> None:
        self._orphans.pop(job_id, None)
        task = asyncio.get_running_loop().create_task(self._stop_quietly(job_id))
        self._tasks.append(task)

    async def _stop_quietly(self, job_id: str) -> None:
        with suppress(Exception):
            await self.queue.stop(job_id, "stopped")

    def note_rate_limited(self) -> None:
        """A 429 this hub answered (the socket cap, a message budget, the lockout): counted with the others."""
        self.queue.note_rate_limited()
        self.mark_stats_dirty()

    def mark_stats_dirty(self) -> None:
        """Something the stats show changed outside the event stream (a 503 or 429): push a snapshot soon."""
        if self._snapshot is not None:
            self._snapshot.changed = True
        self._stats_dirty.set()

    # -- subscriptions ---------------------------------------------------------------------------------------

    async def watch(self, conn: Connection, job_id: str, since: int | None = None) -> None:
        """Subscribe `conn` to one job; with `since`, first replay the job's logged events after that seq from the
        store (any instance holds every job's log). Live events that arrive meanwhile are held and sent after the
        replay, skipping what it already sent, so the client sees each seq once and in order."""
        conn.jobs.add(job_id)
        self._by_job.setdefault(job_id, set()).add(conn)
        if since is None:
            return
        key = (conn, job_id)
        held = self._replaying[key] = []
        try:
            events = await self.queue.read_events(job_id, since)
        finally:
            self._replaying.pop(key, None)
        last = since
        for event in events:
            if event["seq"] > last:
                conn.send(orjson.dumps(event))
                last = event["seq"]
        for seq, data in held:
            if seq > last:
                conn.send(data)
                last = seq
        conn.sent[job_id] = last

    def unwatch(self, conn: Connection, job_id: str) -> None:
        conn.jobs.discard(job_id)
        watchers = self._by_job.get(job_id)
        if watchers is not None:
            watchers.discard(conn)
            if not watchers:
                del self._by_job[job_id]
                self._positions.pop(job_id, None)
        self._replaying.pop((conn, job_id), None)
        conn.sent.pop(job_id, None)

    async def subscribe_topic(self, conn: Connection) -> None:
        """Send the snapshot for the connection's audience (admins: ids; everyone else: display handles), then the
        topic messages since it was built, then live ones. One shared snapshot serves every subscriber."""
        snapshot = await self._current_snapshot()
        # No await from here on: nothing can slip between the snapshot's tail and the live stream.
        admin = conn.client.admin
        conn.send(snapshot.admin if admin else snapshot.viewer)
        for data in snapshot.admin_tail if admin else snapshot.viewer_tail:
            conn.send(data)
        conn.in_topic = True
        self._topic.add(conn)

    def unsubscribe_topic(self, conn: Connection) -> None:
        conn.in_topic = False
        self._topic.discard(conn)

    async def readdress(self, conn: Connection, *, was_admin: bool) -> None:
        """The connection authenticated as someone else: give it the queue topic as its new audience sees it (an
        admin gets ids, a viewer handles)."""
        if conn.in_topic and was_admin != conn.client.admin:
            self.unsubscribe_topic(conn)
            await self.subscribe_topic(conn)

    async def _current_snapshot(self) -> _Snapshot:
        """The shared snapshot: rebuilt only when something changed since, and then at most once per stats
        interval (subscribers in between get the last one plus the messages since). Re-subscribing in a loop
        costs a copy of bytes, not a scan of the queue."""
        loop = asyncio.get_running_loop()
        snapshot = self._snapshot
        if snapshot is None or (
            snapshot.ready.done()
            and snapshot.changed
            and loop.time() - snapshot.built_at >= self.settings.stats_interval_ms / 1000.0
        ):
            snapshot = self._snapshot = _Snapshot(loop.create_future())
            self.snapshot_builds += 1
            # Its own task: a subscriber that leaves mid-build must not cancel the build the others wait for.
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks.append(loop.create_task(self._build_snapshot(snapshot), name="conveyor-hub-snapshot"))
        await asyncio.shield(snapshot.ready)
        return snapshot

    async def _build_snapshot(self, snapshot: _Snapshot) -> None:
        try:
            jobs = await self.queue.recent(RECENT_JOBS, whole=False)
            stats = await self.queue.stats()
            summaries = [{**job.summary(), "handle": self.handles(job.id)} for job in jobs]
            snapshot.admin = orjson.dumps({"type": "snapshot", "jobs": summaries, "stats": stats})
            for summary in summaries:
                del summary["id"]
            snapshot.viewer = orjson.dumps({"type": "snapshot", "jobs": summaries, "stats": stats})
            snapshot.built_at = asyncio.get_running_loop().time()
            snapshot.ready.set_result(None)
        except Exception as exc:
            # The next subscriber tries again; the ones waiting now get an error message.
            if self._snapshot is snapshot:
                self._snapshot = None
            snapshot.ready.set_exception(exc)
            snapshot.ready.exception()  # marked retrieved: the waiters report it, not the event loop
        finally:
            if not snapshot.ready.done():  # cancelled: the hub is closing
                if self._snapshot is snapshot:
                    self._snapshot = None
                snapshot.ready.cancel()

    def _to_topic(self, admin_data: bytes, viewer_data: bytes) -> None:
        for conn in tuple(self._topic):
            conn.send(admin_data if conn.client.admin else viewer_data)
        snapshot = self._snapshot
        if snapshot is not None:
            snapshot.changed = True
            snapshot.admin_tail.append(admin_data)
            snapshot.viewer_tail.append(viewer_data)
            if len(snapshot.admin_tail) > SNAPSHOT_TAIL and snapshot.ready.done():
                self._snapshot = None

    # -- events ----------------------------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """The queue's listener: route and mark stats dirty. Never awaits."""
        job_id: str = event["jobId"]
        kind = event["type"]
        watchers = self._by_job.get(job_id)
        if watchers:  # encoded once for all of them; most jobs have none (a POST /run waits for its answer)
            self._to_watchers(watchers, job_id, event, orjson.dumps(event))
        if kind not in ("output", "test"):
            self._lifecycle(event, job_id)
        if kind in TERMINAL_TYPES:
            orphan = self._orphans.pop(job_id, None)
            if orphan is not None:
                orphan.cancel()
            for conn in tuple(watchers or ()):
                conn.interactive.discard(job_id)

    def _to_watchers(self, watchers: set[Connection], job_id: str, event: Event, data: bytes) -> None:
        """A job's event to its watchers: held for those being replayed to, skipped by those that have it."""
        replaying = self._replaying
        seq = event.get("seq")
        for conn in tuple(watchers):
            held = replaying.get((conn, job_id)) if replaying else None
            if held is not None:
                held.append((event["seq"], data))
                continue
            if seq is not None:
                if seq <= conn.sent.get(job_id, 0):
                    continue  # the replay sent it already
                conn.sent[job_id] = seq
            conn.send(data)

    def _lifecycle(self, event: Event, job_id: str) -> None:
        """A lifecycle event: to the queue topic (metadata only), and the stats and positions marked dirty."""
        # Lifecycle metadata only (events.topic_event): the queue topic never carries code, stdin, output or a
        # test's fields, and only admins get the id (a capability); everyone else a display handle.
        shown = topic_event(event) if self._topic or self._snapshot is not None else None
        if shown is not None:
            handle = self.handles(job_id)
            viewer = {k: v for k, v in shown.items() if k != "jobId"}
            viewer["handle"] = handle
            self._to_topic(orjson.dumps({**shown, "handle": handle}), orjson.dumps(viewer))
        self._stats_dirty.set()
        if self._positions:  # a start, an end or a higher-priority arrival moves the line
            self._positions_dirty.set()

    async def _positions_loop(self) -> None:
        """Tell watchers of queued jobs when their place in line moved. One pass at a time, so a position computed
        earlier is never sent after a later one; each pass reads every watched job's rank in one store call."""
        while True:
            await self._positions_dirty.wait()
            self._positions_dirty.clear()
            try:
                await self._refresh_positions()
            except Exception as exc:
                raise_if_cancelling()
                logger.warning("position refresh failed: %s", exc)
                await asyncio.sleep(1)

    async def _refresh_positions(self) -> None:
        places = await self.queue.positions(list(self._positions))
        for job_id, position in places.items():
            if job_id not in self._positions:
                continue  # unwatched meanwhile
            if position is None:
                self._positions.pop(job_id, None)
            elif position != self._positions[job_id]:
                self._positions[job_id] = position
                data = orjson.dumps({"type": "position", "jobId": job_id, "position": position})
                for conn in tuple(self._by_job.get(job_id, ())):
                    conn.send(data)

    def track_position(self, job_id: str, position: int | None) -> None:
        """Remember a watched queued job's place so `position` messages go out when it moves."""
        if position is not None:
            self._positions[job_id] = position

    async def _stats_loop(self) -> None:
        interval = self.settings.stats_interval_ms / 1000.0
        while True:
            await self._stats_dirty.wait()
            self._stats_dirty.clear()
            try:
                if self._topic:
                    data = orjson.dumps({"type": "stats", **(await self.queue.stats())})
                    self._to_topic(data, data)
            except BackendUnavailable as exc:
                raise_if_cancelling()
                logger.warning("stats broadcast skipped: %s", exc.message)  # an outage, already logged by the store
            except Exception:
                raise_if_cancelling()
                logger.exception("stats broadcast failed")
            await asyncio.sleep(interval)


HUB = web.AppKey("hub", Hub)


class _Snapshot:
    """One queue-topic snapshot in both encodings, and the topic messages sent since it was built."""

    __slots__ = ("admin", "admin_tail", "built_at", "changed", "ready", "viewer", "viewer_tail")

    def __init__(self, ready: asyncio.Future[None]) -> None:
        self.ready = ready
        self.admin = b""
        self.viewer = b""
        self.admin_tail: list[bytes] = []
        self.viewer_tail: list[bytes] = []
        self.built_at = 0.0
        self.changed = False
