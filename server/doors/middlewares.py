"""Middlewares: every error leaves as JSON `{"error", "message"}` with the right status, never a traceback."""

from __future__ import annotations

import logging
from http import HTTPStatus

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..errors import ConveyorError, MisdirectedRequest
from ..settings import Settings

logger = logging.getLogger(__name__)


def error_body(status: int, error: str, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": error, "message": message, **extra}, status=status, dumps=_dumps)


def _dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map ConveyorError and aiohttp's HTTP exceptions to JSON; log and hide anything unexpected. A 408 of any door
    (a body that did not arrive in time) is sent, then its connection closed."""
    response = await _answer(request, handler)
    if response.status == 408 and isinstance(response, web.Response) and not response.prepared:
        return await _sent_then_closed(request, response)
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ConveyorError as exc:
        response = web.json_response(exc.body(), status=exc.status, dumps=_dumps)
        response.headers.update(exc.headers)
        return response
    except web.HTTPException as exc:
        if exc.status < 400 or exc.empty_body:
            raise
        phrase = HTTPStatus(exc.status).phrase if exc.status in HTTPStatus._value2member_map_ else exc.reason
        message = (
            exc.text
            if exc.text and not exc.text.startswith(f"{exc.status}:")
            else _default_message(request, exc.status)
        )
        response = error_body(exc.status, phrase, message)
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except ConnectionError as exc:
        # The client reset the connection mid-request (issue 12, item 16): its mistake, one line, no traceback.
        logger.info("client went away during %s %s: %s", request.method, request.path, exc)
        return error_body(400, "Bad request", "The connection was reset before the request was complete.")
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_body(500, "Internal server error", "Something went wrong on our side; it has been logged.")


async def _sent_then_closed(request: web.Request, response: web.Response) -> web.Response:
    """Send `response`, then close the connection. What is left of a late body must not be read as the next request,
    and aiohttp would read it for up to 10 s before closing (its lingering close, for a client still sending): a
    client that stopped sending would hold the connection that long past its body's deadline."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the response is written: the transport flushes it, then closes
    return response


def host_middleware(settings: Settings) -> Middleware:
    """Answer only requests for a host this server serves (`Settings.served_hosts`): a page whose name an attacker
    rebinds to 127.0.0.1 reaches a local server, but under the attacker's name, which is refused here."""
    served = settings.served_hosts

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        if served is not None:
            host = host_name(request.host)
            if host not in served:
                raise MisdirectedRequest(
                    f"This server does not answer for host {host[:100]!r}; its names are set by ALLOWED_HOSTS.",
                )
        return await handler(request)

    return check_host


def host_name(host: str) -> str:
    """A Host header's name: lower case, without its port, brackets or trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host[1:]
    else:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            name = host
    return name.rstrip(".")


def _default_message(request: web.Request, status: int) -> str:
    if status == 404:
        return f"No route for {request.method} {request.path}."
    if status == 405:
        return f"{request.method} is not allowed on {request.path}."
    if status == 413:
        return "The request body is too large."
    return HTTPStatus(status).description or HTTPStatus(status).phrase
