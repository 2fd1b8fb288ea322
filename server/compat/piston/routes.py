"""Piston v2 (`/api/v2`): Piston's requests become native runs on the one queue; jobs read back as Piston results."""

from __future__ import annotations

import base64
import math
import re
import signal
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nodesemver
from aiohttp import web

from ...access.identity import check_priority
from ...doors.api import client_of, json_response, read_json
from ...doors.payloads import parse_run
from ...doors.submissions import submit
from ...errors import BadRequest, ConveyorError, MethodNotAllowed, UnsupportedMediaType
from ...hub.watch import job_watch
from ...keys import QUEUE, RUNNER, SETTINGS
from ...queue.events import Event
from ...queue.jobs import ExecutionResult, Job, Runner
from ...sandbox.languages import Language, load_languages
from ...settings import Settings
from ..common import accounting, signal_number

PISTON_FILE = Path(__file__).with_name("piston.toml")
ENCODINGS = ("base64", "hex", "utf8")
# Piston checks its limits in this order (api/src/api/v2.js), so the first error named is the same.
CONSTRAINTS = ("memory_limit", "timeout", "cpu_time")
STAGES = ("compile", "run")
# Stock Piston refuses a body not labelled application/json with 415 (v2.js), and so do we: a cross-site form
# (text/plain) or a typeless Blob needs no CORS preflight, so accepting them would let any page submit jobs.
JSON_TYPE = "application/json"
# Isolate's messages, which Piston passes on.
WALL_TIMEOUT = "Time limit exceeded (wall clock)"
CPU_TIMEOUT = "Time limit exceeded"
STOPPED = frozenset({"cancelled", "stopped", "shutdown"})
_COMPILER_SIGNAL = re.compile(r"\[compiler signal (\d+)\]\s*$")
# A version range longer than this is refused: no real one comes close.
MAX_VERSION_CHARS = 64
_OPERATORS = frozenset({"<", "<=", ">", ">=", "=", "~", "~>", "^"})
_VERSION_TEXT = r"v?(?:\d+|[xX*])(?:\.(?:\d+|[xX*])){0,2}(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?"
_VERSION = re.compile(_VERSION_TEXT, re.ASCII)
_COMPARATOR = re.compile(r"(?:[<>]=?|=|~>?|\^)?" + _VERSION_TEXT, re.ASCII)


@dataclass(frozen=True, slots=True)
class PistonRuntime:
    """One of our languages as Piston names it, with what translation needs from its definition."""

    language: str
    version: str
    aliases: tuple[str, ...]
    runtime: str | None
    native: str
    source: str
    compiled: bool

    @property
    def semver(self) -> str:
        """The detected version padded to three parts (`1.2` -> `1.2.0`) so Piston's semver ranges match it."""
        parts = self.version.split(".")
        return ".".join([*parts, "0", "0"][: max(3, len(parts))])

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"language": self.language, "version": self.version, "aliases": list(self.aliases)}
        if self.runtime is not None:
            data["runtime"] = self.runtime
        return data


def load_names(path: Path = PISTON_FILE) -> dict[str, dict[str, Any]]:
    with path.open("rb") as f:
        return tomllib.load(f)


class Runtimes:
    """The runner's languages under Piston's names, and Piston's lookup by name or alias and semver range."""

    def __init__(self, runner: Runner, languages: dict[str, Language], names: dict[str, dict[str, Any]]) -> None:
        self._runner = runner
        self._languages = languages
        self._names = names

    def all(self) -> list[PistonRuntime]:
        runtimes = []
        for offered in self._runner.runtimes():
            native = offered["language"]
            names = self._names.get(native, {})
            definition = self._languages.get(native)
            runtimes.append(
                PistonRuntime(
                    language=names.get("language", native),
                    version=offered["version"],
                    aliases=tuple(names.get("aliases", offered.get("aliases", []))),
                    runtime=names.get("runtime"),
                    native=native,
                    source=definition.source if definition else "main",
                    compiled=bool(definition and definition.compile is not None),
                )
            )
        return runtimes

    def find(self, language: str, version: str) -> PistonRuntime | None:
        """The newest runtime named `language` (Piston's name or alias, else ours) whose version is in `version`."""
        runtimes = self.all()
        named = [rt for rt in runtimes if language == rt.language or language in rt.aliases]
        if not named:
            native = self._runner.resolve(language)
            named = [rt for rt in runtimes if rt.native == native]
        wanted = semver_range(version)
        if wanted is None:  # an invalid range matches nothing, as in node-semver
            return None
        try:
            best = nodesemver.max_satisfying([rt.semver for rt in named], wanted, loose=True)
        except (ValueError, TypeError):
            return None
        return next((rt for rt in named if rt.semver == best), None)


