"""Judge0 CE 1.13.1 (`/judge0`): submissions become native runs on the one queue; jobs read back as submissions."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from ...access import permissions as access
from ...access.identity import Client, check_priority
from ...access.ratelimit import raise_if_denied
from ...access.ratelimit.limiter import LIMITER
from ...callbacks import check_callback_url
from ...doors.api import client_of, json_response, read_json
from ...doors.listing import LIST_WINDOW, MAX_PAGE_SIZE
from ...doors.payloads import parse_run
from ...doors.submissions import register_callback_body, submit
from ...errors import BadRequest, ConveyorError, QueueFull, UnsupportedMediaType
from ...keys import QUEUE, RUNNER, SETTINGS
from ...queue.jobs import Job
from ...sandbox.languages import load_languages
from .attributes import (
    CONVERSION_ERROR,
    DEFAULT_FIELDS,
    FIELDS,
    Extras,
    Unconvertible,
    Unprocessable,
    job_id_of,
    token_of,
)
from .catalog import Catalog, Judge0Config
from .info import Judge0Info
from .serializer import serialize
from .status import outcome
from .submission import native_error_field, parse_submission

logger = logging.getLogger(__name__)

_LEADING_INT = re.compile(r"\s*([+-]?)0*(\d+)", re.ASCII)
# Beyond any page there can be: what a longer page number reads as.
MAX_PAGE_NUMBER = 10**9


def judge0_error(message: str, status: int, **extra: Any) -> web.Response:
    """Judge0's own errors are `{"error": ...}`."""
    return json_response({"error": message, **extra}, status=status)


async def read_body(request: web.Request) -> Any:
    """The JSON body, as the native door reads it (HTTP_BODY_TIMEOUT_MS, then 408), labelled application/json: a
    cross-site form (text/plain) or a typeless Blob needs no CORS preflight, so neither may submit a job."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("requests must be of type application/json")
    return await read_json(request)


def not_found() -> web.Response:
    """What Rails answers for a record that is not there."""
    return json_response({"status": 404, "error": "Not Found"}, status=404)


def read_options(request: web.Request) -> tuple[bool, tuple[str, ...]] | web.Response:
    """`?base64_encoded` and `?fields` as every read answers them, or Judge0's 400 for an unknown field."""
    try:
        fields = requested_fields(request.query.get("fields"))
    except BadRequest as exc:
        return judge0_error(exc.message, 400)
    return request.query.get("base64_encoded") == "true", fields


def requested_fields(raw: str | None) -> tuple[str, ...]:
    """`?fields=a,b` (`*` for all); BadRequest naming the unknown ones, as Fields::Submission does."""
    names = [name for name in (raw or "").split(",") if name]
    invalid = [name for name in names if name != "*" and name not in FIELDS]
    if invalid:
        raise BadRequest(f"invalid fields: [{', '.join(invalid)}]")
    if "*" in names:
        return FIELDS
    # In the serializer's order, whatever the order asked for.
    return tuple(name for name in FIELDS if name in (names or DEFAULT_FIELDS))


def readable_job(client: Client, job: Job | None) -> Job | None:
    """The submission if this caller may read it (access/permissions.py's rules: its token is the capability, as a job
    id is for GET /queue/job/{id}; a key-owned one is its user's), else None, answered as unknown."""
    return job if job is not None and access.may_read(client, job) else None


def drivable_job(client: Client, job: Job) -> bool:
    """May this caller delete the submission: as for cancelling a native job (access/permissions.py): a key-owned one
    its user or an admin, an anonymous one whoever holds its token (the capability)."""
    return access.may_read(client, job)


