"""Judge: what a judge makes of a job's runs: a verdict, and tests that share one compile."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from ..queue.jobs import Job
from ..sandbox.contract import ExecutionResult, JobIO, Request
from ..sandbox.runner import Sandbox
from .verdicts import Verdict, verdict_of

# A per-test event carries at most this much of each output stream (the whole of it is in the job).
EVENT_OUTPUT_CHARS = 16 * 1024
# An interpreted language's tests have no compile stage: no compile figures.
_NOT_COMPILED = ExecutionResult()
_NOT_RUN = ExecutionResult()  # a test of a program that did not compile


def request_of(job: Job) -> Request:
    """What the sandbox runs for a job: its program and per-run limits."""
    return Request(
        name=job.id,
        language=job.language,
        code=job.code,
        files=tuple(job.files) if job.files else None,
        args=tuple(job.args),
        compiler_options=tuple(job.compiler_options),
        interactive=job.interactive,
        timeout_ms=job.timeout_ms,
        limits=job.limits,
        owner=job.owner,
        output_encoding=job.output_encoding,
    )


async def judge(sandbox: Sandbox, job: Job, io: JobIO) -> ExecutionResult:
    """Run the job in the sandbox: once, or once per test after one compile; every result gets its verdict."""
    request = request_of(job)
    if job.tests is None:
        return await _run_once(sandbox, request, job, io)
    build = None
    if sandbox.compiles(job.language):
        build = await sandbox.build(request)
        if build.artifact is None:  # did not compile: every test has that verdict
            result = build.result
            result.verdict = _verdict(result, None, job.output_encoding)
            result.tests = [_entry(index, job, None, result.verdict) for index in range(len(job.tests))]
            return result
    entries: list[dict[str, Any]] = []
    for index, test in enumerate(job.tests):
        run = await sandbox.run(request, None, stdin=test.stdin.encode(), build=build)
        entries.append(_entry(index, job, run, _verdict(run, test.expected_output, job.output_encoding)))
        if io.on_event is not None:
            io.on_event(_event(entries[-1]))
    return _summary(entries, build.result if build is not None else _NOT_COMPILED)


def _summary(entries: list[dict[str, Any]], compiled: ExecutionResult) -> ExecutionResult:
    """The job's result over its tests: the first verdict not accepted, the compile's figures once, each test's run
    time and CPU time summed, the highest memory peak."""
    verdicts = [entry["verdict"] for entry in entries]
    return ExecutionResult(
        exit_code=0,
        tests=entries,
        verdict=next((v for v in verdicts if v != Verdict.ACCEPTED.value), Verdict.ACCEPTED.value),
        compile_output=compiled.compile_output,
        compile_time_ms=compiled.compile_time_ms,
        compile_cached=compiled.compile_cached,
        compile_cpu_time_ms=compiled.compile_cpu_time_ms,
        compile_memory_peak_bytes=compiled.compile_memory_peak_bytes,
        run_time_ms=sum(entry["timeMs"] or 0.0 for entry in entries),
        cpu_time_ms=_total(entry["cpuTimeMs"] for entry in entries),
        memory_peak_bytes=max((entry["memoryPeakBytes"] or 0 for entry in entries), default=None) or None,
    )


async def _run_once(sandbox: Sandbox, request: Request, job: Job, io: JobIO) -> ExecutionResult:
    """One run: compiled in its own sandbox, or (with the build cache) built or fetched first and run from that."""
    build = await sandbox.build(request) if sandbox.caches(job.language) else None
    if build is not None and build.artifact is None:
        result = build.result
    else:
        result = await sandbox.run(request, io, stdin=job.stdin.encode(), build=build)
    if build is not None and build.artifact is not None:
        compiled = build.result
        result.compile_output, result.compile_time_ms = compiled.compile_output, compiled.compile_time_ms
        result.compile_cpu_time_ms = compiled.compile_cpu_time_ms
        result.compile_memory_peak_bytes = compiled.compile_memory_peak_bytes
        result.compile_cached = compiled.compile_cached
    result.verdict = _verdict(result, job.expected_output, job.output_encoding)
    return result


def _total(values: Iterable[float | None]) -> float | None:
    """The sum, or None when no run reported a figure (no cgroups)."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _verdict(result: ExecutionResult, expected: str | None, encoding: str) -> str:
    stdout = result.stdout
    if encoding == "base64" and expected is not None:
        stdout = base64.b64decode(stdout).decode(errors="replace")
    return verdict_of(result.reason, result.exit_code, stdout, expected).value


def _entry(index: int, job: Job, run: ExecutionResult | None, verdict: str) -> dict[str, Any]:
    """One test's inputs and result, as the job's `tests` shows them (a test that never ran: no output, no figures)."""
    assert job.tests is not None
    test = job.tests[index]
    ran = run if run is not None else _NOT_RUN
    return {
        "index": index,
        "stdin": test.stdin,
        "expectedOutput": test.expected_output,
        "verdict": verdict,
        "stdout": ran.stdout,
        "stderr": ran.stderr,
        "exitCode": ran.exit_code,
        "signal": ran.signal,
        "reason": ran.reason,
        "truncated": ran.truncated,
        "stdoutLossy": ran.stdout_lossy,
        "timeMs": round(ran.run_time_ms, 1) if ran.run_time_ms is not None else None,
        "cpuTimeMs": ran.usage()["cpuTimeMs"],
        "memoryPeakBytes": ran.memory_peak_bytes,
    }


def _event(entry: dict[str, Any]) -> dict[str, Any]:
    """The WebSocket `test` event: the entry without its inputs, outputs cut to a preview."""
    event = {key: value for key, value in entry.items() if key not in ("stdin", "expectedOutput")}
    for stream in ("stdout", "stderr"):
        event[stream] = entry[stream][:EVENT_OUTPUT_CHARS]
    return {"type": "test", **event}
