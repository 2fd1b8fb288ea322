"""REST handlers: thin wrappers that validate, call the queue and shape JSON."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from ..access.identity import CLIENT, Client, anonymous, check_priority, peer_ip
from ..access.permissions import drivable_job, readable_job
from ..access.ratelimit import decision_headers
from ..errors import BadRequest, RequestTimeout, UnsupportedMediaType
from ..keys import QUEUE, RUNNER, SETTINGS, STARTED_AT
from .payloads import parse_run
from .submissions import charge, submit

OPENAPI_PATH = __file__.rsplit("/", 1)[0] + "/openapi.json"


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Encode with orjson once; aiohttp's json_response would go through the stdlib encoder."""
    return web.Response(body=orjson.dumps(data), status=status, headers=headers, content_type="application/json")


def client_of(request: web.Request) -> Client:
    """The caller, as identified by the rate-limit middleware (anonymous by peer address without it)."""
    return request.get(CLIENT) or anonymous(peer_ip(request))


async def read_json(request: web.Request) -> Any:
    if request.content_type not in ("application/json", "application/octet-stream", ""):
        raise UnsupportedMediaType(f"Send JSON with Content-Type: application/json, not {request.content_type}.")
    if request.content.is_eof():  # all of it came with the headers (a run request, as a rule): nothing to wait for
        body = await request.read()
    else:
        try:
            # aiohttp waits for a body as long as the client likes; a client trickling (or never sending) the bytes
            # it announced would hold the connection and its handler forever.
            async with asyncio.timeout(request.app[SETTINGS].http_body_timeout_ms / 1000.0):
                body = await request.read()
        except TimeoutError:
            raise RequestTimeout("The request body did not arrive in time.") from None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.") from None


async def submit_run(request: web.Request) -> web.Response:
    settings, queue = request.app[SETTINGS], request.app[QUEUE]
    wait = request.query.get("wait", "true").lower()
    if wait not in ("true", "false", "1", "0"):
        raise BadRequest("wait must be true or false.", field="wait")
    run = parse_run(await read_json(request), settings, request.app[RUNNER])
    client = client_of(request)
    check_priority(client, run.priority)
    job = run.to_job(client.job_owner)
    # A refused submission's token is given back by the rate-limit middleware (a 400 costs a read instead). A job
    # that cost more than one token says what is left after all of them.
    drawn = await charge(request.app, client, job, refund_refusal=False)
    headers = decision_headers(drawn, "submit") if drawn is not None else {}
    job = await submit(request.app, job)
    if wait in ("false", "0"):
        position = await queue.position(job)
        return json_response(
            {"jobId": job.id, "status": job.status.value, "position": position},
            status=202,
            headers={"Location": f"/queue/job/{job.id}", **headers},
        )
    job = await queue.wait(job.id)
    return json_response(job.to_dict(), headers=headers)


async def get_queue_status(request: web.Request) -> web.Response:
    return json_response(await request.app[QUEUE].stats())


async def get_job(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    client = client_of(request)
    job = await readable_job(queue, client, request.match_info["job_id"])
    job.position = await queue.position(job)
    body = job.to_dict()
    if client.admin:
        body["submittedBy"] = submitter_of(job.owner)
    return json_response(body)


def submitter_of(owner: str) -> str:
    """Who submitted a job, for admins: the key's user, or an anonymous owner told apart by the first 8 hex digits
    of its token's digest (never the token), or `anonymous` for a client that sent no token."""
    if owner.startswith("key:"):
        return owner.removeprefix("key:")
    digest = owner.removeprefix("anon:")
    return f"anonymous ({digest[:8]})" if digest else "anonymous"


async def cancel_job(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    job = await readable_job(queue, client_of(request), request.match_info["job_id"])
    job = await queue.cancel(job.id)
    return json_response({"id": job.id, "status": job.status.value})


async def stop_job(request: web.Request) -> web.Response:
    """Stop a queued or running job (its owner, by key or owner token, or an admin); answers with its final state."""
    queue = request.app[QUEUE]
    job = await drivable_job(queue, client_of(request), request.match_info["job_id"])
    job = await queue.stop(job.id, "stopped")
    return json_response(
        {"id": job.id, "status": job.status.value, "reason": job.result.reason if job.result else None}
    )


async def get_health(request: web.Request) -> web.Response:
    app = request.app
    return json_response(
        {
            "status": "ok",
            "uptime": round(time.monotonic() - app[STARTED_AT], 3),
            "queue": await app[QUEUE].stats(),
            "sandbox": app[RUNNER].describe(),
            "pool": app[RUNNER].pool_status(),
        }
    )


async def get_runtimes(request: web.Request) -> web.Response:
    return json_response(request.app[RUNNER].runtimes())


async def get_cache_status(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(request.app[RUNNER].cache_status))


async def get_openapi(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(OPENAPI_PATH, headers={"Content-Type": "application/json"})


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/run", submit_run)
    app.router.add_get("/queue/status", get_queue_status)
    app.router.add_get("/queue/job/{job_id}", get_job)
    app.router.add_delete("/queue/job/{job_id}", cancel_job)
    app.router.add_post("/queue/job/{job_id}/stop", stop_job)
    app.router.add_get("/health", get_health)
    app.router.add_get("/runtimes", get_runtimes)
    app.router.add_get("/cache/status", get_cache_status)
    app.router.add_get("/openapi.json", get_openapi)
