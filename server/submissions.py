"""Submissions: queueing a job from any front door (REST, batches, the WebSocket, the compat APIs), with its
callback followed from before it can start."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiohttp import web

from .callbacks import CallbackSender, Delivery, callback_sender
from .errors import BadRequest, QueueFull, TooManyRequests
from .events import Event
from .identity import Client
from .jobs import TERMINAL_TYPES, Job
from .keys import CALLBACKS, HUB, LIMITER, QUEUE, SETTINGS, SUBMITTERS
from .ratelimit import Decision
from .settings import Settings
from .watch import job_watch

logger = logging.getLogger(__name__)
_deliveries: set[asyncio.Task[None]] = set()  # strong references until each has fetched its job
# What a callback carries: the finished job as its owner reads it (GET /queue/job/{id}).
BodyOf = Callable[[Job], bytes]


def native_body(job: Job) -> bytes:
    return orjson.dumps(job.to_dict())


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
    callback_body: BodyOf = native_body,
    callback_method: str = "POST",
) -> Job:
    """Queue `job`. With `client`, first charge what it costs beyond the one submit token its door drew (`charge`).
    With a callback URL, the finished job goes to the callback outbox (refused with 503 while it is full)."""
    if job.callback_url is not None and CALLBACKS in app and app[CALLBACKS].full:
        raise QueueFull(
            f"The callback outbox holds CALLBACK_QUEUE_SIZE={app[CALLBACKS].capacity} undelivered callbacks; "
            "try again later, or submit without callbackUrl.",
            headers={"Retry-After": "60"},
            retryAfter=60,
        )
    if client is not None:
        await charge(app, client, job, refund_refusal=refund_refusal)
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
    try:
        job = await app[QUEUE].get(job_id)
        if job is not None and CALLBACKS in app:
            await app[CALLBACKS].enqueue(Delivery(job_id=job_id, url=url, body=body_of(job), method=method))
    except Exception:  # the store (Redis) unreachable as the job ended: nothing else will deliver it
        logger.exception("callback for job %s lost: it could not be written to the callback outbox", job_id)


def setup_callbacks(app: web.Application, *, redis_pool: Any = None) -> None:
    """One SSRF-safe sender and outbox for every callback of the app (native POSTs and Judge0's PUTs); on Redis,
    the outbox is shared through the instance's pool."""
    job_watch(app)

    async def sender(app: web.Application) -> AsyncIterator[None]:
        async with callback_sender(app[SETTINGS], redis_pool=redis_pool) as sender:
            app[CALLBACKS] = sender
            yield

    app.cleanup_ctx.append(sender)


__all__ = ["CallbackSender", "follow_callback", "native_body", "setup_callbacks", "submit"]
