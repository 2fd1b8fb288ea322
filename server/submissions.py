"""Submissions: queueing a job from any front door (REST, batches, the WebSocket, the compat APIs), with its
callback followed from before it can start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson
from aiohttp import web

from .callbacks import CallbackSender, Delivery, callback_sender
from .errors import QueueFull
from .events import Event
from .jobs import TERMINAL_TYPES, Job
from .keys import CALLBACKS, HUB, QUEUE, SETTINGS, SUBMITTERS
from .watch import job_watch

_deliveries: set[asyncio.Task[None]] = set()  # strong references until each has fetched its job
# What a callback carries: the finished job as its owner reads it (GET /queue/job/{id}).
BodyOf = Callable[[Job], bytes]


def native_body(job: Job) -> bytes:
    return orjson.dumps(job.to_dict())


async def submit(
    app: web.Application, job: Job, *, callback_body: BodyOf = native_body, callback_method: str = "POST"
) -> Job:
    """Queue `job`. With a callback URL, the instance that accepted it delivers the finished job there."""
    unfollow = None
    if job.callback_url is not None:
        unfollow = follow_callback(app, job.id, job.callback_url, callback_body, callback_method)
    submitters = app.get(SUBMITTERS)  # the job log's: who submitted it, through which door
    if submitters is not None:
        submitters.remember(job)
    try:
        queued = await app[QUEUE].submit(job)
    except BaseException as exc:
        if submitters is not None:
            submitters.pop(job.id)
        if unfollow is not None:
            unfollow()
        if isinstance(exc, QueueFull) and HUB in app:
            app[HUB].mark_stats_dirty()
        raise
    if submitters is not None:
        submitters.submitted(job)
    return queued


def follow_callback(app: web.Application, job_id: str, url: str, body_of: BodyOf, method: str) -> Callable[[], None]:
    """Deliver the job to `url` when it finishes; returns the function that gives up on it. Follow before the job
    is queued: it can start, and finish, before `submit` returns."""

    def on_event(event: Event) -> None:
        if event["type"] not in TERMINAL_TYPES:
            return
        unfollow()
        task = asyncio.ensure_future(_deliver(app, job_id, url, body_of, method))
        _deliveries.add(task)
        task.add_done_callback(_deliveries.discard)

    unfollow = job_watch(app).follow(job_id, on_event)
    return unfollow


async def _deliver(app: web.Application, job_id: str, url: str, body_of: BodyOf, method: str) -> None:
    job = await app[QUEUE].get(job_id)
    if job is not None and CALLBACKS in app:
        app[CALLBACKS].enqueue(Delivery(job_id=job_id, url=url, body=body_of(job), method=method))


def setup_callbacks(app: web.Application) -> None:
    """One SSRF-safe sender for every callback of the app (native POSTs and Judge0's PUTs)."""
    job_watch(app)

    async def sender(app: web.Application) -> AsyncIterator[None]:
        async with callback_sender(app[SETTINGS]) as sender:
            app[CALLBACKS] = sender
            yield

    app.cleanup_ctx.append(sender)


__all__ = ["CallbackSender", "follow_callback", "native_body", "setup_callbacks", "submit"]
