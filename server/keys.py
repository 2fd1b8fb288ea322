"""Every typed application and request key in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from .access.identity import Client
from .queue import QueueBackend
from .queue.events import EventEmitter
from .queue.jobs import Runner
from .settings import Settings

if TYPE_CHECKING:
    from .access.ratelimit import RateLimiter
    from .callbacks import CallbackSender
    from .doors.history import HistorySampler
    from .doors.metrics import Metrics
    from .hub.hub import Hub
    from .hub.watch import JobWatch
    from .queue.joblog import Submitters

SETTINGS = web.AppKey("settings", Settings)
QUEUE = web.AppKey("queue", QueueBackend)
EVENTS = web.AppKey("events", EventEmitter)
STARTED_AT = web.AppKey("started_at", float)
RUNNER = web.AppKey("runner", Runner)
# Typed by annotation: the hub module imports this one.
HUB: web.AppKey[Hub] = web.AppKey("hub")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
HISTORY: web.AppKey[HistorySampler] = web.AppKey("history")
CALLBACKS: web.AppKey[CallbackSender] = web.AppKey("callbacks")
LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter")
WATCH: web.AppKey[JobWatch] = web.AppKey("watch")
SUBMITTERS: web.AppKey[Submitters] = web.AppKey("submitters")

CLIENT = web.RequestKey("client", Client)

__all__ = [
    "CALLBACKS",
    "CLIENT",
    "EVENTS",
    "HISTORY",
    "HUB",
    "LIMITER",
    "METRICS",
    "QUEUE",
    "RUNNER",
    "SETTINGS",
    "STARTED_AT",
    "WATCH",
]
