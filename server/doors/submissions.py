"""Submissions: queueing a job from any front door (REST, batches, the WebSocket, the compat APIs), with its
callback armed in the outbox and followed from before it can start."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiohttp import web

from ..access.identity import Client
from ..access.ratelimit import Decision
from ..access.ratelimit.limiter import LIMITER
from ..callbacks import Armed, BodyOf, CallbackSender, callback_sender, recovering
from ..callbacks.sender import CALLBACKS
from ..errors import BackendUnavailable, BadRequest, QueueFull, TooManyRequests
from ..hub.hub import HUB
from ..hub.watch import job_watch
from ..keys import QUEUE, SETTINGS, SUBMITTERS
from ..queue.events import Event
from ..queue.jobs import TERMINAL_TYPES, Job
from ..settings import Settings

logger = logging.getLogger(__name__)
_deliveries: set[asyncio.Task[None]] = set()  # strong references until each has fetched its job
# Callback bodies by format name (an armed callback names its own): any instance builds any body from the job.
CALLBACK_BODIES: web.AppKey[dict[str, BodyOf]] = web.AppKey("callback_bodies")


def native_body(job: Job) -> bytes:
    """The native doors' callback: the finished job as its owner reads it (GET /queue/job/{id})."""
    return orjson.dumps(job.to_dict())


def register_callback_body(app: web.Application, name: str, body_of: BodyOf) -> None:
    """Name how a callback's body is built from its finished job (a compat dialect registers its own at setup)."""
    if CALLBACK_BODIES not in app:
        app[CALLBACK_BODIES] = {}
    app[CALLBACK_BODIES][name] = body_of


def submit_cost(settings: Settings, job: Job) -> int:
    """Submit tokens a job costs: the worker slot time it may book ((its tests, or 1) x its timeout) over what one
    token buys, at least one. Without this, 64 tests made one token worth 64 timeouts of a slot."""
    booked_ms = max(1, len(job.tests or ())) * job.timeout_ms
    return max(1, math.ceil(booked_ms / (settings.submit_token_slot_seconds * 1000)))


async def charge(app: web.Application, client: Client, job: Job, *, refund_refusal: bool) -> Decision | None:
    """Draw what `job` costs beyond the one token its door drew already. BadRequest when it costs more than the
    bucket holds (it could never run; with `refund_refusal` the door's token is given back here, else the HTTP
    middleware does); TooManyRequests (counted, and every token given back) when the tokens are not there.
    Returns the last draw (what the rate-limit headers should say), None when the door's token was all."""
    settings, limiter = app[SETTINGS], app[LIMITER]
    cost = submit_cost(settings, job)
    if cost == 1:
        return None
    policy = limiter.policy(client, "submit")
    if cost > policy.capacity:
        if refund_refusal:
            await limiter.refund(client, "submit")
        raise BadRequest(
            f"This submission books {len(job.tests or ()) or 1} x {job.timeout_ms} ms of a worker slot: {cost} submit "
            f"tokens at {settings.submit_token_slot_seconds} s each, more than the {policy.capacity} a client holds. "
            "Lower timeoutMs or send fewer tests at once.",
            field="tests" if job.tests else "timeoutMs",
            cost=cost,
            capacity=policy.capacity,
        )
    taken = 0
    decision = None
    try:
        for _ in range(cost - 1):
            decision = await limiter.hit(client, "submit")
            if not decision.allowed:
                missing = cost - 1 - taken
                if QUEUE in app:
                    app[QUEUE].note_rate_limited()
                if HUB in app:
                    app[HUB].mark_stats_dirty()
                retry = max(1, math.ceil(missing / policy.rate_per_s))
                raise TooManyRequests(
                    f"This submission costs {cost} submit tokens (its tests x timeoutMs); try again in {retry} "
                    "seconds, or lower timeoutMs.",
                    headers={"Retry-After": str(retry)},
                    retryAfter=retry,
                    cost=cost,
                )
            taken += 1
    except Exception:
        for _ in range(taken + 1):  # what this drew, and the door's own token: nothing ran
            await limiter.refund(client, "submit")
        raise
    return decision


