"""Judge0 submissions: Judge0's parameters, defaults and validations onto a native run; its attributes, tokens
and base64 as Judge0 writes them."""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import shlex
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ...doors.payloads import MAX_FILES
from ...errors import ConveyorError
from ...settings import Settings
from .catalog import Catalog, Judge0Config, LanguageEntry

# The serializer's attributes in order (db/schema.rb's columns, then status and language), and its defaults.
FIELDS = (
    *"source_code language_id stdin expected_output stdout status_id created_at finished_at time memory stderr "
    "token number_of_runs cpu_time_limit cpu_extra_time wall_time_limit memory_limit stack_limit "
    "max_processes_and_or_threads enable_per_process_and_thread_time_limit "
    "enable_per_process_and_thread_memory_limit max_file_size compile_output exit_code exit_signal message "
    "wall_time compiler_options command_line_arguments redirect_stderr_to_stdout callback_url additional_files "
    "enable_network status language".split(),
)
DEFAULT_FIELDS = ("token", "time", "memory", "stdout", "stderr", "compile_output", "message", "status")
TEXT_FIELDS = frozenset({"source_code", "stdin", "expected_output", "stdout", "stderr", "compile_output"})
CONVERSION_ERROR = (
    "some attributes for this submission cannot be converted to UTF-8, use base64_encoded=true query parameter"
)
# Rails' numericality accepts numbers and numeric strings. Longer texts are not numbers here: the pattern and
# Decimal stay cheap, and no limit or id needs more digits.
_NUMERIC = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
MAX_NUMBER_CHARS = 64
# Judge0's ids are integer columns; anything outside is no language, decided before int() (an exponent like 1e600000
# would take seconds to become an int).
MAX_ID = 2**31 - 1
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "off", "OFF"})
# Characters Judge0 deletes from compiler options and arguments before they reach its bash script.
_SHELL_META = re.compile(r"[$&;<>|`]")


class Unprocessable(ConveyorError):
    """Judge0's 422: `{"field": ["message", ...]}`."""

    status = 422
    error = "Unprocessable entity"

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{name} {', '.join(messages)}" for name, messages in errors.items()))
        self.errors = errors

    def body(self) -> dict[str, Any]:
        return dict(self.errors)


class Unconvertible(Exception):
    """A text attribute is not UTF-8 and base64 was not asked for."""


def ruby_encode64(data: bytes) -> str:
    """Ruby's Base64.encode64, as Judge0 encodes: 60 characters a line, each line ending in a newline."""
    return "".join(binascii.b2a_base64(data[i : i + 45]).decode() for i in range(0, len(data), 45))


def ruby_decode64(text: str) -> bytes:
    """Ruby's Base64.decode64: lenient, skips what is not base64 and decodes a short last group."""
    clean = re.sub(r"[^A-Za-z0-9+/]", "", text.split("=", 1)[0])
    clean = clean[: len(clean) - (len(clean) % 4 == 1)]
    return base64.b64decode(clean + "=" * (-len(clean) % 4))


def token_of(job_id: str) -> str:
    """Our 128-bit hex ids, written as the UUIDs Judge0's tokens are (lossless)."""
    try:
        return str(uuid.UUID(hex=job_id))
    except ValueError:
        return job_id


def job_id_of(token: str) -> str:
    try:
        return uuid.UUID(token).hex
    except ValueError:
        return token


