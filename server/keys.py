"""The application keys typed by the floors under every room: the settings and the queue's parts.

A key typed by a room's own class lives with that class (`HUB` in server.hub.hub, `LIMITER` in
server.access.ratelimit.limiter, `CLIENT` in server.access.identity, ...), so this module imports only from below.
"""

from __future__ import annotations

from aiohttp import web

from .queue import QueueBackend
from .queue.events import EventEmitter
from .queue.joblog import Submitters
from .queue.jobs import Runner
from .settings import Settings

SETTINGS = web.AppKey("settings", Settings)
QUEUE = web.AppKey("queue", QueueBackend)
EVENTS = web.AppKey("events", EventEmitter)
STARTED_AT = web.AppKey("started_at", float)
RUNNER = web.AppKey("runner", Runner)
SUBMITTERS = web.AppKey("submitters", Submitters)

__all__ = ["EVENTS", "QUEUE", "RUNNER", "SETTINGS", "STARTED_AT", "SUBMITTERS"]
