"""Every language's matrix, data-driven from sandbox/languages.toml and tests/languages/<name>.toml: hello, stdin, exit
code, compile error, runtime error, the memory limit and a contained fork bomb, each case in its own sandbox."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.judging.executor import Judge
from server.queue.jobs import ExecutionResult, Job, JobIO, SourceFile
from server.sandbox.languages import Language, load_languages
from server.settings import Settings
from tests.test_sandbox_security import job_cgroups, wait_until_gone

PROGRAMS = Path(__file__).with_name("languages")
LANGUAGES = load_languages()
# What every language's file holds; compile_error only for compiled languages. A case that cannot be written in a
# language is named under [skip] with the reason (SQL cannot set an exit code, say).
CASES = ("echo", "exit_code", "compile_error", "runtime_error", "memory_hog", "fork_bomb")
ECHO_INPUT = "conveyor 42\n"
# A runtime error's output names what went wrong: the programs fail with the word "boom" unless [says] tells
# otherwise (a segfault says nothing).
BOOM = "boom"
# Room for the slowest compilers (kotlinc, scalac, crystal) while every case of a language compiles at once on a
# busy two-core machine; a fork bomb is stopped by the wall time, so its own is short.
SETTINGS = Settings(
    job_timeout_ms=20_000,
    compile_timeout_ms=120_000,
    memory_limit_mb=256,
    max_processes=64,
    max_output_bytes=64 * 1024,
    cache_max_mb=0,
    warm_pool=0,
)
FORK_BOMB_TIMEOUT_MS = 4000
# The languages `make run` installs (.ci/system-packages run): their matrix runs in `make test` too.
QUICK = {"python", "javascript", "bash", "c", "cpp", "java", "rust", "perl"}


@dataclasses.dataclass(frozen=True)
class Programs:
    """One language's test programs, the cases it skips (with why) and what its runtime errors say."""

    cases: dict[str, str]
    skip: dict[str, str]
    says: str

    @classmethod
    def load(cls, name: str) -> Programs:
        with (PROGRAMS / f"{name}.toml").open("rb") as f:
            data = tomllib.load(f)
        skip, says = data.pop("skip", {}), data.pop("says", BOOM)
        return cls(cases=data, skip=skip, says=says)


def expected_cases(language: Language) -> list[str]:
    return [case for case in CASES if case != "compile_error" or language.compile is not None]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Judge]:
    box = asyncio.run(Judge.create(SETTINGS))
    yield box
    asyncio.run(box.close())


def test_every_language_has_its_programs() -> None:
    """A language added to languages.toml brings its starter and a program (or a reason to skip) for every case."""
    problems = []
    for name, language in sorted(LANGUAGES.items()):
        if name == "executable":
            continue  # its programs are binaries: tests/test_judge0.py runs one
        if not language.hello.strip() or not language.display or not language.packages:
            problems.append(f"{name}: display, packages or hello missing in languages.toml")
        if not (PROGRAMS / f"{name}.toml").is_file():
            problems.append(f"{name}: no tests/languages/{name}.toml")
            continue
        programs = Programs.load(name)
        for case in expected_cases(language):
            if case not in programs.cases and not programs.skip.get(case):
                problems.append(f"{name}: no {case} program and no reason to skip it")
        unknown = set(programs.cases) - set(CASES)
        if unknown:
            problems.append(f"{name}: unknown cases {sorted(unknown)}")
    assert problems == []


async def run(sandbox: Judge, language: str, code: str, **fields: Any) -> tuple[Job, ExecutionResult, float]:
    fields.setdefault("timeout_ms", SETTINGS.job_timeout_ms)
    job = Job(language=language, code=code, **fields)
    started = time.monotonic()
    result = await sandbox(job, JobIO(on_output=lambda stream, text: None))
    return job, result, time.monotonic() - started


