"""Payloads: validation of a run submission, shared by `POST /run`, `POST /runs` and the WebSocket `run` message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..callbacks import check_callback_url
from ..errors import BadRequest, PayloadTooLarge
from ..queue.jobs import Job, Limits, Runner, SourceFile, TestCase
from ..sandbox.languages import language_definitions
from ..settings import Settings
from .fields import read_bounded, read_field, refuse_unknown
from .sources import ENCODINGS, sources

MAX_ARGS = 64
MAX_ARG_BYTES = 4096
MAX_COMPILER_OPTIONS = 32
MAX_COMPILER_OPTION_BYTES = 256
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
    refuse_unknown([name for name in data if name not in RUN_FIELDS and name not in envelope], RUN_FIELDS)
    language = _language(data, runner)
    files = sources(data, settings)
    stdin, args, priority, timeout_ms, interactive = _run_options(data, settings, allow_interactive)
    limits = Limits(
        cpu_time_ms=read_bounded(data, "cpuTimeLimitMs", None, settings.cpu_time_limit_s * 1000),
        memory_mb=read_bounded(data, "memoryLimitMb", None, settings.memory_limit_mb),
        compile_timeout_ms=read_bounded(data, "compileTimeoutMs", None, settings.compile_timeout_ms),
    )
    compiler_options = _compiler_options(data, runner, language)
    expected = _expected_output(data, settings)
    tests = _tests(data, settings)
    if tests is not None:
        _refuse_beside_tests(stdin, expected, interactive)
    callback = read_field(data, "callbackUrl", str, default=None)
    encoding = read_field(data, "outputEncoding", str, default="utf8")
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
    stdin = read_field(data, "stdin", str, default="")
    args = read_field(data, "args", list, default=[])
    priority = read_field(data, "priority", int, default=0)
    timeout_ms = read_bounded(data, "timeoutMs", settings.job_timeout_ms, settings.job_timeout_ms)
    interactive = read_field(data, "interactive", bool, default=False) if allow_interactive else False
    if len(stdin.encode("utf-8", "surrogatepass")) > settings.max_stdin_bytes:
        raise PayloadTooLarge(f"stdin is larger than {settings.max_stdin_bytes} bytes.", field="stdin")
    _check_args(args)
    if priority < 0:
        raise BadRequest("priority must be a non-negative integer.", field="priority")
    return stdin, args, priority, timeout_ms, interactive


def _expected_output(data: dict[str, Any], settings: Settings) -> str | None:
    expected: str | None = read_field(data, "expectedOutput", str, default=None)
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


MAX_LANGUAGE_NAME = 64  # longer than any language name or alias; what an error may echo of one


def _language(data: dict[str, Any], runner: Runner) -> str:
    name = read_field(data, "language", str, required=True)
    language = runner.resolve(name) if len(name) <= MAX_LANGUAGE_NAME else None
    if language is None and len(name) > MAX_LANGUAGE_NAME:
        name = name[:MAX_LANGUAGE_NAME] + "..."  # echoed bounded: a 2 MB name was answered back whole
    if language is None:
        valid = sorted({alias for r in runner.runtimes() for alias in [r["language"], *r.get("aliases", [])]})
        raise BadRequest(
            f"Unknown language {name!r}. Valid languages: {', '.join(valid)}.", field="language", valid=valid
        )
    return language


def _check_args(args: list[Any]) -> None:
    if len(args) > MAX_ARGS or not all(isinstance(a, str) and len(a.encode()) <= MAX_ARG_BYTES for a in args):
        raise BadRequest(
            f"args must be a list of at most {MAX_ARGS} strings of at most {MAX_ARG_BYTES} bytes.", field="args"
        )
    if any("\x00" in a for a in args):
        raise BadRequest("args must not contain NUL characters.", field="args")


def _compiler_options(data: dict[str, Any], runner: Runner, language: str) -> list[str]:
    options = read_field(data, "compilerOptions", list, default=[])
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
    items = read_field(data, "tests", list, default=None, kind_name="a list")
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
        refuse_unknown([f"tests[{index}].{name}" for name in item if name not in TEST_FIELDS], TEST_FIELDS)
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