@dataclass(slots=True)
class Extras:
    """What a Judge0 submission says that a native job does not keep (docs/compat.md)."""

    language_id: int | None = None
    number_of_runs: int = 1
    cpu_extra_time: Decimal = Decimal(0)
    stack_limit: int | None = None
    max_processes: int | None = None
    max_file_size: int | None = None
    redirect_stderr_to_stdout: bool = False
    compiler_options: str | None = None
    command_line_arguments: str | None = None
    callback_url: str | None = None
    additional_files: bool = False
    errors: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """What the job keeps of these (`Job.dialect`); errors are answered at submission and not kept."""
        return {
            "language_id": self.language_id,
            "number_of_runs": self.number_of_runs,
            "cpu_extra_time": str(self.cpu_extra_time),
            "stack_limit": self.stack_limit,
            "max_processes": self.max_processes,
            "max_file_size": self.max_file_size,
            "redirect_stderr_to_stdout": self.redirect_stderr_to_stdout,
            "compiler_options": self.compiler_options,
            "command_line_arguments": self.command_line_arguments,
            "callback_url": self.callback_url,
            "additional_files": self.additional_files,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Extras:
        """The extras a job kept (written by `to_json`, perhaps by another version: unknown keys are ignored, a
        missing or malformed one takes its default)."""
        if not data:
            return cls()
        known = {f for f in cls.__dataclass_fields__ if f != "errors"}
        values = {k: v for k, v in data.items() if k in known}
        try:
            values["cpu_extra_time"] = Decimal(str(values.get("cpu_extra_time", 0)))
            return cls(**values)
        except (ArithmeticError, TypeError, ValueError):
            return cls()


def _number(
    params: dict[str, Any],
    name: str,
    errors: dict[str, list[str]],
    *,
    low: float | None = None,
    above: float | None = None,
    high: float,
) -> Decimal | None:
    """Rails' numericality: None when absent (the default applies), else the number within its bounds."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or not (
        (isinstance(raw, int | float) and math.isfinite(raw))
        or (isinstance(raw, str) and len(raw) <= MAX_NUMBER_CHARS and _NUMERIC.fullmatch(raw))
    ):
        errors.setdefault(name, []).append("is not a number")
        return None
    value = Decimal(str(raw).strip())
    if above is not None and value <= above:
        errors.setdefault(name, []).append(f"must be greater than {above}")
    if low is not None and value < low:
        errors.setdefault(name, []).append(f"must be greater than or equal to {low}")
    if value > high:
        errors.setdefault(name, []).append(f"must be less than or equal to {high}")
    return value


def _flag(raw: Any) -> bool | None:
    """Rails' boolean cast: blank is nil, its false values are false, anything else true."""
    if raw is None or raw == "":
        return None
    return not (raw is False or raw == 0 or str(raw) in _FALSE)


def _text(raw: Any, base64_encoded: bool) -> bytes | None:
    if raw is None:
        return None
    text = raw if isinstance(raw, str) else orjson_text(raw)
    return ruby_decode64(text) if base64_encoded else text.encode("utf-8", "surrogatepass")


def orjson_text(value: Any) -> str:
    """A JSON number or boolean as Rails' to_s writes it into a string column."""
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


def _words(raw: Any, name: str, errors: dict[str, list[str]]) -> tuple[str | None, list[str]]:
    """compiler_options / command_line_arguments: at most 512 characters, split as bash would split them after
    Judge0 removed $&;<>|` (they go into a bash script upstream; here into argv, no shell)."""
    if raw is None or raw == "":
        return None, []
    text = orjson_text(raw) if not isinstance(raw, str) else raw
    if len(text) > 512:
        errors.setdefault(name, []).append("is too long (maximum is 512 characters)")
        return text, []
    try:
        return text, shlex.split(_SHELL_META.sub("", text))
    except ValueError:
        errors.setdefault(name, []).append("has an unbalanced quote")
        return text, []


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
        runs=_number(params, "number_of_runs", errors, above=0, high=config.max_number_of_runs),
        cpu=_number(params, "cpu_time_limit", errors, low=0, high=config.cpu_time_limit),
        extra=_number(params, "cpu_extra_time", errors, low=0, high=0.0),
        wall=_number(params, "wall_time_limit", errors, low=1, high=config.wall_time_limit),
        memory=_number(params, "memory_limit", errors, low=2048, high=config.memory_limit),
        stack=_number(params, "stack_limit", errors, low=0, high=config.stack_limit),
        processes=_number(params, "max_processes_and_or_threads", errors, above=0, high=config.max_processes),
        file_size=None,
    )
    for name in ("enable_per_process_and_thread_time_limit", "enable_per_process_and_thread_memory_limit"):
        if _flag(params.get(name)):
            errors.setdefault(name, []).append("this option cannot be enabled")
    limits.file_size = _number(params, "max_file_size", errors, low=0, high=config.max_file_size)
    return limits


def _language(params: dict[str, Any], catalog: Catalog, errors: dict[str, list[str]]) -> LanguageEntry | None:
    raw = params.get("language_id")
    if raw is None or raw == "":
        errors.setdefault("language_id", []).append("can't be blank")
        return None
    number = _number(params, "language_id", {}, high=math.inf)
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
    source = _text(params.get("source_code"), base64_encoded)
    if source is None or not source.strip():
        errors["source_code"] = ["can't be blank"]
    entry = _language(params, catalog, errors)
    limits = _limits(params, config, errors)
    options_text, options = _words(params.get("compiler_options"), "compiler_options", errors)
    args_text, args = _words(params.get("command_line_arguments"), "command_line_arguments", errors)
    if options and entry is not None and entry.compile_cmd is None:
        errors.setdefault("compiler_options", []).append(
            "setting compiler options is only allowed for compiled languages"
        )
    if _flag(params.get("enable_network")):
        errors.setdefault("enable_network", []).append("enabling network is not allowed")
    extra_files = _additional_files(params, settings, errors)
    if errors or entry is None or source is None:
        raise Unprocessable(errors)
    extras = Extras(
        language_id=entry.id,
        number_of_runs=int(limits.runs) if limits.runs is not None else 1,
        cpu_extra_time=limits.extra if limits.extra is not None else Decimal(0),
        stack_limit=int(limits.stack) if limits.stack is not None else None,
        max_processes=int(limits.processes) if limits.processes is not None else None,
        max_file_size=int(limits.file_size) if limits.file_size is not None else None,
        redirect_stderr_to_stdout=bool(_flag(params.get("redirect_stderr_to_stdout"))),
        compiler_options=options_text,
        command_line_arguments=args_text,
        callback_url=orjson_text(params["callback_url"]) if params.get("callback_url") else None,
        additional_files=bool(extra_files),
    )
    # Text that is not UTF-8 cannot travel in a native JSON string: replaced bytes show as U+FFFD.
    native: dict[str, Any] = {
        "language": entry.language,
        **_sources(entry, source, extra_files),
        "stdin": (_text(params.get("stdin"), base64_encoded) or b"").decode("utf-8", "replace"),
        "args": args,
        "compilerOptions": options,
        **_native_limits(limits),
    }
    expected = _text(params.get("expected_output"), base64_encoded)
    if expected is not None:
        native["expectedOutput"] = expected.decode("utf-8", "replace")
    if extras.number_of_runs > 1:
        # Judge0 runs the program number_of_runs times; the native tests compile it once and run it that often.
        test = {"stdin": native.pop("stdin"), "expectedOutput": native.pop("expectedOutput", None)}
        native["tests"] = [test] * extras.number_of_runs
    return native, extras


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
