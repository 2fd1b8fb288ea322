"""The application factory: wires settings, runner, queue, middlewares and routes."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from .access.apikeys import ApiKeys, client_for_key
from .access.identity import Client
from .access.lockout import AuthLockout
from .access.middleware import ratelimit_middleware
from .access.quota import setup_quota
from .access.ratelimit import Bucket, RateLimiter, raise_if_denied
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
from .doors.websocket import SocketDoor
from .hub.hub import HUB, Hub
from .keys import EVENTS, QUEUE, RUNNER, SETTINGS, STARTED_AT, SUBMITTERS
from .queue import QueueBackend, create_queue
from .queue.events import EventEmitter
from .queue.joblog import Submitters, log_finished_jobs
from .queue.jobs import Runner
from .queue.redispool import closing_pool, instance_pool
from .settings import Settings

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    runner: Runner | None = None,
    queue: QueueBackend | None = None,
) -> web.Application:
    """Build the app. `runner` defaults to the bubblewrap sandbox, created (and checked) at start-up."""
    services = Services(settings or Settings(), runner=runner, queue=queue)
    app = services.app
    app.middlewares.extend(services.middlewares())
    services.store()
    # First in, last out: the Redis pool closes after every user of it.
    app.cleanup_ctx.extend([closing_pool(services.redis_pool), services.limiter_ctx, services.runner_ctx])
    app.cleanup_ctx.extend([services.queue_ctx, services.hub_ctx])
    app.on_shutdown.append(_close_sockets)
    services.add_routes()
    return app


class Services:
    """What the app is assembled from, made once: the API keys, the instance's Redis pool, the limiter and the
    lockout; the runner and the queue when injected (tests), else made at start-up."""

    def __init__(self, settings: Settings, *, runner: Runner | None, queue: QueueBackend | None) -> None:
        self.settings = settings
        self.runner = runner
        self.queue = queue
        self.keys = ApiKeys.load(settings.api_keys_file)
        # One pool of Redis connections for the instance's commands (job store, limiter, history): REDIS_POOL_SIZE
        # is what an instance holds, where each kept its own pool (131 connections at the default of 64).
        self.redis_pool = instance_pool(settings)
        self.limiter = RateLimiter(settings, redis_pool=self.redis_pool)
        self.lockout = AuthLockout(self.limiter, settings)
        self.app = web.Application(client_max_size=settings.max_body_bytes)
        # Every denied hit is counted by the limiter itself, whichever door drew it (REST, batches, WebSocket,
        # compat); the lockout, the socket caps and budgets count theirs through count_denial.
        self.limiter.on_denied = self.count_denial

    def count_denial(self) -> None:
        app = self.app
        if QUEUE in app:
            app[QUEUE].note_rate_limited()
        if HUB in app:
            app[HUB].mark_stats_dirty()

    def middlewares(self) -> list[Middleware]:
        """Order matters: the access log outermost sees the final status; errors become JSON outside the limiter,
        which raises 401/429 and stamps its headers."""
        settings = self.settings
        return [
            access_log_middleware,
            error_middleware,
            host_middleware(settings),
            ratelimit_middleware(self.limiter, self.keys, settings, on_denied=self.count_denial, lockout=self.lockout),
        ]

    def store(self) -> None:
        """What the app holds from the start."""
        app = self.app
        app[SETTINGS] = self.settings
        app[LIMITER] = self.limiter
        app[STARTED_AT] = time.monotonic()
        app[EVENTS] = self.queue.events if self.queue is not None else EventEmitter()
        app[SUBMITTERS] = Submitters()
        log_finished_jobs(app[EVENTS], submitters=app[SUBMITTERS])

    def add_routes(self) -> None:
        app, keys = self.app, self.keys
        setup_routes(app)
        setup_pages(app)
        setup_metrics(app)
        setup_history(app, redis_pool=self.redis_pool)
        setup_listing(app)
        setup_actions(app)
        setup_quota(app, self.limiter)
        setup_sessions(app, keys)
        app.router.add_get("/ws", self.socket_door().open_socket)
        setup_batches(app)
        setup_callbacks(app, redis_pool=self.redis_pool)
        setup_piston(app)
        setup_judge0(app)

    def socket_door(self) -> SocketDoor:
        app, keys = self.app, self.keys
        return SocketDoor(
            self.settings,
            check_submit=_bucket_check(self.limiter, "submit"),
            check_read=_bucket_check(self.limiter, "read"),
            authenticate_key=lambda key, ip: client_for_key(key, ip, keys),
            lockout=self.lockout,
            submit=lambda job, client: submit(app, job, client=client),
        )

    # -- long-lived resources, in app.cleanup_ctx ------------------------------------------------------------

    async def limiter_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.limiter.start()
        try:
            yield
        finally:
            await self.limiter.close()

    async def runner_ctx(self, app: web.Application) -> AsyncIterator[None]:
        if self.runner is not None:
            app[RUNNER] = self.runner
            yield
            return
        from .judging.executor import Judge

        sandbox = await Judge.create(self.settings, one_loop=True)  # the app's loop runs its jobs, and closes it
        app[RUNNER] = sandbox
        try:
            yield
        finally:
            await sandbox.close()

    async def queue_ctx(self, app: web.Application) -> AsyncIterator[None]:
        settings = self.settings
        q = (
            self.queue
            if self.queue is not None
            else create_queue(settings, executor=app[RUNNER], events=app[EVENTS], redis_pool=self.redis_pool)
        )
        app[QUEUE] = q
        await q.start()
        try:
            yield
        finally:
            await q.close(settings.shutdown_grace_ms / 1000.0)

    async def hub_ctx(self, app: web.Application) -> AsyncIterator[None]:
        hub = Hub(self.settings, app[QUEUE])
        app[HUB] = hub
        await hub.start()
        try:
            yield
        finally:
            await hub.close()


def _bucket_check(limiter: RateLimiter, bucket: Bucket) -> Callable[[Client], Awaitable[None]]:
    """One token from `bucket` for a WebSocket message; TooManyRequests (counted by the limiter) when there is none."""

    async def check(client: Client) -> None:
        decision = await limiter.hit(client, bucket)
        if not decision.allowed:
            raise_if_denied(decision, bucket)

    return check


async def _close_sockets(app: web.Application) -> None:
    # Before aiohttp waits for open handlers (WebSockets never finish by themselves): tell them with 1001.
    if HUB in app:
        await app[HUB].close()
