"""Judge0 submissions: Judge0's parameters, defaults and validations onto a native run."""

from __future__ import annotations

import base64
import binascii
import io
import math
import zipfile
import zlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ...doors.sources import MAX_FILES
from ...settings import Settings
from .attributes import Extras, Unprocessable, ruby_decode64
from .catalog import Catalog, Judge0Config, LanguageEntry
from .rails import MAX_ID, MAX_NUMBER_CHARS, boolean, numeric, orjson_text, text_column, words


def _unzip(data: bytes, max_bytes: int) -> list[dict[str, str]]:
    """additional_files (a zip) as native base64 files. Declared sizes can lie: each read is capped."""
    files = []
    total = 0
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) >= MAX_FILES:
            raise ValueError(f"holds more than {MAX_FILES - 1} files")
        for info in members:
            with archive.open(info) as member:
                content = member.read(max_bytes - total + 1)
            total += len(content)
            if total > max_bytes:
                raise ValueError(f"holds more than {max_bytes} bytes")
            files.append({"name": info.filename, "content": base64.b64encode(content).decode(), "encoding": "base64"})
    return files


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(slots=True)
class _Limits:
    runs: Decimal | None
    cpu: Decimal | None
    extra: Decimal | None
    wall: Decimal | None
    memory: Decimal | None
    stack: Decimal | None
    processes: Decimal | None
    file_size: Decimal | None


def _limits(params: dict[str, Any], config: Judge0Config, errors: dict[str, list[str]]) -> _Limits:
    """The configuration variables, in Submission's order, with its bounds (the maxima are the server's)."""
    limits = _Limits(
        runs=numeric(params, "number_of_runs", errors, above=0, high=config.max_number_of_runs),
        cpu=numeric(params, "cpu_time_limit", errors, low=0, high=config.cpu_time_limit),
        extra=numeric(params, "cpu_extra_time", errors, low=0, high=0.0),
        wall=numeric(params, "wall_time_limit", errors, low=1, high=config.wall_time_limit),
        memory=numeric(params, "memory_limit", errors, low=2048, high=config.memory_limit),
        stack=numeric(params, "stack_limit", errors, low=0, high=config.stack_limit),
        processes=numeric(params, "max_processes_and_or_threads", errors, above=0, high=config.max_processes),
        file_size=None,
    )
    for name in ("enable_per_process_and_thread_time_limit", "enable_per_process_and_thread_memory_limit"):
        if boolean(params.get(name)):
            errors.setdefault(name, []).append("this option cannot be enabled")
    limits.file_size = numeric(params, "max_file_size", errors, low=0, high=config.max_file_size)
    return limits


def _language(params: dict[str, Any], catalog: Catalog, errors: dict[str, list[str]]) -> LanguageEntry | None:
    raw = params.get("language_id")
    if raw is None or raw == "":
        errors.setdefault("language_id", []).append("can't be blank")
        return None
    number = numeric(params, "language_id", {}, high=math.inf)
    entry = catalog.by_id(int(number)) if number is not None and 0 <= number <= MAX_ID else None
    if entry is None:
        shown = orjson_text(raw)  # echoed, but not a megabyte of it
        shown = shown if len(shown) <= MAX_NUMBER_CHARS else shown[:MAX_NUMBER_CHARS] + "..."
        errors.setdefault("language_id", []).append(f"language with id {shown} doesn't exist")
    return entry


def _additional_files(params: dict[str, Any], settings: Settings, errors: dict[str, list[str]]) -> list[dict[str, str]]:
    if not params.get("additional_files"):
        return []
    try:
        return _unzip(ruby_decode64(orjson_text(params["additional_files"])), settings.max_code_bytes)
    # What a corrupt, encrypted (RuntimeError) or oddly compressed (NotImplementedError) member raises on reading.
    except (
        zipfile.BadZipFile,
        ValueError,
        binascii.Error,
        EOFError,
        RuntimeError,
        NotImplementedError,
        zlib.error,
    ) as exc:
        reason = str(exc) if isinstance(exc, ValueError) and str(exc).startswith("holds") else "is not a zip"
        errors.setdefault("additional_files", []).append(reason)
        return []


