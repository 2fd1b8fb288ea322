"""Every typed application and request key in one place."""

from __future__ import annotations

import time

from aiohttp import web

from .events import EventEmitter
from .identity import Client
from .queue import QueueBackend
from .settings import Settings

SETTINGS = web.AppKey("settings", Settings)
QUEUE = web.AppKey("queue", QueueBackend)
EVENTS = web.AppKey("events", EventEmitter)
STARTED_AT = web.AppKey("started_at", float)

CLIENT = web.RequestKey("client", Client)

__all__ = ["CLIENT", "EVENTS", "QUEUE", "SETTINGS", "STARTED_AT", "time"]
