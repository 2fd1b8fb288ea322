"""The job list: the dashboard's paged, sorted, filtered view of the jobs the store holds, and the instances view.

Both are for the queue topic's audience (anyone): metadata only, each job named by its display handle; admins also
get ids (see access.py and docs/security.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..errors import BadRequest
from ..hub.hub import HUB
from ..keys import QUEUE, SETTINGS
from ..queue.jobs import Job, JobStatus
from .api import client_of, json_response

# Finished jobs a listing covers, newest first, besides every queued and running one (those are bounded by the
# queue's size and slots). Pages, counts and sorting are over this window: it bounds what one request reads
# (metadata only: ~300 bytes a job on Redis), whatever the retention. Measured once, 1,000 finished jobs of 64 KiB
# output each on a local Redis: 99 ms to read the window's metadata, 891 ms to read the same jobs whole (HGETALL).
LIST_WINDOW = 1000
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 25
STATUSES = tuple(s.value for s in JobStatus)
# Sort keys by their name in the API; a job without the value (a queued job's run time) sorts last either way.
SORTS: dict[str, Callable[[Job], Any]] = {
    "createdAt": lambda job: job.created_at,
    "startedAt": lambda job: job.started_at,
    "finishedAt": lambda job: job.finished_at,
    "waitTimeMs": lambda job: job.wait_time_ms,
    "executionTimeMs": lambda job: job.execution_time_ms,
    "priority": lambda job: job.priority,
    "language": lambda job: job.language,
    "status": lambda job: STATUSES.index(job.status.value),
}


def _int(query: Any, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}.", field=name, min=low, max=high)
    return value


def _choice(query: Any, name: str, default: str, valid: tuple[str, ...]) -> str:
    value: str = query.get(name, default)
    if value not in valid:
        raise BadRequest(f"{name} must be one of {', '.join(valid)}.", field=name, valid=list(valid))
    return value


def _sorted(jobs: list[Job], sort: str, descending: bool) -> list[Job]:
    """Stable sorts: newest first within equal keys, missing values last in both orders."""
    key = SORTS[sort]
    jobs = sorted(jobs, key=lambda job: (job.created_at, job.id), reverse=True)
    present = [job for job in jobs if key(job) is not None]
    missing = [job for job in jobs if key(job) is None]
    return sorted(present, key=key, reverse=descending) + missing


@dataclass(frozen=True, slots=True)
class _ListQuery:
    """The job list's query string, checked."""

    status: str
    sort: str
    descending: bool
    page: int
    size: int
    language: str
    needle: str


def _list_query(query: Mapping[str, str]) -> _ListQuery:
    status = _choice(query, "status", "all", (*STATUSES, "all"))
    sort = _choice(query, "sort", "createdAt", tuple(SORTS))
    descending = _choice(query, "order", "desc", ("asc", "desc")) == "desc"
    page = _int(query, "page", 1, 1, 1_000_000)
    size = _int(query, "pageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    language = query.get("language", "")
    needle = query.get("q", "").strip().lower()
    if len(needle) > 64:
        raise BadRequest("q must be at most 64 characters.", field="q")
    return _ListQuery(status, sort, descending, page, size, language, needle)


async def list_jobs(request: web.Request) -> web.Response:
    """GET /queue/jobs?status=&language=&q=&sort=&order=&page=&pageSize=: one page of the job list, the count of
    each status (over the language and search filters) and the languages present, for the dashboard's tabs."""
    asked = _list_query(request.query)
    admin = client_of(request).admin
    handles = request.app[HUB].handles
    window = await request.app[QUEUE].listing(LIST_WINDOW)
    named = [(job, handles(job.id)) for job in window]
    languages = sorted({job.language for job in window})
    chosen = [(job, handle) for job, handle in named if _chosen(job, handle, asked, admin)]
    counts = Counter(job.status.value for job, _ in chosen)
    matching = [pair for pair in chosen if asked.status == "all" or pair[0].status.value == asked.status]
    return json_response(
        {
            "jobs": _page_rows(matching, asked, admin),
            "page": asked.page,
            "pageSize": asked.size,
            "total": len(matching),
            "counts": {**{name: counts.get(name, 0) for name in STATUSES}, "all": len(chosen)},
            "languages": languages,
            "window": LIST_WINDOW,
        }
    )


def _chosen(job: Job, handle: str, asked: _ListQuery, admin: bool) -> bool:
    """Does the job pass the language and search filters? A viewer searches handles only: matching on ids would
    let anyone probe for an id's first digits."""
    if asked.language and job.language != asked.language:
        return False
    return not asked.needle or handle.startswith(asked.needle) or (admin and job.id.startswith(asked.needle))


def _page_rows(matching: list[tuple[Job, str]], asked: _ListQuery, admin: bool) -> list[dict[str, Any]]:
    """The asked page of the matching jobs, sorted, as summaries with handles (and ids, for an admin)."""
    handle_of = dict((job.id, handle) for job, handle in matching)
    ordered = _sorted([job for job, _ in matching], asked.sort, asked.descending)
    rows = []
    for job in ordered[(asked.page - 1) * asked.size : asked.page * asked.size]:
        summary = {**job.summary(), "handle": handle_of[job.id]}
        if not admin:
            del summary["id"]
        rows.append(summary)
    return rows


async def list_instances(request: web.Request) -> web.Response:
    """GET /queue/instances: the instances working the queue, their slots, running jobs and last heartbeat."""
    admin = client_of(request).admin
    handles = request.app[HUB].handles
    instances = []
    for record in await request.app[QUEUE].instances():
        running = [{"handle": handles(job_id), **({"id": job_id} if admin else {})} for job_id in record["running"]]
        instances.append({**record, "running": running})
    backend = "redis" if request.app[SETTINGS].redis_url else "memory"
    return json_response({"backend": backend, "instances": instances})


def setup_listing(app: web.Application) -> None:
    app.router.add_get("/queue/jobs", list_jobs)
    app.router.add_get("/queue/instances", list_instances)
