"""Every typed application and request key in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from .events import EventEmitter
from .identity import Client
from .jobs import Runner
from .queue import QueueBackend
from .settings import Settings

if TYPE_CHECKING:
    from .callbacks import CallbackSender
    from .history import HistorySampler
    from .hub import Hub
    from .joblog import Submitters
    from .metrics import Metrics
    from .ratelimit import RateLimiter
    from .watch import JobWatch

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