class Judge0Api:
    """The submissions half of `/judge0`; the information routes are in info.py."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.settings = app[SETTINGS]
        self.config = Judge0Config.of(self.settings)
        self.languages = load_languages()

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.app[RUNNER], self.languages, self.settings)

    # -- rendering -------------------------------------------------------------------------------------------

    def serialize(self, job: Job, fields: Iterable[str], base64_encoded: bool) -> dict[str, Any]:
        """The submission's requested attributes; raises Unconvertible for text that is not UTF-8 in text mode."""
        return serialize(job, fields, base64_encoded, catalog=self.catalog, config=self.config)

    # -- submissions -----------------------------------------------------------------------------------------

    async def _parse(self, params: Any, base64_encoded: bool, client: Client) -> tuple[Job, Extras]:
        native, extras = parse_submission(params, base64_encoded, self.catalog, self.config, self.settings)
        try:
            if extras.callback_url is not None:
                check_callback_url(extras.callback_url)
            run = parse_run(native, self.settings, self.app[RUNNER])
        except ConveyorError as exc:
            name = native_error_field(exc.extra.get("field"))
            if name == "source_code" and exc.extra.get("file") not in (None, native.get("main")):
                name = "additional_files"  # a file from the zip
            raise Unprocessable({name: [exc.message]}) from None
        check_priority(client, run.priority)
        return run.to_job(client.job_owner), extras

    async def _submit(self, job: Job, extras: Extras) -> None:
        """Queue the job; Judge0's callback is a PUT of the finished submission, base64 encoded, with the default
        fields (isolate_job.rb), through the app's one SSRF-safe callback sender."""
        job.callback_url = extras.callback_url
        job.dialect = extras.to_json()  # kept with the job: its callback's body, built anywhere, reads them
        await submit(self.app, job, callback_format="judge0", callback_method="PUT")

    def callback_body(self, job: Job) -> bytes:
        """Judge0's callback body (registered as `judge0`): built by whichever instance sees the job end, from what
        the job itself keeps (`Job.dialect`)."""
        return orjson.dumps(self.serialize(job, DEFAULT_FIELDS, True))

    async def create(self, request: web.Request) -> web.Response:
        wait = request.query.get("wait") == "true"
        base64_encoded = request.query.get("base64_encoded") == "true"
        try:
            fields = requested_fields(request.query.get("fields"))
            job, extras = await self._parse(await read_body(request), base64_encoded, client_of(request))
            await self._submit(job, extras)
        except QueueFull:
            return judge0_error("queue is full", 503)
        except Unprocessable as exc:
            return json_response(exc.body(), status=422)
        except BadRequest as exc:
            return judge0_error(exc.message, 400)
        if not wait:
            return json_response({"token": token_of(job.id)}, status=201)
        job = await self.app[QUEUE].wait(job.id)
        try:
            return json_response(self.serialize(job, fields, base64_encoded), status=201)
        except Unconvertible:
            return judge0_error(CONVERSION_ERROR, 201, token=token_of(job.id))

    async def show(self, request: web.Request) -> web.Response:
        options = read_options(request)
        if isinstance(options, web.Response):
            return options
        base64_encoded, fields = options
        queue = self.app[QUEUE]
        job = readable_job(client_of(request), await queue.get(job_id_of(request.match_info["token"])))
        if job is None:
            return not_found()
        try:
            return json_response(self.serialize(job, fields, base64_encoded))
        except Unconvertible:
            return judge0_error(CONVERSION_ERROR, 400)

    async def index(self, request: web.Request) -> web.Response:
        """`GET /submissions`: an admin key sees every retained job, other callers their own; newest first."""
        options = read_options(request)
        if isinstance(options, web.Response):
            return options
        base64_encoded, fields = options
        page, per_page = _int(request.query.get("page"), 1), _int(request.query.get("per_page"), 20)
        if page <= 0:
            return judge0_error(f"invalid page: {page}", 400)
        if per_page < 0:
            return judge0_error(f"invalid per_page: {per_page}", 400)
        per_page = min(per_page, MAX_PAGE_SIZE)  # one request had asked for every retained job: 183 MB
        client, queue = client_of(request), self.app[QUEUE]
        # The listing's summaries (metadata only) to choose the page; only the page's jobs are read whole.
        listed = await queue.listing(LIST_WINDOW)
        mine = sorted(
            (job for job in listed if client.admin or access.is_owner(client, job)),
            key=lambda job: (job.created_at, job.id),
            reverse=True,
        )
        chosen = [
            job
            for job in [await queue.get(summary.id) for summary in mine[(page - 1) * per_page : page * per_page]]
            if job is not None
        ]
        try:
            submissions = [self.serialize(job, fields, base64_encoded) for job in chosen]
        except Unconvertible:
            return judge0_error(CONVERSION_ERROR.replace("this submission", "one or more submissions"), 400)
        return json_response({"submissions": submissions, "meta": _page_meta(page, per_page, len(mine))})

    async def destroy(self, request: web.Request) -> web.Response:
        """Checks who may delete and when, as Judge0 does; deleting itself waits for a native delete."""
        job = await self.app[QUEUE].get(job_id_of(request.match_info["token"]))
        if job is None:
            return not_found()
        if not drivable_job(client_of(request), job):
            return judge0_error("Only the submission's owner or an admin key may delete it.", 403)
        if not job.status.finished:
            found = outcome(job, Extras.from_json(job.dialect))
            status = self.catalog.statuses[found.status]
            return judge0_error(f"submission cannot be deleted because its status is {found.status} ({status})", 400)
        return judge0_error("delete not allowed", 400)

    async def batch_create(self, request: web.Request) -> web.Response:
        """Each submission on its own, each drawing one token from the caller's submit bucket."""
        base64_encoded = request.query.get("base64_encoded") == "true"
        limit = self.settings.max_batch_size
        client = client_of(request)
        # The body may carry as many submissions as the caller may still make (one read token had bought 40 MB).
        allowed = (await self.app[LIMITER].peek(client, "submit")).remaining
        batch = request.clone(client_max_size=max(1, min(limit, allowed)) * self.settings.max_body_bytes)
        body = await read_body(batch)
        items = body.get("submissions") if isinstance(body, dict) else None
        count = len(items) if isinstance(items, list) else 0
        if count > limit:
            return judge0_error(f"number of submissions in a batch should be less than or equal to {limit}", 400)
        if not isinstance(items, list) or not items:
            return judge0_error("there should be at least one submission in a batch", 400)
        answers: list[dict[str, Any]] = []
        for params in items:
            try:
                job, extras = await self._parse(params, base64_encoded, client)
                decision = await self.app[LIMITER].hit(client, "submit")
                raise_if_denied(decision, "submit")
                await self._submit(job, extras)
            except Unprocessable as exc:
                answers.append(exc.body())
            except QueueFull:
                answers.append({"error": "queue is full"})
            except ConveyorError as exc:
                answers.append({"error": exc.message})
            else:
                answers.append({"token": token_of(job.id)})
        accepted = any("token" in answer for answer in answers)
        return json_response(answers, status=201 if accepted else 422)

    async def batch_show(self, request: web.Request) -> web.Response:
        options = read_options(request)
        if isinstance(options, web.Response):
            return options
        base64_encoded, fields = options
        raw = request.headers.get("tokens") or request.query.get("tokens") or ""
        tokens = [token for token in raw.strip().split(",") if token]
        limit = self.settings.max_batch_size
        if len(tokens) > limit:
            return judge0_error(f"number of submissions in a batch should be less than or equal to {limit}", 400)
        if not tokens:
            return judge0_error("there should be at least one submission in a batch", 400)
        client, queue = client_of(request), self.app[QUEUE]
        submissions: list[dict[str, Any] | None] = []
        try:
            for token in tokens:
                job = readable_job(client, await queue.get(job_id_of(token)))
                submissions.append(self.serialize(job, fields, base64_encoded) if job is not None else None)
        except Unconvertible:
            return judge0_error(CONVERSION_ERROR.replace("this submission", "one or more submissions"), 400)
        return json_response({"submissions": submissions})