def semver_range(text: str) -> str | None:
    """`text` as a node-semver range in canonical form (one space between comparators), or None if it is not one.

    nodesemver's own patterns backtrack: `">"`, 300 spaces and `"a"` took it 10 s, doubling every ~50 characters.
    So what reaches it is checked here first, in linear time: at most MAX_VERSION_CHARS, comparators that match
    _COMPARATOR (whose parts start with distinct characters, so it cannot backtrack) joined by single spaces, a
    hyphen range or `||`."""
    if len(text) > MAX_VERSION_CHARS:
        return None
    sets = []
    for part in text.split("||"):
        tokens: list[str] = []
        for word in part.split():
            if tokens and tokens[-1] in _OPERATORS:
                tokens[-1] += word  # node-semver allows a space after an operator: ">= 1.2"
            else:
                tokens.append(word)
        if len(tokens) == 3 and tokens[1] == "-":
            valid = all(_VERSION.fullmatch(token) for token in (tokens[0], tokens[2]))
        else:
            valid = all(_COMPARATOR.fullmatch(token) for token in tokens)
        if not valid:
            return None
        sets.append(" ".join(tokens) or "*")
    return " || ".join(sets)


def configured_limits(settings: Settings) -> dict[str, int]:
    """The server's maxima in Piston's units: bytes and milliseconds."""
    memory, cpu = settings.memory_limit_mb << 20, settings.cpu_time_limit_s * 1000
    return {
        "compile_memory_limit": memory,
        "run_memory_limit": memory,
        "compile_timeout": settings.compile_timeout_ms,
        "run_timeout": settings.job_timeout_ms,
        "compile_cpu_time": cpu,
        "run_cpu_time": cpu,
    }


def parse_execute(body: Any, runtimes: Runtimes, settings: Settings) -> tuple[PistonRuntime, dict[str, Any]]:
    """Piston's validation with its messages (v2.js get_job), then the request as a native `POST /run` body."""
    if not isinstance(body, dict):
        body = {}
    language, version, files = body.get("language"), body.get("version"), body.get("files")
    if not language or not isinstance(language, str):
        raise BadRequest("language is required as a string")
    if not version or not isinstance(version, str):
        raise BadRequest("version is required as a string")
    if not isinstance(files, list):
        raise BadRequest("files is required as an array")
    for index, item in enumerate(files):
        if not isinstance(item, dict) or not isinstance(item.get("content"), str):
            raise BadRequest(f"files[{index}].content is required as a string")
    rt = runtimes.find(language, version)
    if rt is None:
        raise BadRequest(f"{_shown(language)}-{_shown(version)} runtime is unknown")
    encodings = [item.get("encoding") if item.get("encoding") in ENCODINGS else "utf8" for item in files]
    if "utf8" not in encodings:
        raise BadRequest("files must include at least one utf8 encoded file")
    limits = _constraints(body, configured_limits(settings))
    stdin = body.get("stdin")
    if stdin is None:
        stdin = ""
    if isinstance(stdin, str) and not stdin.endswith("\n"):
        stdin += "\n"  # as Piston's job.js does
    native: dict[str, Any] = {
        "language": rt.native,
        **_files(files, encodings, rt),
        "stdin": stdin,
        "args": body.get("args") if body.get("args") is not None else [],
        **_native_limits(limits),
    }
    return rt, native