async def submit(
    app: web.Application,
    job: Job,
    *,
    client: Client | None = None,
    refund_refusal: bool = True,
    callback_format: str = "native",
    callback_method: str = "POST",
) -> Job:
    """Queue `job`. With `client`, first charge what it costs beyond the one submit token its door drew (`charge`).
    With a callback URL, the callback is armed in the outbox first (refused with 503 while it is full), then filled
    with the job as `callback_format` shows it when the job ends; a refused submission disarms it."""
    armed = await _arm(app, job, callback_format, callback_method)
    try:
        if client is not None:
            await charge(app, client, job, refund_refusal=refund_refusal)
        return await _queue(app, job, armed)
    except Exception:
        if armed is not None:
            await _disarm(app, armed)
        raise


async def _queue(app: web.Application, job: Job, armed: Armed | None) -> Job:
    unfollow = follow_callback(app, armed) if armed is not None else None
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


async def _arm(app: web.Application, job: Job, body_format: str, method: str) -> Armed | None:
    """Write the job's callback to the outbox, armed, before the job can start; None without a callback."""
    if job.callback_url is None or CALLBACKS not in app:
        return None
    if body_format not in app[CALLBACK_BODIES]:
        raise ValueError(f"no callback body named {body_format!r}")
    sender = app[CALLBACKS]
    armed = Armed(job.id, job.callback_url, method, body_format, time.time())
    try:
        kept = await sender.arm(armed)
    except Exception as exc:
        logger.exception("callback for job %s: the callback outbox cannot be written", job.id)
        raise BackendUnavailable(
            "The callback outbox cannot be written; try again shortly, or submit without callbackUrl.", retryAfter=5
        ) from exc
    if not kept:
        raise QueueFull(
            f"The callback outbox holds CALLBACK_QUEUE_SIZE={sender.capacity} undelivered callbacks; "
            "try again later, or submit without callbackUrl.",
            headers={"Retry-After": "60"},
            retryAfter=60,
        )
    return armed


async def _disarm(app: web.Application, armed: Armed) -> None:
    try:
        await app[CALLBACKS].disarm(armed.key)
    except Exception:  # the outbox's recovery drops it once its job is known to be unknown
        logger.exception("callback for job %s: its refused submission's armed callback stays for now", armed.job_id)


def follow_callback(app: web.Application, armed: Armed) -> Callable[[], None]:
    """Fill the armed callback the moment its job finishes; returns the function that gives up on it. Follow before
    the job is queued: it can start, and finish, before `submit` returns. (If this instance dies first, the outbox's
    recovery fills it, here after a restart or on another instance.)"""

    def on_event(event: Event) -> None:
        if event["type"] not in TERMINAL_TYPES:
            return
        unfollow()
        task = asyncio.ensure_future(_fill(app, armed))
        _deliveries.add(task)
        task.add_done_callback(_deliveries.discard)

    unfollow = job_watch(app).follow(armed.job_id, on_event)
    return unfollow


async def _fill(app: web.Application, armed: Armed) -> None:
    try:
        job = await app[QUEUE].get(armed.job_id)
        if job is not None and CALLBACKS in app:
            await app[CALLBACKS].fill(armed, app[CALLBACK_BODIES][armed.body_format](job))
    except Exception:  # the store (Redis) unreachable as the job ended: the entry stays armed for the recovery
        logger.exception("callback for job %s: not filled as its job ended; the outbox's recovery will", armed.job_id)


def setup_callbacks(app: web.Application, *, redis_pool: Any = None) -> None:
    """One SSRF-safe sender and outbox for every callback of the app (native POSTs and Judge0's PUTs), and its
    recovery; on Redis, the outbox is shared through the instance's pool."""
    job_watch(app)
    register_callback_body(app, "native", native_body)

    async def sender(app: web.Application) -> AsyncIterator[None]:
        async with callback_sender(app[SETTINGS], redis_pool=redis_pool) as sender:
            app[CALLBACKS] = sender
            bodies: dict[str, BodyOf] = app[CALLBACK_BODIES]
            async with recovering(sender, lookup=app[QUEUE].get, bodies=bodies):
                yield

    app.cleanup_ctx.append(sender)


__all__ = [
    "CALLBACK_BODIES",
    "CallbackSender",
    "follow_callback",
    "native_body",
    "register_callback_body",
    "setup_callbacks",
    "submit",
]