def check(case: str, programs: Programs, job: Job, result: ExecutionResult, took: float) -> str:
    """What is wrong with one case's result, or an empty string."""
    said = f"{result.reason} exit={result.exit_code} signal={result.signal}"
    detail = f"{said} stdout={result.stdout[-300:]!r} stderr={result.stderr[-300:]!r} compile={result.compile_output!r}"
    if case in ("hello", "echo"):
        expected = "Hello, world!\n" if case == "hello" else ECHO_INPUT
        if (result.reason, result.exit_code, result.stdout) != (None, 0, expected):
            return f"{case}: {detail} compile={(result.compile_output or '')[-300:]!r}"
    elif case == "exit_code":
        if (result.reason, result.exit_code, result.signal) not in ((None, 3, None), ("runtime_error", 3, None)):
            return f"{case}: {detail}"
    elif case == "compile_error":
        if result.reason != "compile_error" or not (result.compile_output or "").strip():
            return f"{case}: {detail} compile={result.compile_output!r}"
    elif case == "runtime_error":
        failed = result.reason in (None, "runtime_error", "signal") and (result.exit_code or result.signal)
        if not failed or programs.says not in result.stderr + result.stdout:
            return f"{case}: {detail}"
    elif case == "memory_hog":
        if result.reason != "memory_limit":
            return f"{case}: {detail}"
    elif case == "fork_bomb":
        if took > (FORK_BOMB_TIMEOUT_MS + SETTINGS.compile_timeout_ms) / 1000 or result.reason == "internal_error":
            return f"{case}: took {took:.1f} s, {detail}"
    return ""


def matrix_params(names: Iterable[str]) -> list[Any]:
    """The languages as parameters: those `make run` installs run in `make test`, the rest under the `languages`
    marker (`make test-languages`)."""
    return [pytest.param(n, marks=() if n in QUICK else pytest.mark.languages) for n in sorted(names)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", matrix_params(set(LANGUAGES) - {"executable"}))
async def test_language_matrix(sandbox: Judge, name: str) -> None:
    """Every case of one language at once, each in a fresh sandbox: what it prints, its exit, its failures."""
    language = LANGUAGES[name]
    if sandbox.resolve(name) is None:
        pytest.skip(f"{name} is not installed here (python -m server languages install {name})")
    programs = Programs.load(name)
    cases = {"hello": language.hello, **{c: programs.cases[c] for c in expected_cases(language) if c in programs.cases}}
    fields: dict[str, dict[str, Any]] = {
        "echo": {"stdin": ECHO_INPUT},
        "fork_bomb": {"timeout_ms": FORK_BOMB_TIMEOUT_MS},
    }
    runs = await asyncio.gather(*(run(sandbox, name, code, **fields.get(case, {})) for case, code in cases.items()))
    problems = [check(case, programs, *ran) for case, ran in zip(cases, runs, strict=True)]
    for job, _, _ in runs:
        await wait_until_gone(functools.partial(job_cgroups, job.id))
    assert [p for p in problems if p] == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # Piston's clients send main.java (or any name) holding the class they wrote, as its single-file launcher runs.
        ([("main.java", "public class HelloWorld { public static void main(String[] a) { Util.hi(); } }")], "hi\n"),
        ([("Main.java", "public class Main { public static void main(String[] a) { Util.hi(); } }")], "hi\n"),
        (
            [
                (
                    "app/main.java",
                    "package app;\npublic final class Hello {\n  public static void main(String[] a) {\n"
                    "    System.out.println(a[0]);\n  }\n}\n",
                )
            ],
            "x\n",
        ),
    ],
)
async def test_java_public_class_in_any_file_name(sandbox: Judge, files: list[tuple[str, str]], expected: str) -> None:
    util = ("Util.java", 'class Util { static void hi() { System.out.println("hi"); } }')
    job = Job(
        language="java",
        code="",
        files=[SourceFile(name, text) for name, text in [*files, util]],
        args=["x"],
        timeout_ms=SETTINGS.job_timeout_ms,
    )
    result = await sandbox(job, JobIO(on_output=lambda stream, text: None))
    assert (result.reason, result.exit_code, result.stdout) == (None, 0, expected), result