def _shown(text: str) -> str:
    """A client's text echoed in an error: not a megabyte of it."""
    return text if len(text) <= MAX_VERSION_CHARS else text[:MAX_VERSION_CHARS] + "..."


def _native_limits(limits: dict[str, float]) -> dict[str, int]:
    """Piston's milliseconds and bytes as native fields. compile_cpu_time and compile_memory_limit are checked
    but have no native field: the compile stage runs under the server's CPU and memory limits (docs/compat.md)."""
    native = {
        field: max(1, math.ceil(limits[name]))
        for name, field in (
            ("run_timeout", "timeoutMs"),
            ("compile_timeout", "compileTimeoutMs"),
            ("run_cpu_time", "cpuTimeLimitMs"),
        )
        if name in limits
    }
    if "run_memory_limit" in limits:
        native["memoryLimitMb"] = max(1, math.ceil(limits["run_memory_limit"] / (1 << 20)))
    return native


def _constraints(body: dict[str, Any], configured: dict[str, int]) -> dict[str, float]:
    values: dict[str, float] = {}
    for constraint in CONSTRAINTS:
        for stage in STAGES:
            name = f"{stage}_{constraint}"
            value = body.get(name)
            if not value:  # JavaScript's falsy (absent, null, 0, false, ""): the default
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadRequest(f"If specified, {name} must be a number")
            if constraint == "memory_limit" and value == -1:
                continue  # Piston's "no limit"; here that is the server's limit
            if value > configured[name]:
                raise BadRequest(f"{name} cannot exceed the configured limit of {configured[name]}")
            if value < 0:
                raise BadRequest(f"{name} must be non-negative")
            values[name] = value
    return values


def _files(files: list[dict[str, Any]], encodings: list[str], rt: PistonRuntime) -> dict[str, Any]:
    """One nameless file is the `code` shorthand; otherwise native files, the first utf8 one the entry point.

    A nameless entry point gets the language's own file name (main.c, Main.java), so the compiler recognises it;
    other nameless files get Piston's `file<i>.code`."""
    entry = encodings.index("utf8")
    if len(files) == 1 and not files[0].get("name"):
        return {"code": files[0]["content"]}
    native = []
    for index, (item, encoding) in enumerate(zip(files, encodings, strict=True)):
        name = item.get("name") or (rt.source if index == entry else f"file{index}.code")
        content = item["content"]
        if encoding == "hex":
            try:
                content, encoding = base64.b64encode(bytes.fromhex(content)).decode(), "base64"
            except ValueError:
                raise BadRequest(f"files[{index}].content is not valid hex") from None
        native.append({"name": name, "content": content, "encoding": encoding})
    return {"files": native, "main": native[entry]["name"]}


class OutputTape:
    """A job's output events in the order written, for Piston's `output` (stdout and stderr interleaved).

    Bounded: past `limit` characters it stops recording and `output` falls back to stdout then stderr."""

    def __init__(self, limit: int) -> None:
        self._parts: list[tuple[str, str]] = []
        self._size = 0
        self._limit = limit
        self._overflow = False

    def __call__(self, event: Event) -> None:
        if event["type"] != "output" or self._overflow:
            return
        data: str = event["data"]
        if self._size + len(data) > self._limit:
            self._overflow = True
            self._parts.clear()
            return
        self._parts.append((event["stream"], data))
        self._size += len(data)

    def output(self, result: ExecutionResult) -> str:
        """The interleaved output, when what was recorded is exactly the job's stdout and stderr."""
        if not self._overflow:
            streams = {name: "".join(d for s, d in self._parts if s == name) for name in ("stdout", "stderr")}
            if streams == {"stdout": result.stdout, "stderr": result.stderr}:
                return "".join(data for _, data in self._parts)
        return result.stdout + result.stderr


