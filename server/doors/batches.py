"""Batches: several submissions in one request (`POST /runs`) and several jobs read at once (`GET /runs`)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..access.identity import check_priority
from ..access.permissions import may_read, not_found
from ..access.ratelimit import raise_if_denied
from ..access.ratelimit.limiter import LIMITER
from ..errors import BadRequest, ConveyorError, PayloadTooLarge
from ..keys import QUEUE, RUNNER, SETTINGS
from ..queue.records import record_bytes
from .api import client_of, json_response, read_json
from .payloads import parse_run
from .submissions import submit


async def submit_runs(request: web.Request) -> web.Response:
    """Queue each submission on its own: an item is accepted with its id or refused with its own error, and each
    draws one token from the caller's submit bucket, as a `POST /run` would."""
    app = request.app
    settings = app[SETTINGS]
    # A batch may be as large as its items together; every other route keeps the app's smaller body limit.
    batch = request.clone(client_max_size=settings.max_batch_size * settings.max_body_bytes)
    body = await read_json(batch)
    items = body.get("submissions") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise BadRequest("The body must be an object with a list of submissions.", field="submissions")
    if not 1 <= len(items) <= settings.max_batch_size:
        raise BadRequest(
            f"submissions must hold from 1 to {settings.max_batch_size} items.",
            field="submissions",
            max=settings.max_batch_size,
        )
    client = client_of(request)
    answers: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            run = parse_run(item, settings, app[RUNNER])
            check_priority(client, run.priority)
            decision = await app[LIMITER].hit(client, "submit")
            raise_if_denied(decision, "submit")
            job = await submit(app, run.to_job(client.job_owner), client=client)
        except ConveyorError as exc:
            answers.append({"index": index, "status": exc.status, **exc.body()})
        else:
            answers.append({"index": index, "status": 202, "jobId": job.id, "jobStatus": job.status.value})
    return json_response({"runs": answers})


async def get_runs(request: web.Request) -> web.Response:
    """The jobs named by `?ids=a,b,c` in that order, each once; one the caller may not read is answered as unknown.

    Bounded by bytes as well as by ids: a job can be megabytes (its output, its tests'), so past
    MAX_BATCH_ANSWER_BYTES a job is named with its own URL instead of being copied into the answer."""
    settings = request.app[SETTINGS]
    ids = list(dict.fromkeys(part for part in request.query.get("ids", "").split(",") if part))
    if not 1 <= len(ids) <= settings.max_batch_size:
        raise BadRequest(f"ids must name from 1 to {settings.max_batch_size} jobs.", field="ids")
    queue = request.app[QUEUE]
    client = client_of(request)
    parts: list[bytes] = []
    size = 0
    for job_id in ids:
        job = await queue.get(job_id)
        if job is None or not may_read(client, job):
            part = orjson.dumps({"id": job_id, **not_found(job_id).body()})
        else:
            # Its stored size is about its JSON's at least (escaping only adds): one that cannot fit is not encoded.
            fits = not parts or size + record_bytes(job) <= settings.max_batch_answer_bytes
            job.position = await queue.position(job) if fits else None
            part = orjson.dumps(job.to_dict()) if fits else b""
            if not fits or (parts and size + len(part) > settings.max_batch_answer_bytes):
                too_large = PayloadTooLarge(
                    f"Job {job_id} does not fit in this answer (at most {settings.max_batch_answer_bytes} bytes); "
                    f"read it alone from /queue/job/{job_id}.",
                    maxBytes=settings.max_batch_answer_bytes,
                )
                part = orjson.dumps({"id": job_id, **too_large.body()})
        parts.append(part)
        size += len(part) + 1
    body = b'{"jobs":[' + b",".join(parts) + b"]}"
    return web.Response(body=body, content_type="application/json")


def setup_batches(app: web.Application) -> None:
    app.router.add_post("/runs", submit_runs)
    app.router.add_get("/runs", get_runs)
