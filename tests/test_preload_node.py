"""The pre-started node of warm javascript sandboxes (sandbox/helper/preload.js): a job it runs ends as a cold
`node main.js` of the same job does, and only a job it was started for (the same heap flag, entry point and
environment) takes it."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from server.app import create_app
from server.judging.executor import Judge
from server.queue.jobs import ExecutionResult, Job, Limits, SourceFile
from server.sandbox import command, driver
from server.sandbox.languages import load_languages
from server.sandbox.spec import PRELOADS, RunSpec
from tests.conftest import make_settings, scaled_ms
from tests.test_pool import run, until, warm_run

pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.skipif(shutil.which("node") is None, reason="javascript needs node"),
]

# Everything a program can see of how node started it, except what differs between any two runs (pids, times). The
# last line is /proc/self/cmdline, which names the pre-started node's code (what stays visible).
PORTRAIT = r"""
const fs = require('fs');
const Module = require('module');
const show = (name, value) => console.log(name, JSON.stringify(value));
show('argv', [process.argv, process.argv0, process.execArgv, process.execPath, process.title]);
show('main', [require.main === module, process.mainModule === module, module.id, module.filename, module.loaded,
  module.parent, module.paths, __filename, __dirname, module.children.map((m) => m.id)]);
show('cache', [Object.keys(require.cache), Object.keys(Module._pathCache)]);
show('process', Object.getOwnPropertyNames(process).sort());
show('preload', [process._preload_modules, process._eval, process.env.NODE_OPTIONS]);
show('globals', Object.getOwnPropertyNames(globalThis).sort());
show('env', Object.entries(process.env).sort());
show('ids', [process.cwd(), process.getuid(), process.getgid(), process.getgroups(), process.umask()]);
show('heap', require('v8').getHeapStatistics().heap_size_limit);
show('modules', process.moduleLoadList);
show('files', [fs.readdirSync('/').sort(), fs.readdirSync('.').sort(), fs.readdirSync('/tmp')]);
show('events', [process.eventNames(), process.exitCode, process.stdin.isTTY, process.stdout.isTTY]);
show('fds', fs.readdirSync('/proc/self/fd').map(Number).sort((a, b) => a - b));
const pooled = Buffer.allocUnsafe(16);  // Buffer's shared pool: where the program's first small buffer is, and what
show('buffer pool', [pooled.byteOffset, Buffer.from(pooled.buffer, 0, 256).toString('latin1')]);  // the pool holds
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  show('input', input);
  process.stderr.write('to stderr\n');
  process.exitCode = 3;
  show('cmdline', fs.readFileSync('/proc/self/cmdline', 'latin1').split('\0'));
});
"""

UTIL = "exports.where = () => [module.id, module.parent && module.parent.id, require.main.filename, module.paths[0]];\n"

# Each a job's files (the first is the entry point) and its stdin.
ENDINGS: dict[str, tuple[dict[str, str], str]] = {
    "uncaught exception": ({"main.js": "function f() {\n  throw new Error('bad');\n}\nconsole.log(1);\nf();\n"}, ""),
    "a thrown non-error": ({"main.js": "throw 42;\n"}, ""),
    "syntax error": ({"main.js": "console.log('never'\n"}, ""),
    "process.exit": ({"main.js": "console.log('before');\nprocess.exit(42);\nconsole.log('after');\n"}, ""),
    "process.exitCode": ({"main.js": "process.exitCode = 7;\nconsole.log('set');\n"}, ""),
    "unhandled rejection": ({"main.js": "Promise.reject(new Error('late'));\nconsole.log('first');\n"}, ""),
    "uncaughtException handler": (
        {
            "main.js": (
                "process.on('uncaughtException', (e, origin) => { console.log('caught', e.message, origin);"
                " process.exitCode = 5; });\nsetTimeout(() => { throw new Error('timer'); }, 1);\n"
            )
        },
        "",
    ),
    # Within the pipe's 64 KiB: past them node's process.exit drops what the pipe has no room for, cold or warm.
    "exit flushes stdout": (
        {"main.js": "for (let i = 0; i < 60; i++) process.stdout.write('x'.repeat(999) + '\\n');\nprocess.exit(0);\n"},
        "",
    ),
    "stack of the main module": ({"main.js": "console.log(new Error('here').stack);\n"}, ""),
    "crypto and the globals of a module": (
        {
            "main.js": (
                "console.log(typeof crypto, typeof crypto.subtle, crypto === require('crypto'), typeof require,"
                " typeof globalThis.require, typeof globalThis.module, typeof __filename, this === module.exports);\n"
            )
        },
        "",
    ),
    "relative require": (
        {"main.js": "const util = require('./lib/util');\nconsole.log(util.where());\n", "lib/util.js": UTIL},
        "",
    ),
    "an ES module by package.json": (
        {
            "main.js": "import { readFileSync } from 'fs';\nconsole.log(import.meta.url, typeof require);\n",
            "package.json": '{"type": "module"}\n',
        },
        "",
    ),
    "stdin by lines": (
        {
            "main.js": (
                "const rl = require('readline').createInterface({ input: process.stdin });\nlet sum = 0;\n"
                "rl.on('line', (line) => { sum += Number(line); });\n"
                "rl.on('close', () => console.log('sum', sum));\n"
            )
        },
        "1\n2\n39\n",
    ),
    "no input, read at once": (
        {"main.js": "const fs = require('fs');\nconsole.log(fs.fstatSync(0).isFIFO(), fs.readFileSync(0, 'utf8'));\n"},
        "",
    ),
    "input read from /dev/stdin": (
        {
            "main.js": "const [a, b] = require('fs').readFileSync('/dev/stdin', 'utf8').split(' ').map(Number);\n"
            "console.log(a + b);\n"
        },
        "40 2\n",
    ),
    "the order of ticks, promises and timers": (
        {
            "main.js": "setTimeout(() => console.log('timeout'), 20);\n"
            "Promise.resolve().then(() => console.log('promise'));\n"
            "process.nextTick(() => console.log('tick'));\nconsole.log('main');\n"
        },
        "",
    ),
    "killed by a signal": ({"main.js": "console.log('bye');\nprocess.kill(process.pid, 'SIGTERM');\n"}, ""),
    "beforeExit and exit": (
        {
            "main.js": (
                "let once = false;\nprocess.on('beforeExit', (code) => { if (!once) { once = true;"
                " console.log('beforeExit', code); setTimeout(() => console.log('more'), 1); } });\n"
                "process.on('exit', (code) => console.log('exit', code));\n"
            )
        },
        "",
    ),
}

FIELDS = ("stdout", "stderr", "exit_code", "signal", "reason")


def job(files: dict[str, str], stdin: str = "", **kwargs: Any) -> Job:
    sources = [SourceFile(name, text) for name, text in files.items()]
    return Job(language="javascript", code="", files=sources, stdin=stdin, **kwargs)


@pytest.fixture(scope="module")
def cold() -> Iterator[Judge]:
    """Every job starts cold: a fresh `node main.js`."""
    sandbox = asyncio.run(Judge.create(make_settings(warm_pool=0), languages=("javascript",)))
    yield sandbox
    asyncio.run(sandbox.close())


@pytest.fixture(scope="module")
def warm() -> Iterator[Judge]:
    """A pool of javascript sandboxes, each with node started in it."""
    sandbox = asyncio.run(Judge.create(make_settings(warm_pool=2), languages=("javascript",)))
    yield sandbox
    asyncio.run(sandbox.close())


def preloaded(sent: tuple[RunSpec, bytes]) -> bool:
    """Whether the message hands the job to the pre-started node: it ends with node's argv (driver.job_message)."""
    spec, message = sent
    handed = driver.job_message([], {}, [], list(spec.run[1:]))[len(b"0\0" * 3) :]
    return message.endswith(handed)


