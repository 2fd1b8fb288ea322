"""Payloads: validation of a run submission, shared by `POST /run`, `POST /runs` and the WebSocket `run` message."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from ..callbacks import check_callback_url
from ..errors import BadRequest, PayloadTooLarge
from ..queue.jobs import Job, Limits, Runner, SourceFile, TestCase
from ..sandbox.languages import language_definitions
from ..settings import Settings

MAX_ARGS = 64
MAX_ARG_BYTES = 4096
MAX_FILES = 32
MAX_FILE_NAME_BYTES = 255
MAX_PATH_DEPTH = 8
MAX_COMPILER_OPTIONS = 32
MAX_COMPILER_OPTION_BYTES = 256
ENCODINGS = ("utf8", "base64")
# Names the sandbox itself uses at the top of the work dir.
RESERVED_NAMES = frozenset({"tmp"})
# Every field a submission may carry: any other is refused by name (a typo such as `stdn` must not run without input).
RUN_FIELDS = frozenset(
    {
        "language",
        "code",
        "files",
        "main",
        "stdin",
        "args",
        "priority",
        "timeoutMs",
        "interactive",
        "cpuTimeLimitMs",
        "memoryLimitMb",
        "compileTimeoutMs",
        "compilerOptions",
        "expectedOutput",
        "tests",
        "callbackUrl",
        "outputEncoding",
    }
)
FILE_FIELDS = frozenset({"name", "content", "encoding"})
TEST_FIELDS = frozenset({"stdin", "expectedOutput"})


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A validated submission."""

    language: str
    files: list[SourceFile]
    stdin: str
    args: list[str]
    priority: int
    timeout_ms: int
    interactive: bool
    limits: Limits
    compiler_options: list[str]
    expected_output: str | None
    tests: list[TestCase] | None
    callback_url: str | None
    output_encoding: str

    def to_job(self, owner: str) -> Job:
        return Job(
            language=self.language,
            code=self.files[0].text,
            stdin=self.stdin,
            args=self.args,
            priority=self.priority,
            owner=owner,
            timeout_ms=self.timeout_ms,
            interactive=self.interactive,
            files=self.files if len(self.files) > 1 or self.files[0].name else None,
            limits=self.limits,
            compiler_options=self.compiler_options,
            expected_output=self.expected_output,
            tests=self.tests,
            callback_url=self.callback_url,
            output_encoding=self.output_encoding,
        )


def parse_run(
    data: Any,
    settings: Settings,
    runner: Runner,
    *,
    allow_interactive: bool = False,
    envelope: frozenset[str] = frozenset(),
) -> RunRequest:
    """Validate a submission; raises BadRequest naming the field, or PayloadTooLarge for oversized code.
    `envelope`: the fields of the message around it (a WebSocket `run`'s type and requestId)."""
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    _refuse_unknown([name for name in data if name not in RUN_FIELDS and name not in envelope], RUN_FIELDS)
    language = _language(data, runner)
    files = _sources(data, settings)
    stdin, args, priority, timeout_ms, interactive = _run_options(data, settings, allow_interactive)
    limits = Limits(
        cpu_time_ms=_bounded(data, "cpuTimeLimitMs", None, settings.cpu_time_limit_s * 1000),
        memory_mb=_bounded(data, "memoryLimitMb", None, settings.memory_limit_mb),
        compile_timeout_ms=_bounded(data, "compileTimeoutMs", None, settings.compile_timeout_ms),
    )
    compiler_options = _compiler_options(data, runner, language)
    expected = _expected_output(data, settings)
    tests = _tests(data, settings)
    if tests is not None:
        _refuse_beside_tests(stdin, expected, interactive)
    callback = _field(data, "callbackUrl", str, default=None)
    encoding = _field(data, "outputEncoding", str, default="utf8")
    if encoding not in ENCODINGS:
        raise BadRequest("outputEncoding must be utf8 or base64.", field="outputEncoding")
    return RunRequest(
        language,
        files,
        stdin,
        list(args),
        priority,
        timeout_ms,
        interactive,
        limits,
        compiler_options,
        expected,
        tests,
        check_callback_url(callback) if callback is not None else None,
        encoding,
    )


