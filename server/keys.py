"""Every typed application and request key in one place."""

from __future__ import annotations

from aiohttp import web

from .events import EventEmitter
from .identity import Client
from .jobs import Runner
from .queue import QueueBackend
from .settings import Settings

SETTINGS = web.AppKey("settings", Settings)
QUEUE = web.AppKey("queue", QueueBackend)
EVENTS = web.AppKey("events", EventEmitter)
STARTED_AT = web.AppKey("started_at", float)
RUNNER = web.AppKey("runner", Runner)

CLIENT = web.RequestKey("client", Client)

__all__ = ["CLIENT", "EVENTS", "QUEUE", "RUNNER", "SETTINGS", "STARTED_AT"]