async def pre_started_run(warm: Judge, job: Job, sent: list[tuple[RunSpec, bytes]]) -> ExecutionResult:
    """The job in a warm sandbox, by its pre-started node."""
    result = await warm_run(warm, job)
    assert sent and preloaded(sent[-1]), "the pre-started node did not run the job"
    return result


async def test_a_pre_started_node_is_seen_as_node_main_js(
    warm: Judge, cold: Judge, messages: list[tuple[RunSpec, bytes]]
) -> None:
    """Arguments, main module, module cache, process and global properties, environment, heap limit, loaded
    modules, files, descriptors, input, output and exit code as a cold start; only /proc/self/cmdline shows it."""
    portrait = job({"main.js": PORTRAIT, "pkg/data.txt": "some data\n"}, "typed\n", args=["a b", "c"])
    want = await run(cold, portrait)
    got = await pre_started_run(warm, portrait, messages)
    assert want.exit_code == 3 and 'input "typed\\n"' in want.stdout, want
    *want_lines, want_cmdline = want.stdout.splitlines()
    *got_lines, got_cmdline = got.stdout.splitlines()
    assert got_lines == want_lines
    assert (got.stderr, got.exit_code, got.reason) == (want.stderr, 3, None)
    cold_argv, warm_argv = json.loads(want_cmdline.split(" ", 1)[1]), json.loads(got_cmdline.split(" ", 1)[1])
    assert cold_argv[0] == "node" and cold_argv[2:] == ["main.js", "a b", "c", ""], cold_argv
    assert warm_argv[:2] == cold_argv[:2] and "--require" in warm_argv, warm_argv