def _run_options(
    data: dict[str, Any], settings: Settings, allow_interactive: bool
) -> tuple[str, list[Any], int, int, bool]:
    """stdin, args, priority, timeoutMs and interactive, each checked."""
    stdin = _field(data, "stdin", str, default="")
    args = _field(data, "args", list, default=[])
    priority = _field(data, "priority", int, default=0)
    timeout_ms = _bounded(data, "timeoutMs", settings.job_timeout_ms, settings.job_timeout_ms)
    interactive = _field(data, "interactive", bool, default=False) if allow_interactive else False
    if len(stdin.encode("utf-8", "surrogatepass")) > settings.max_stdin_bytes:
        raise PayloadTooLarge(f"stdin is larger than {settings.max_stdin_bytes} bytes.", field="stdin")
    _check_args(args)
    if priority < 0:
        raise BadRequest("priority must be a non-negative integer.", field="priority")
    return stdin, args, priority, timeout_ms, interactive


def _expected_output(data: dict[str, Any], settings: Settings) -> str | None:
    expected: str | None = _field(data, "expectedOutput", str, default=None)
    if expected is not None and len(expected.encode("utf-8", "surrogatepass")) > settings.max_output_bytes:
        raise PayloadTooLarge(
            f"expectedOutput is larger than {settings.max_output_bytes} bytes.", field="expectedOutput"
        )
    return expected


def _refuse_beside_tests(stdin: str, expected: str | None, interactive: bool) -> None:
    """With tests, stdin and expectedOutput go in each test, and the run cannot be interactive."""
    for name, given in (("stdin", bool(stdin)), ("expectedOutput", expected is not None)):
        if given:
            raise BadRequest(f"{name} goes in each test when tests are given.", field=name)
    if interactive:
        raise BadRequest("A run with tests cannot be interactive.", field="interactive")


def _refuse_unknown(unknown: list[str], known: frozenset[str]) -> None:
    if unknown:
        shown = ", ".join(repr(name[:64]) for name in unknown[:8])
        raise BadRequest(
            f"Unknown field{'s' if len(unknown) > 1 else ''} {shown}. Known fields: {', '.join(sorted(known))}.",
            field=unknown[0][:64],
            unknown=[name[:64] for name in unknown[:8]],
        )


MAX_LANGUAGE_NAME = 64  # longer than any language name or alias; what an error may echo of one


def _language(data: dict[str, Any], runner: Runner) -> str:
    name = _field(data, "language", str, required=True)
    language = runner.resolve(name) if len(name) <= MAX_LANGUAGE_NAME else None
    if language is None and len(name) > MAX_LANGUAGE_NAME:
        name = name[:MAX_LANGUAGE_NAME] + "..."  # echoed bounded: a 2 MB name was answered back whole
    if language is None:
        valid = sorted({alias for r in runner.runtimes() for alias in [r["language"], *r.get("aliases", [])]})
        raise BadRequest(
            f"Unknown language {name!r}. Valid languages: {', '.join(valid)}.", field="language", valid=valid
        )
    return language


def _sources(data: dict[str, Any], settings: Settings) -> list[SourceFile]:
    """`code` (one file under the language's own name) or `files` (the first, or `main`, is the entry point)."""
    has_code, has_files = data.get("code") is not None, data.get("files") is not None
    if has_code and has_files:
        raise BadRequest("Send code or files, not both.", field="files")
    if not has_files:
        return [_code(data, settings)]
    files = [_source_file(item, index) for index, item in enumerate(_field(data, "files", list, kind_name="a list"))]
    if not 1 <= len(files) <= MAX_FILES:
        raise BadRequest(f"files must hold from 1 to {MAX_FILES} files.", field="files")
    total = sum(f.size for f in files)
    if total > settings.max_code_bytes:
        raise PayloadTooLarge(
            f"files hold {total} bytes; the maximum is {settings.max_code_bytes}.",
            field="files",
            maxBytes=settings.max_code_bytes,
        )
    _check_layout(files)
    _main_first(files, _field(data, "main", str, default=None))
    if not files[0].raw.strip():
        raise BadRequest(f"The entry point {files[0].name!r} is empty.", field="files", file=files[0].name)
    return files