def parse_submission(
    params: Any, base64_encoded: bool, catalog: Catalog, config: Judge0Config, settings: Settings
) -> tuple[dict[str, Any], Extras]:
    """A Judge0 submission (Submission's validations, messages and defaults) as a native `POST /run` body."""
    # Rails' params.permit keeps scalars only: an object or a list where a value belongs is as if absent.
    params = {k: v for k, v in params.items() if not isinstance(v, dict | list)} if isinstance(params, dict) else {}
    errors: dict[str, list[str]] = {}
    source = _source_code(params, base64_encoded, errors)
    entry = _language(params, catalog, errors)
    limits = _limits(params, config, errors)
    options_text, options = words(params.get("compiler_options"), "compiler_options", errors)
    args_text, args = words(params.get("command_line_arguments"), "command_line_arguments", errors)
    if options and entry is not None and entry.compile_cmd is None:
        errors.setdefault("compiler_options", []).append(
            "setting compiler options is only allowed for compiled languages"
        )
    if boolean(params.get("enable_network")):
        errors.setdefault("enable_network", []).append("enabling network is not allowed")
    extra_files = _additional_files(params, settings, errors)
    if errors or entry is None or source is None:
        raise Unprocessable(errors)
    extras = _extras(params, entry, limits, options_text, args_text, bool(extra_files))
    # Text that is not UTF-8 cannot travel in a native JSON string: replaced bytes show as U+FFFD.
    native: dict[str, Any] = {
        "language": entry.language,
        **_sources(entry, source, extra_files),
        "stdin": (text_column(params.get("stdin"), base64_encoded) or b"").decode("utf-8", "replace"),
        "args": args,
        "compilerOptions": options,
        **_native_limits(limits),
    }
    expected = text_column(params.get("expected_output"), base64_encoded)
    if expected is not None:
        native["expectedOutput"] = expected.decode("utf-8", "replace")
    _as_tests(native, extras.number_of_runs)
    return native, extras


def _source_code(params: dict[str, Any], base64_encoded: bool, errors: dict[str, list[str]]) -> bytes | None:
    source = text_column(params.get("source_code"), base64_encoded)
    if source is None or not source.strip():
        errors["source_code"] = ["can't be blank"]
    return source


def _as_tests(native: dict[str, Any], runs: int) -> None:
    """Judge0 runs the program number_of_runs times; the native tests compile it once and run it that often."""
    if runs > 1:
        test = {"stdin": native.pop("stdin"), "expectedOutput": native.pop("expectedOutput", None)}
        native["tests"] = [test] * runs


def _extras(
    params: dict[str, Any],
    entry: LanguageEntry,
    limits: _Limits,
    options_text: str | None,
    args_text: str | None,
    additional_files: bool,
) -> Extras:
    """What the job keeps of the submission beyond the native run, Judge0's defaults filled in."""
    return Extras(
        language_id=entry.id,
        number_of_runs=int(limits.runs) if limits.runs is not None else 1,
        cpu_extra_time=limits.extra if limits.extra is not None else Decimal(0),
        stack_limit=_integer(limits.stack),
        max_processes=_integer(limits.processes),
        max_file_size=_integer(limits.file_size),
        redirect_stderr_to_stdout=bool(boolean(params.get("redirect_stderr_to_stdout"))),
        compiler_options=options_text,
        command_line_arguments=args_text,
        callback_url=orjson_text(params["callback_url"]) if params.get("callback_url") else None,
        additional_files=additional_files,
    )


def _integer(value: Decimal | None) -> int | None:
    return int(value) if value is not None else None


def _native_limits(limits: _Limits) -> dict[str, int]:
    """Seconds and kilobytes as native milliseconds and megabytes; 0 (isolate: no limit) is the server's."""
    native = {}
    if limits.cpu:
        native["cpuTimeLimitMs"] = max(1, math.ceil(limits.cpu * 1000))
    if limits.wall:
        native["timeoutMs"] = max(1, math.ceil(limits.wall * 1000))
    if limits.memory:
        native["memoryLimitMb"] = max(1, math.ceil(limits.memory / 1024))
    return native


def _sources(entry: LanguageEntry, source: bytes, extra_files: list[dict[str, str]]) -> dict[str, Any]:
    """The program: source_code under the language's own file name (binary, an Executable's ELF, as base64)."""
    text = _utf8(source)
    if entry.language != "executable" and text is not None and not extra_files:
        return {"code": text}
    main: dict[str, str] = (
        {"name": entry.source_file, "content": text, "encoding": "utf8"}
        if text is not None and entry.language != "executable"
        else {"name": entry.source_file, "content": base64.b64encode(source).decode(), "encoding": "base64"}
    )
    return {"files": [main, *extra_files], "main": entry.source_file}


def native_error_field(native_field: str | None) -> str:
    """The Judge0 attribute a native validation error is about."""
    return {
        "language": "language_id",
        "code": "source_code",
        "files": "source_code",
        "main": "source_code",
        "stdin": "stdin",
        "expectedOutput": "expected_output",
        "args": "command_line_arguments",
        "compilerOptions": "compiler_options",
        "timeoutMs": "wall_time_limit",
        "cpuTimeLimitMs": "cpu_time_limit",
        "memoryLimitMb": "memory_limit",
        "tests": "number_of_runs",
        "callbackUrl": "callback_url",
    }.get(native_field or "", "base")
