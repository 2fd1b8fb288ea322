"""Piston's `POST /execute` request: its validation, with Piston's messages, into a native `POST /run` body."""

from __future__ import annotations

import base64
import math
from typing import Any

from ...errors import BadRequest
from ...settings import Settings
from .runtimes import MAX_VERSION_CHARS, PistonRuntime, Runtimes

ENCODINGS = ("base64", "hex", "utf8")
# Piston checks its limits in this order (api/src/api/v2.js), so the first error named is the same.
CONSTRAINTS = ("memory_limit", "timeout", "cpu_time")
STAGES = ("compile", "run")


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
    language, version, files = _required(body)
    rt = runtimes.find(language, version)
    if rt is None:
        raise BadRequest(f"{_shown(language)}-{_shown(version)} runtime is unknown")
    encodings = [item.get("encoding") if item.get("encoding") in ENCODINGS else "utf8" for item in files]
    if "utf8" not in encodings:
        raise BadRequest("files must include at least one utf8 encoded file")
    limits = _constraints(body, configured_limits(settings))
    native: dict[str, Any] = {
        "language": rt.native,
        **_files(files, encodings, rt),
        "stdin": _stdin(body),
        "args": body.get("args") if body.get("args") is not None else [],
        **_native_limits(limits),
    }
    return rt, native


def _required(body: dict[str, Any]) -> tuple[str, str, list[Any]]:
    """language, version and files, checked in Piston's order with its messages."""
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
    return language, version, files


def _stdin(body: dict[str, Any]) -> Any:
    """stdin ending in a newline, as Piston's job.js makes it (a non-string is left for the native check)."""
    stdin = body.get("stdin")
    if stdin is None:
        stdin = ""
    if isinstance(stdin, str) and not stdin.endswith("\n"):
        stdin += "\n"  # as Piston's job.js does
    return stdin


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