def _code(data: dict[str, Any], settings: Settings) -> SourceFile:
    """The `code` shorthand: one file under the language's own name."""
    code = _field(data, "code", str, required=True)
    size = len(code.encode("utf-8", "surrogatepass"))
    if size > settings.max_code_bytes:
        raise PayloadTooLarge(
            f"code is {size} bytes; the maximum is {settings.max_code_bytes}.",
            field="code",
            maxBytes=settings.max_code_bytes,
        )
    if not code.strip():
        raise BadRequest("code must not be empty.", field="code")
    if data.get("main") is not None:
        raise BadRequest("main names one of files; it does not go with code.", field="main")
    return SourceFile(name="", content=code)


def _main_first(files: list[SourceFile], main: str | None) -> None:
    """Move the file `main` names to the front: the entry point."""
    if main is not None:
        chosen = [f for f in files if f.name == main]
        if not chosen:
            raise BadRequest(f"main names {main!r}, which is not one of files.", field="main")
        files.remove(chosen[0])
        files.insert(0, chosen[0])


def _source_file(item: Any, index: int) -> SourceFile:
    where = f"files[{index}]"
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object with name and content.", field="files", index=index)
    _refuse_unknown([f"{where}.{name}" for name in item if name not in FILE_FIELDS], FILE_FIELDS)
    name, content, encoding = item.get("name"), item.get("content"), item.get("encoding", "utf8")
    if not isinstance(name, str) or not isinstance(content, str):
        raise BadRequest(f"{where} needs a name and a content, both strings.", field="files", index=index)
    reason = _bad_name(name)
    if reason is not None:
        raise BadRequest(f"{where}: the name {name!r} {reason}.", field="files", file=name, index=index)
    if encoding not in ENCODINGS:
        raise BadRequest(f"{where}: encoding must be utf8 or base64.", field="files", file=name, index=index)
    if encoding == "base64":
        try:
            base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{where}: content is not valid base64.", field="files", file=name, index=index) from None
    return SourceFile(name=name, content=content, encoding=encoding)


def _bad_name(name: str) -> str | None:
    """Why a file name cannot be used, or None: relative paths inside the work dir only."""
    if not name or len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
        return f"must be 1 to {MAX_FILE_NAME_BYTES} bytes"
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or "\\" in name:
        return "must not contain control characters or backslashes"
    if name.startswith("/"):
        return "must be a relative path"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "must not contain empty, . or .. components"
    if len(parts) > MAX_PATH_DEPTH:
        return f"must be at most {MAX_PATH_DEPTH} directories deep"
    if parts[0] in RESERVED_NAMES or parts[0].startswith("."):
        return "is reserved"
    return None


def _check_layout(files: list[SourceFile]) -> None:
    """No two files with one name, and no file where another needs a directory (`a` and `a/b`)."""
    names = {f.name for f in files}
    if len(names) != len(files):
        twice = next(f.name for f in files if [g.name for g in files].count(f.name) > 1)
        raise BadRequest(f"files names {twice!r} more than once.", field="files", file=twice)
    for f in files:
        parts = f.name.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in names:
                raise BadRequest(
                    f"{f.name!r} needs {parts[depth - 1]!r} to be a directory.", field="files", file=f.name
                )


def _check_args(args: list[Any]) -> None:
    if len(args) > MAX_ARGS or not all(isinstance(a, str) and len(a.encode()) <= MAX_ARG_BYTES for a in args):
        raise BadRequest(
            f"args must be a list of at most {MAX_ARGS} strings of at most {MAX_ARG_BYTES} bytes.", field="args"
        )
    if any("\x00" in a for a in args):
        raise BadRequest("args must not contain NUL characters.", field="args")


