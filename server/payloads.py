"""Payloads: validation of a run submission, shared by `POST /run` and the WebSocket `run` message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import BadRequest, PayloadTooLarge
from .jobs import Job, Runner
from .settings import Settings

MAX_ARGS = 64
MAX_ARG_BYTES = 4096


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A validated submission."""

    language: str
    code: str
    stdin: str
    args: list[str]
    priority: int
    timeout_ms: int
    interactive: bool

    def to_job(self, owner: str) -> Job:
        return Job(
            language=self.language,
            code=self.code,
            stdin=self.stdin,
            args=self.args,
            priority=self.priority,
            owner=owner,
            timeout_ms=self.timeout_ms,
            interactive=self.interactive,
        )


def parse_run(data: Any, settings: Settings, runner: Runner, *, allow_interactive: bool = False) -> RunRequest:
    """Validate a submission; raises BadRequest naming the field, or PayloadTooLarge for oversized code."""
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    language_name = _field(data, "language", str, required=True)
    code = _field(data, "code", str, required=True)
    stdin = _field(data, "stdin", str, default="")
    args = _field(data, "args", list, default=[])
    priority = _field(data, "priority", int, default=0)
    timeout_ms = _field(data, "timeoutMs", int, default=settings.job_timeout_ms)
    interactive = _field(data, "interactive", bool, default=False) if allow_interactive else False

    language = runner.resolve(language_name)
    if language is None:
        valid = sorted({name for r in runner.runtimes() for name in [r["language"], *r.get("aliases", [])]})
        raise BadRequest(
            f"Unknown language {language_name!r}. Valid languages: {', '.join(valid)}.", field="language", valid=valid
        )
    code_bytes = len(code.encode("utf-8", "surrogatepass"))
    if code_bytes > settings.max_code_bytes:
        raise PayloadTooLarge(
            f"code is {code_bytes} bytes; the maximum is {settings.max_code_bytes}.",
            field="code",
            maxBytes=settings.max_code_bytes,
        )
    if not code.strip():
        raise BadRequest("code must not be empty.", field="code")
    if len(stdin.encode("utf-8", "surrogatepass")) > settings.max_stdin_bytes:
        raise PayloadTooLarge(f"stdin is larger than {settings.max_stdin_bytes} bytes.", field="stdin")
    if len(args) > MAX_ARGS or not all(isinstance(a, str) and len(a.encode()) <= MAX_ARG_BYTES for a in args):
        raise BadRequest(
            f"args must be a list of at most {MAX_ARGS} strings of at most {MAX_ARG_BYTES} bytes.", field="args"
        )
    if any("\x00" in a for a in args):
        raise BadRequest("args must not contain NUL characters.", field="args")
    if priority < 0:
        raise BadRequest("priority must be a non-negative integer.", field="priority")
    if not 1 <= timeout_ms <= settings.job_timeout_ms:
        raise BadRequest(
            f"timeoutMs must be an integer from 1 to {settings.job_timeout_ms}.",
            field="timeoutMs",
            max=settings.job_timeout_ms,
        )
    return RunRequest(language, code, stdin, list(args), priority, timeout_ms, interactive)


_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list of strings", bool: "a boolean"}


def _field(data: dict[str, Any], name: str, kind: type, *, required: bool = False, default: Any = None) -> Any:
    if name not in data or data[name] is None:
        if required:
            raise BadRequest(f"{name} is required.", field=name)
        return default
    value = data[name]
    # bool is a subclass of int: `"priority": true` is a type error, not priority 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"{name} must be {_TYPE_NAMES[kind]}.", field=name)
    return value
