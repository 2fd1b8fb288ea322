"""The application factory: wires settings, runner, queue, middlewares and routes."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from .access.apikeys import ApiKeys, client_for_key
from .access.identity import Client
from .access.lockout import AuthLockout
from .access.quota import setup_quota
from .access.ratelimit import Bucket, RateLimiter, raise_if_denied, ratelimit_middleware
from .access.ratelimit.limiter import LIMITER
from .access.sessions import setup_sessions
from .compat.judge0.routes import setup_judge0
from .compat.piston.routes import setup_piston
from .doors.accesslog import access_log_middleware
from .doors.actions import setup_actions
from .doors.api import setup_routes
from .doors.batches import setup_batches
from .doors.history import setup_history
from .doors.listing import setup_listing
from .doors.metrics import setup_metrics
from .doors.middlewares import error_middleware, host_middleware
from .doors.pages import setup_pages
from .doors.submissions import setup_callbacks, submit
from .hub.hub import HUB, Hub, open_socket
from .keys import EVENTS, QUEUE, RUNNER, SETTINGS, STARTED_AT, SUBMITTERS
from .queue import QueueBackend, create_queue
from .queue.events import EventEmitter
from .queue.joblog import Submitters, log_finished_jobs
from .queue.jobs import Runner
from .queue.redispool import closing_pool, instance_pool
from .settings import Settings

logger = logging.getLogger(__name__)


def _bucket_check(limiter: RateLimiter, bucket: Bucket) -> Callable[[Client], Awaitable[None]]:
    """One token from `bucket` for a WebSocket message; TooManyRequests (counted by the limiter) when there is none."""

    async def check(client: Client) -> None:
        decision = await limiter.hit(client, bucket)
        if not decision.allowed:
            raise_if_denied(decision, bucket)

    return check


def create_app(
    settings: Settings | None = None,
    *,
    runner: Runner | None = None,
    queue: QueueBackend | None = None,
) -> web.Application:
    """Build the app. `runner` defaults to the bubblewrap sandbox, created (and checked) at start-up."""
    settings = settings or Settings()
    max_body = settings.max_body_bytes
    keys = ApiKeys.load(settings.api_keys_file)
    # One pool of Redis connections for the instance's commands (job store, limiter, history): REDIS_POOL_SIZE is
    # what an instance holds, where each kept its own pool (131 connections at the default of 64).
    redis_pool = instance_pool(settings)
    limiter = RateLimiter(settings, redis_pool=redis_pool)
    lockout = AuthLockout(limiter, settings)

    def count_denial() -> None:
        if QUEUE in app:
            app[QUEUE].note_rate_limited()
        if HUB in app:
            app[HUB].mark_stats_dirty()

    # Every denied hit is counted by the limiter itself, whichever door drew it (REST, batches, WebSocket, compat);
    # the lockout, the socket caps and budgets count theirs through count_denial.
    limiter.on_denied = count_denial
    check_submit = _bucket_check(limiter, "submit")
    check_read = _bucket_check(limiter, "read")

    # Order matters: the access log outermost sees the final status; errors become JSON outside the limiter, which
    # raises 401/429 and stamps its headers.
    middlewares = [
        access_log_middleware,
        error_middleware,
        host_middleware(settings),
        ratelimit_middleware(limiter, keys, settings, on_denied=count_denial, lockout=lockout),
    ]
    app = web.Application(middlewares=middlewares, client_max_size=max_body)
    app[SETTINGS] = settings
    app[LIMITER] = limiter
    app[STARTED_AT] = time.monotonic()
    app[EVENTS] = queue.events if queue is not None else EventEmitter()
    app[SUBMITTERS] = Submitters()
    log_finished_jobs(app[EVENTS], submitters=app[SUBMITTERS])

    async def runner_ctx(app: web.Application) -> AsyncIterator[None]:
        if runner is not None:
            app[RUNNER] = runner
            yield
            return
        from .sandbox.runner import Sandbox

        sandbox = await Sandbox.create(settings)
        app[RUNNER] = sandbox
        try:
            yield
        finally:
            await sandbox.close()

    async def queue_ctx(app: web.Application) -> AsyncIterator[None]:
        q = (
            queue
            if queue is not None
            else create_queue(settings, executor=app[RUNNER], events=app[EVENTS], redis_pool=redis_pool)
        )
        app[QUEUE] = q
        await q.start()
        try:
            yield
        finally:
            await q.close(settings.shutdown_grace_ms / 1000.0)

    async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
        hub = Hub(
            settings,
            app[QUEUE],
            runner=app[RUNNER],
            check_submit=check_submit,
            check_read=check_read,
            authenticate_key=lambda key, ip: client_for_key(key, ip, keys),
            lockout=lockout,
            submit=lambda job, client: submit(app, job, client=client),
        )
        app[HUB] = hub
        await hub.start()
        try:
            yield
        finally:
            await hub.close()

    async def limiter_ctx(app: web.Application) -> AsyncIterator[None]:
        await limiter.start()
        try:
            yield
        finally:
            await limiter.close()

    app.cleanup_ctx.append(closing_pool(redis_pool))  # first in, last out: every user has closed by then
    app.cleanup_ctx.append(limiter_ctx)
    app.cleanup_ctx.append(runner_ctx)
    app.cleanup_ctx.append(queue_ctx)
    app.cleanup_ctx.append(hub_ctx)

    async def close_sockets(app: web.Application) -> None:
        # Before aiohttp waits for open handlers (WebSockets never finish by themselves): tell them with 1001.
        if HUB in app:
            await app[HUB].close()

    app.on_shutdown.append(close_sockets)
    setup_routes(app)
    setup_pages(app)
    setup_metrics(app)
    setup_history(app, redis_pool=redis_pool)
    setup_listing(app)
    setup_actions(app)
    setup_quota(app, limiter)
    setup_sessions(app, keys)
    app.router.add_get("/ws", open_socket)
    setup_batches(app)
    setup_callbacks(app, redis_pool=redis_pool)
    setup_piston(app)
    setup_judge0(app)
    return app