@pytest.mark.parametrize("name", ENDINGS)
async def test_a_pre_started_node_ends_as_node_main_js(
    warm: Judge, cold: Judge, messages: list[tuple[RunSpec, bytes]], name: str
) -> None:
    """Output, uncaught exceptions and rejections (their stacks without the pre-started node's frames), exit codes,
    signals, relative requires and stdin as a cold start."""
    files, stdin = ENDINGS[name]
    want = await run(cold, job(files, stdin))
    got = await pre_started_run(warm, job(files, stdin), messages)
    assert [getattr(got, f) for f in FIELDS] == [getattr(want, f) for f in FIELDS]


async def test_a_pre_started_node_gets_every_argument(
    warm: Judge, cold: Judge, messages: list[tuple[RunSpec, bytes]]
) -> None:
    """Arguments as large as the API allows (64 of 4096 bytes, past what the pre-started node reads at once), UTF-8."""
    args = [f"{i}:" + "é" * 2040 for i in range(64)]
    code = "const a = process.argv.slice(2);\nconsole.log(a.length, a.join('').length, a[63].slice(0, 5));\n"
    echo = job({"main.js": code}, args=args)
    want = await run(cold, echo)
    got = await pre_started_run(warm, echo, messages)
    assert (got.stdout, got.stderr, got.exit_code) == (want.stdout, want.stderr, 0), (got, want)
    assert want.stdout == f"64 {sum(len(a) for a in args)} 63:éé\n", want


# Each a program, its wall time (ms) and why it ends.
LIMITS = {
    "timeout": ("console.log('spin');\nfor (;;) {}\n", 500, "timeout"),
    "heap out of memory": (
        "const keep = [];\nfor (;;) keep.push(new Array(1 << 20).fill(1.5));\n",
        scaled_ms(10_000),
        "memory_limit",
    ),
}


@pytest.mark.parametrize("name", LIMITS)
async def test_a_pre_started_node_meets_the_jobs_limits(
    warm: Judge, cold: Judge, messages: list[tuple[RunSpec, bytes]], name: str
) -> None:
    """Its wall time and heap are the job's: a program past them ends for the same reason as a cold one."""
    code, timeout_ms, reason = LIMITS[name]
    spinning = job({"main.js": code}, timeout_ms=timeout_ms)
    want = await run(cold, spinning)
    got = await pre_started_run(warm, spinning, messages)
    assert (got.reason, got.signal, got.exit_code) == (want.reason, want.signal, want.exit_code), (got, want)
    assert got.reason == reason, got


