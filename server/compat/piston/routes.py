"""Piston v2 (`/api/v2`): Piston's requests become native runs on the one queue; jobs read back as Piston results."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from ...access.identity import check_priority
from ...doors.api import client_of, json_response, read_json
from ...doors.payloads import parse_run
from ...doors.submissions import submit
from ...errors import ConveyorError, MethodNotAllowed, UnsupportedMediaType
from ...hub.watch import job_watch
from ...keys import QUEUE, RUNNER, SETTINGS
from ...queue.jobs import ExecutionResult
from ...sandbox.languages import load_languages
from .result import OutputTape, render_result
from .runtimes import Runtimes, load_names
from .submission import parse_execute
from .websocket import PistonSockets

# Stock Piston refuses a body not labelled application/json with 415 (v2.js), and so do we: a cross-site form
# (text/plain) or a typeless Blob needs no CORS preflight, so accepting them would let any page submit jobs.
JSON_TYPE = "application/json"


def piston_error(exc: ConveyorError) -> web.Response:
    """Piston's error body is `{"message": ...}` (a 408 is sent, then its connection closed: error_middleware)."""
    return json_response({"message": exc.message}, status=exc.status, headers=exc.headers)


async def read_body(request: web.Request) -> Any:
    """The JSON body, read as the native door reads it (HTTP_BODY_TIMEOUT_MS, then 408)."""
    if request.content_type != JSON_TYPE:
        raise UnsupportedMediaType("requests must be of type application/json")
    return await read_json(request)


class PistonApi:
    """The REST half of `/api/v2`; the WebSocket is in websocket.py."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.languages = load_languages()
        self.names = load_names()

    @property
    def runtimes(self) -> Runtimes:
        return Runtimes(self.app[RUNNER], self.languages, self.names)

    async def get_runtimes(self, request: web.Request) -> web.Response:
        return json_response([rt.to_dict() for rt in self.runtimes.all()])

    async def get_packages(self, request: web.Request) -> web.Response:
        packages: dict[tuple[str, str], dict[str, Any]] = {}
        for rt in self.runtimes.all():
            name = rt.runtime or rt.language
            packages[(name, rt.version)] = {"language": name, "language_version": rt.version, "installed": True}
        return json_response(list(packages.values()))

    async def change_packages(self, request: web.Request) -> web.Response:
        return piston_error(
            MethodNotAllowed(
                "Conveyor runs the toolchains installed on its host; packages cannot be installed or removed "
                "through the API.",
                headers={"Allow": "GET"},
            )
        )

    async def execute(self, request: web.Request) -> web.Response:
        app = request.app
        settings = app[SETTINGS]
        try:
            rt, native = parse_execute(await read_body(request), self.runtimes, settings)
            run = parse_run(native, settings, app[RUNNER])
            client = client_of(request)
            check_priority(client, run.priority)
            job = run.to_job(client.job_owner)
            tape = OutputTape(2 * settings.max_output_bytes)
            stop_following = job_watch(app).follow(job.id, tape)
            try:
                await submit(app, job)
                job = await app[QUEUE].wait(job.id)
            finally:
                stop_following()
        except ConveyorError as exc:
            return piston_error(exc)
        return json_response(render_result(rt, job, tape.output(job.result or ExecutionResult())))


def setup_piston(app: web.Application) -> None:
    """Serve Piston v2 under /api/v2."""
    api = PistonApi(app)
    job_watch(app)
    routes = [
        ("GET", "/api/v2/runtimes", api.get_runtimes),
        ("GET", "/api/v2/packages", api.get_packages),
        ("POST", "/api/v2/packages", api.change_packages),
        ("DELETE", "/api/v2/packages", api.change_packages),
        ("POST", "/api/v2/execute", api.execute),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    PistonSockets(app, lambda: api.runtimes).setup()
    # Then the same paths as Piston's Express router takes them (any case, a trailing slash or not), after every
    # exact route, so the documented spelling is matched first.
    for method, path, handler in routes:
        app.router.add_route(method, express_path(path), handler)


def express_path(path: str) -> str:
    """An aiohttp route pattern matching `path` as Express's default router does: without regard to case, with an
    optional trailing slash."""
    segments = [segment for segment in path.split("/") if segment]
    pattern = "".join(
        f"/{{_{i}:{''.join(f'[{c.lower()}{c.upper()}]' if c.isalpha() else re.escape(c) for c in segment)}}}"
        for i, segment in enumerate(segments)
    )
    return pattern + "{_slash:/?}"