def run_stage(result: ExecutionResult, output: str, wall_time: float | None) -> dict[str, Any]:
    """The run stage as Piston's job.js reports it, status and message as isolate words them."""
    code: int | None = None
    sig: str | None = None
    status: str | None = None
    message: str | None = None
    if result.reason in ("timeout", "cpu_limit"):
        status, message, sig = "TO", WALL_TIMEOUT if result.reason == "timeout" else CPU_TIMEOUT, "SIGKILL"
    elif result.reason == "output_limit":
        stream = "stderr" if len(result.stderr) > len(result.stdout) else "stdout"
        status, message, sig = ("EL" if stream == "stderr" else "OL"), f"{stream} length exceeded", "SIGKILL"
    elif result.signal is not None or result.reason in STOPPED:
        sig = result.signal or "SIGKILL"
        status, message = "SG", f"Caught fatal signal {signal_number(sig) or 9}"
    elif result.exit_code is None:
        status, message = "XX", f"Internal error ({result.reason or 'no exit status'})"
    else:
        code = result.exit_code
        if code != 0:
            status, message = "RE", f"Exited with error status {code}"
    return {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "code": code,
        "signal": sig,
        "output": output,
        "memory": accounting(result, "memory_peak_bytes"),
        "message": message,
        "status": status,
        "cpu_time": accounting(result, "cpu_time_ms"),
        "wall_time": wall_time,
    }


def compile_stage(result: ExecutionResult) -> dict[str, Any]:
    """The compile stage. Conveyor keeps the compiler's stdout and stderr as one text, shown as stderr and output,
    and no compiler exit status: a failed compile has code null (docs/compat.md)."""
    text = result.compile_output or ""
    failed = result.reason in ("compile_error", "compile_timeout")
    sig = status = message = None
    killed = _COMPILER_SIGNAL.search(text)
    if result.reason == "compile_timeout":
        status, message, sig = "TO", WALL_TIMEOUT, "SIGKILL"
    elif failed and killed:
        number = int(killed.group(1))
        status, message, sig = "SG", f"Caught fatal signal {number}", signal.Signals(number).name
    elif failed:
        status = "RE"
    return {
        "stdout": "",
        "stderr": text,
        "code": None if failed else 0,
        "signal": sig,
        "output": text,
        "memory": accounting(result, "compile_memory_peak_bytes"),
        "message": message,
        "status": status,
        "cpu_time": accounting(result, "compile_cpu_time_ms"),
        "wall_time": result.compile_time_ms,
    }


def render_result(rt: PistonRuntime, job: Job, output: str | None = None) -> dict[str, Any]:
    """`POST /execute`'s answer for a finished job. A failed compile is reported as Piston does: `run` is the
    compile stage again (v2.js keeps that for older clients)."""
    result = job.result or ExecutionResult()
    data: dict[str, Any] = {}
    if rt.compiled and job.started_at is not None:
        data["compile"] = compile_stage(result)
    if "compile" in data and data["compile"]["code"] != 0:
        data["run"] = data["compile"]
    else:
        text = output if output is not None else result.stdout + result.stderr
        data["run"] = run_stage(result, text, job.execution_time_ms)
    data["language"], data["version"] = rt.language, rt.version
    return data


def piston_error(exc: ConveyorError) -> web.Response:
    """Piston's error body is `{"message": ...}`."""
    response = json_response({"message": exc.message}, status=exc.status, headers=exc.headers)
    if exc.status == 408:
        response.force_close()  # what is left of a late body must not be read as the next request
    return response


async def read_body(request: web.Request) -> Any:
    """The JSON body, read as the native door reads it (HTTP_BODY_TIMEOUT_MS, then 408)."""
    if request.content_type != JSON_TYPE:
        raise UnsupportedMediaType("requests must be of type application/json")
    return await read_json(request)


class PistonApi:
    """The REST half of `/api/v2`; the WebSocket is in piston_socket.py."""

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
    from .websocket import PistonSockets

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
    PistonSockets(app, api).setup()
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