async def test_only_a_job_with_the_default_heap_takes_the_pre_started_node(
    warm: Judge, cold: Judge, messages: list[tuple[RunSpec, bytes]]
) -> None:
    """A memory limit of its own changes the job's heap flag (half its memory): the driver then runs `node` itself, in
    the same warm sandbox, so the heap limit is the job's either way."""
    heap = {"main.js": "console.log(require('v8').getHeapStatistics().heap_size_limit >> 20);\n"}
    limited = job(heap, limits=Limits(memory_mb=96))
    want = await run(cold, limited)
    got = await warm_run(warm, limited)
    assert messages and not preloaded(messages[-1])
    assert (got.stdout, got.exit_code) == (want.stdout, 0), (got, want)
    default = await pre_started_run(warm, job(heap), messages)
    assert default.stdout != got.stdout and default.exit_code == 0, default


async def test_another_entry_point_runs_in_a_fresh_node(warm: Judge, messages: list[tuple[RunSpec, bytes]]) -> None:
    """The pre-started node was started for main.js: a job whose entry point is another file does not take it."""
    result = await warm_run(warm, job({"app.js": "console.log(require.main === module, __filename);\n"}))
    assert messages and not preloaded(messages[-1])
    assert (result.stdout, result.exit_code) == ("true /box/app.js\n", 0), result


async def test_post_run_with_stdin_through_a_pre_started_node(
    aiohttp_client: Any, warm: Judge, cold: Judge, messages: list[tuple[RunSpec, bytes]]
) -> None:
    """The user's path: POST /run with code, stdin and args gets the same answer warm and cold."""
    code = (
        "let text = '';\nprocess.stdin.on('data', (d) => { text += d; });\n"
        "process.stdin.on('end', () => { console.log(process.argv.slice(2), text.trim().split('\\n').reverse());"
        " if (text.includes('boom')) throw new TypeError('boom'); });\n"
    )
    body = {"language": "javascript", "code": code, "stdin": "one\ntwo\nboom\n", "args": ["x", "y z"]}
    answers = []
    for runner in (cold, warm):
        client = await aiohttp_client(create_app(make_settings(), runner=runner))
        if runner is warm:
            assert warm.sandbox.pool is not None
            demand = await client.post("/run", json={"language": "javascript", "code": "0"})  # demand for javascript
            assert demand.status == 200, await demand.text()
            await until(lambda: warm.pool_status()["languages"].get("javascript", {}).get("ready", 0) > 0)
        async with client.post("/run", json=body) as resp:
            assert resp.status == 200
            answers.append({k: v for k, v in (await resp.json()).items() if k in ("stdout", "stderr", "exitCode")})
    assert messages and preloaded(messages[-1])
    assert answers[1] == answers[0] and answers[0]["exitCode"] == 1, answers
    assert "TypeError: boom" in answers[0]["stderr"], answers


def test_every_pre_started_interpreter_has_its_code() -> None:
    """A language's `preload` names an interpreter whose code sandbox/helper has, by exactly one placeholder, and
    less that code it is how the language's run command begins (so that its jobs can take it)."""
    preloads = {lang.name: lang for lang in load_languages().values() if lang.preload is not None}
    assert {"python", "javascript", "java"} <= set(preloads)
    for name, lang in preloads.items():
        assert lang.preload is not None
        assert lang.preload[0] in PRELOADS, name
        if lang.preload_runs:  # it stands for the run command's first arguments (tests/test_preload_java.py)
            continue
        marks = [part for part in lang.preload if part in (command.PRELOAD_TEXT, command.PRELOAD_FILE)]
        assert len(marks) == 1, name
        started = [part.replace("{heap_mb}", "64") for part in command.without_code(lang.preload)]
        run = lang.run_argv([], heap_mb=64)
        assert run[: len(started)] == started, (name, run, started)
