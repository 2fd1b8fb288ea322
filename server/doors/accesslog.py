"""Access and audit logs: one line per HTTP request, one per admin action and per authentication failure."""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import quote

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from ..access.identity import CLIENT, peer_ip
from ..queue.joblog import DOOR

logger = logging.getLogger(__name__)
audit_logger = logging.getLogger(f"{__name__}.audit")

# Query parameters whose values never reach a log (Judge0 clients may put tokens there, anyone a key).
SECRET_PARAMS = frozenset({"key", "api_key", "apikey", "token", "access_token", "ownertoken", "secret", "password"})
# Admin actions, by route: (method, resource) -> audit name.
ADMIN_ROUTES = {
    ("POST", "/queue/job/{job_id}/rerun"): "rerun",
    ("POST", "/queue/jobs/cancel"): "bulk-cancel",
}


def door_of(path: str) -> str:
    """Which API a path belongs to: rest, websocket, piston, judge0, or pages for everything else."""
    if path == "/ws":
        return "websocket"
    if path.startswith("/api/v2/"):
        return "piston"
    if path.startswith("/judge0/"):
        return "judge0"
    if path in ("/", "/dashboard") or path.startswith(("/docs", "/static/")) or path == "/favicon.ico":
        return "pages"
    return "rest"


def loggable_target(request: web.BaseRequest) -> str:
    """The path, and the query with the values of secret-looking parameters replaced by `***`."""
    if not request.query_string:
        return request.path
    pairs = [
        f"{quote(name, safe='')}={'***' if name.lower() in SECRET_PARAMS else quote(value, safe='')}"
        for name, value in request.query.items()
    ]
    return f"{request.path}?{'&'.join(pairs)}"


def _user(request: web.Request) -> str:
    client = request.get(CLIENT)
    return client.user if client is not None and client.user else "-"


def audit(event: str, *, user: str, ip: str, **fields: object) -> None:
    """One audit line: `audit <event> user=<u> client=<ip> k=v ...`."""
    extra = "".join(f" {name}={value}" for name, value in fields.items())
    audit_logger.info("audit %s user=%s client=%s%s", event, user, ip, extra)


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: times the request, names its door for the job log, and logs it whatever became of it."""
    started = time.perf_counter()
    DOOR.set(door_of(request.path))
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away before the answer (nginx's number for it)
        raise
    finally:
        elapsed_ms = (time.perf_counter() - started) * 1000
        ip, user = peer_ip(request), _user(request)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "%s %s %d %.1fms client=%s user=%s", request.method, loggable_target(request), status, elapsed_ms,
                ip, user,
            )  # fmt: skip
        if status == 401:
            audit("auth-failure", user=user, ip=ip, door=door_of(request.path), path=request.path)
        await _audit_admin(request, status, user, ip)


async def _audit_admin(request: web.Request, status: int, user: str, ip: str) -> None:
    route = request.match_info.route.resource
    name = ADMIN_ROUTES.get((request.method, route.canonical)) if route is not None else None
    if name is None:
        return
    fields: dict[str, object] = {"status": status}
    if "job_id" in request.match_info:
        fields["job"] = request.match_info["job_id"]
    elif request.body_exists and request._read_bytes is not None:  # the handler read it; never read it here
        try:
            ids = orjson.loads(request._read_bytes).get("ids")
            fields["jobs"] = len(ids) if isinstance(ids, list) else "-"
        except (orjson.JSONDecodeError, AttributeError):
            fields["jobs"] = "-"
    audit(name, user=user, ip=ip, **fields)