def _bounded(data: dict[str, Any], name: str, default: int | None, maximum: int) -> Any:
    value = _field(data, name, int, default=default)
    if value is not None and not 1 <= value <= maximum:
        raise BadRequest(f"{name} must be an integer from 1 to {maximum}.", field=name, max=maximum)
    return value


def _compiler_options(data: dict[str, Any], runner: Runner, language: str) -> list[str]:
    options = _field(data, "compilerOptions", list, default=[])
    if not options:
        return []
    if not any(r["language"] == language and r.get("compiled") for r in runner.runtimes()):
        raise BadRequest(f"{language} has no compile stage for compilerOptions.", field="compilerOptions")
    ok = all(
        isinstance(o, str) and 0 < len(o.encode()) <= MAX_COMPILER_OPTION_BYTES and "\x00" not in o for o in options
    )
    if len(options) > MAX_COMPILER_OPTIONS or not ok:
        raise BadRequest(
            f"compilerOptions must be a list of at most {MAX_COMPILER_OPTIONS} non-empty strings of at most "
            f"{MAX_COMPILER_OPTION_BYTES} bytes, without NUL.",
            field="compilerOptions",
        )
    # An allowlist per toolchain (languages.toml): driver options that run programs, plugins or files would run
    # the submitter's code in the compile stage, outside the run's limits.
    definition = language_definitions().get(language)
    refused = definition.refused_compiler_option(options) if definition is not None else options[0]
    if refused is not None:
        raise BadRequest(
            f"The compiler option {refused[:80]!r} is not allowed for {language}: compilerOptions may only change "
            "how the sources are compiled (optimisation, standard, warnings, macros, libraries, target), never "
            "name programs, plugins, specs or files outside the work dir.",
            field="compilerOptions",
            option=refused[:80],
        )
    return list(options)


def _tests(data: dict[str, Any], settings: Settings) -> list[TestCase] | None:
    items = _field(data, "tests", list, default=None, kind_name="a list")
    if items is None:
        return None
    if not 1 <= len(items) <= settings.max_tests:
        raise BadRequest(
            f"tests must hold from 1 to {settings.max_tests} tests.", field="tests", max=settings.max_tests
        )
    tests = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRequest(f"tests[{index}] must be an object.", field="tests", index=index)
        _refuse_unknown([f"tests[{index}].{name}" for name in item if name not in TEST_FIELDS], TEST_FIELDS)
        stdin, expected = item.get("stdin", ""), item.get("expectedOutput")
        if not isinstance(stdin, str) or not isinstance(expected, str | None):
            raise BadRequest(f"tests[{index}]: stdin and expectedOutput must be strings.", field="tests", index=index)
        if len(stdin.encode("utf-8", "surrogatepass")) > settings.max_stdin_bytes:
            raise PayloadTooLarge(
                f"tests[{index}].stdin is larger than {settings.max_stdin_bytes} bytes.", field="tests"
            )
        if expected is not None and len(expected.encode("utf-8", "surrogatepass")) > settings.max_output_bytes:
            raise PayloadTooLarge(
                f"tests[{index}].expectedOutput is larger than {settings.max_output_bytes} bytes.", field="tests"
            )
        tests.append(TestCase(stdin=stdin, expected_output=expected))
    return tests


_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list of strings", bool: "a boolean"}


def _field(
    data: dict[str, Any],
    name: str,
    kind: type,
    *,
    required: bool = False,
    default: Any = None,
    kind_name: str | None = None,
) -> Any:
    if name not in data or data[name] is None:
        if required:
            raise BadRequest(f"{name} is required.", field=name)
        return default
    value = data[name]
    # bool is a subclass of int: `"priority": true` is a type error, not priority 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"{name} must be {kind_name or _TYPE_NAMES[kind]}.", field=name)
    return value