def _page_meta(page: int, per_page: int, total: int) -> dict[str, int | None]:
    """The pagination attributes Judge0's index answers with."""
    total_pages = -(-total // per_page) if per_page else 0
    return {
        "current_page": page,
        "next_page": page + 1 if page < total_pages else None,
        "prev_page": page - 1 if page > 1 else None,
        "total_pages": total_pages,
        "total_count": total,
    }


def _int(raw: str | None, default: int) -> int:
    """Ruby's String#to_i: a leading integer, else 0. Past MAX_PAGE_NUMBER it reads as MAX_PAGE_NUMBER: no page is
    that far, and a 5,000-digit number is not worth converting (int() refuses it, too)."""
    if raw is None:
        return default
    match = _LEADING_INT.match(raw)
    if match is None:
        return 0
    sign, digits = match.groups()
    value = int(digits) if len(digits) <= len(str(MAX_PAGE_NUMBER)) else MAX_PAGE_NUMBER
    return -min(value, MAX_PAGE_NUMBER) if sign == "-" else min(value, MAX_PAGE_NUMBER)


def setup_judge0(app: web.Application) -> None:
    """Serve Judge0 CE 1.13.1 under /judge0."""
    api = Judge0Api(app)
    register_callback_body(app, "judge0", api.callback_body)

    router = app.router
    router.add_post("/judge0/submissions", api.create)
    router.add_get("/judge0/submissions", api.index)
    router.add_post("/judge0/submissions/batch", api.batch_create)
    router.add_get("/judge0/submissions/batch", api.batch_show)
    router.add_get("/judge0/submissions/{token}", api.show)
    router.add_delete("/judge0/submissions/{token}", api.destroy)
    Judge0Info(app, lambda: api.catalog, api.config).setup()
