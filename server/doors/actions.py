"""Admin actions on other people's jobs, from the dashboard: run a job again, cancel several at once."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..access.identity import Client
from ..access.permissions import not_found
from ..access.ratelimit import raise_if_denied
from ..access.ratelimit.limiter import LIMITER
from ..errors import BadRequest, ConveyorError, Forbidden
from ..keys import QUEUE, SETTINGS
from ..queue.jobs import Job
from .api import client_of, json_response, read_json
from .submissions import submit


def _require_admin(client: Client, action: str) -> None:
    """Refused before any job is looked up: the answer is the same for every id, so it confirms none."""
    if not client.admin:
        raise Forbidden(f"{action} is for admins (an API key with admin = true).")


def rerun_of(job: Job, *, owner: str, priority: int) -> Job:
    """A new job with `job`'s submission: code (or files), stdin, arguments, limits, tests. Not its callback (an
    admin's run must not post to the submitter's URL) and not interactive (live input was typed once)."""
    return Job(
        language=job.language,
        code=job.code,
        stdin=job.stdin,
        args=list(job.args),
        priority=priority,
        owner=owner,
        timeout_ms=job.timeout_ms,
        files=job.files,
        limits=job.limits,
        compiler_options=list(job.compiler_options),
        expected_output=job.expected_output,
        tests=job.tests,
        output_encoding=job.output_encoding,
    )


async def rerun_job(request: web.Request) -> web.Response:
    """POST /queue/job/{id}/rerun: queue the job's submission again as the admin's own job, through the one submit
    path (a submit token, the queue's bounds), at most at the admin key's priority."""
    app = request.app
    client = client_of(request)
    _require_admin(client, "Run again")
    job_id = request.match_info["job_id"]
    original = await app[QUEUE].get(job_id)
    if original is None:
        raise not_found(job_id)
    raise_if_denied(await app[LIMITER].hit(client, "submit"), "submit")
    job = await submit(
        app, rerun_of(original, owner=client.job_owner, priority=min(original.priority, client.max_priority))
    )
    position = await app[QUEUE].position(job)
    return json_response(
        {"jobId": job.id, "status": job.status.value, "position": position, "rerunOf": original.id},
        status=202,
        headers={"Location": f"/queue/job/{job.id}"},
    )


async def cancel_jobs(request: web.Request) -> web.Response:
    """POST /queue/jobs/cancel {"ids": [...]}: each job as the dashboard's Cancel/Stop button does it (a queued job
    is cancelled, a running one stopped), one answer per id, in the order given."""
    app = request.app
    _require_admin(client_of(request), "Cancelling jobs in bulk")
    body = await read_json(request)
    ids = body.get("ids") if isinstance(body, dict) else None
    limit = app[SETTINGS].max_batch_size
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or not 1 <= len(ids) <= limit:
        raise BadRequest(f"ids must be a list of 1 to {limit} job ids.", field="ids", max=limit)
    unique = list(dict.fromkeys(ids))
    answers = await asyncio.gather(*(_stop_one(app, job_id) for job_id in unique))
    return json_response({"results": answers})


async def _stop_one(app: web.Application, job_id: str) -> dict[str, Any]:
    try:
        job = await app[QUEUE].stop(job_id, "stopped")  # NotFound for an unknown id, Conflict once finished
    except ConveyorError as exc:
        answer = {"id": job_id, **exc.body(), "status": exc.status}
        if "status" in exc.extra:
            answer["jobStatus"] = exc.extra["status"]
        return answer
    reason = job.result.reason if job.result else None
    return {"id": job_id, "status": 200, "jobStatus": job.status.value, "reason": reason}


def setup_actions(app: web.Application) -> None:
    app.router.add_post("/queue/job/{job_id}/rerun", rerun_job)
    app.router.add_post("/queue/jobs/cancel", cancel_jobs)
