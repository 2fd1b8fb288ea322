"""Job records as the stores keep them: every `Job` field by its dataclass name, the result as one JSON value.

Fields are serialized from the dataclasses themselves, not from a hand-kept list, so a field added to `Job` or
`ExecutionResult` is stored, replicated through Redis and read back without touching this module.
"""

from __future__ import annotations

import dataclasses
from sys import getsizeof
from typing import Any

import orjson

from .jobs import ExecutionResult, Job, JobStatus, Limits, SourceFile, TestCase

# Kept by the stores themselves (status as transitions.py decides it, seq as events are logged; position is computed
# on demand).
_OWN = frozenset({"status", "seq", "position", "result"})
JOB_FIELDS = tuple(f.name for f in dataclasses.fields(Job) if f.name not in _OWN)
RESULT_FIELDS = frozenset(f.name for f in dataclasses.fields(ExecutionResult))
# What a listing never needs of a result: the program's text. The rest (exit code, reason, figures) is a few hundred
# bytes, stored beside the result as `brief` so a page of the dashboard's list never reads anyone's output.
_BULKY = frozenset({"stdout", "stderr", "compile_output", "tests"})
# Fields that are dataclasses themselves: JSON gives them back as dicts (or lists of dicts).
_NESTED: dict[str, Any] = {
    "files": lambda items: None if items is None else [SourceFile(**item) for item in items],
    "limits": lambda item: Limits(**item),
    "tests": lambda items: None if items is None else [TestCase(**item) for item in items],
}


def result_dict(result: ExecutionResult) -> dict[str, Any]:
    """The result as a JSON-ready dict (every field, None included)."""
    return {name: getattr(result, name) for name in RESULT_FIELDS}


def brief_dict(result: ExecutionResult) -> dict[str, Any]:
    """The result without the program's text: what a job listing shows."""
    return {name: getattr(result, name) for name in RESULT_FIELDS - _BULKY}


def result_from(data: dict[str, Any]) -> ExecutionResult:
    """A result from its dict; fields this version does not know are ignored."""
    return ExecutionResult(**{k: v for k, v in data.items() if k in RESULT_FIELDS})


# A job's fields with a plain default, and the rest (required, or a fresh value each: id, created_at).
_DEFAULTS = tuple(
    (f.name, f.default)
    for f in dataclasses.fields(Job)
    if f.name in JOB_FIELDS and f.default is not dataclasses.MISSING
)
_ALWAYS = tuple(name for name in JOB_FIELDS if name not in dict(_DEFAULTS))


def job_to_hash(job: Job) -> dict[str, bytes]:
    """The submission's fields as JSON values, ready for HSET: those at their default are left out, since a
    missing field reads back as its default (`job_from_hash`, and the scripts' `owner` and `interactive`). A job
    sets few of its 20 fields, and each one costs an encoding, two arguments to pack and send, and a hash entry:
    about a sixth of an enqueue's CPU in the producer and some in Redis (docs/benchmarks-redis.md)."""
    fields = {name: orjson.dumps(getattr(job, name)) for name in _ALWAYS}
    for name, default in _DEFAULTS:
        value = getattr(job, name)
        if value is not default and value != default:
            fields[name] = orjson.dumps(value)
    return fields


def job_from_hash(data: dict[str, str]) -> Job:
    """Rebuild a Job from its hash (read with decode_responses=True). Scripts write plain numbers and words for
    the fields they own (status, timestamps, seq): both are valid JSON, except the bare status word."""
    values: dict[str, Any] = {}
    for name in JOB_FIELDS:
        raw = data.get(name)
        if raw not in (None, ""):
            value = orjson.loads(raw)
            values[name] = _NESTED[name](value) if name in _NESTED else value
    result_raw = data.get("result")
    return Job(
        **values,
        status=JobStatus(data["status"]),
        result=result_from(orjson.loads(result_raw)) if result_raw else None,
        seq=int(data.get("seq", 0)),
    )


def listed_job_from_hash(data: dict[str, str | None]) -> Job | None:
    """A job as a listing reads it (HMGET of LISTED_FIELDS): metadata and the brief result, no code or output."""
    present = {name: value for name, value in data.items() if value is not None}
    if not present.get("status"):
        return None
    present["code"] = '""'
    brief = present.pop("brief", None)
    if brief is not None:
        present["result"] = brief
    return job_from_hash(present)


# The hash fields a listing reads: small ones only (never code, stdin or the result with its output).
# `owner` lets a listing keep a caller's own jobs (Judge0's GET /submissions); summary() never shows it.
LISTED_FIELDS = ("id", "language", "priority", "status", "created_at", "started_at", "finished_at", "brief", "owner")


def record_bytes(job: Job) -> int:
    """What a finished job costs to keep, roughly: its text fields (code, stdin, output), for byte retention."""
    result = job.result
    size = len(job.code) + len(job.stdin) + 512
    size += sum(len(f.content) for f in job.files or ()) + sum(len(t.stdin) for t in job.tests or ())
    if result is not None:
        size += len(result.stdout) + len(result.stderr) + len(result.compile_output or "")
        size += sum(len(t.get("stdout", "")) + len(t.get("stderr", "")) + 256 for t in result.tests or ())
    return size


# What a finished job costs in this process beside its strings and event log: the Job, its result, their small
# fields, the store's record and index entries (tracemalloc: about 1 KB since a record holds no input deque when
# finished, 1.8 KB before; tests/test_queue.py checks the sum).
HELD_OVERHEAD = 1024


def held_bytes(job: Job) -> int:
    """What a finished job really costs to keep in this process: its strings as Python stores them (1, 2 or 4 bytes
    a character, whichever the widest character needs, plus the object), for the embedded store's byte retention.
    `record_bytes` counts characters, about what the job's JSON needs at least; this can be 4 times that.
    Short strings are often shared (interned names, the empty string): counted at the object's size anyway."""
    result = job.result
    last = _LAST_SIZED[0]
    if last is not None and last[0] is job and last[1] is result:
        return last[2]
    # Run on every job's end: the optional parts are tested inline rather than through a helper.
    size = HELD_OVERHEAD + getsizeof(job.code) + getsizeof(job.stdin)
    if job.expected_output is not None:
        size += getsizeof(job.expected_output)
    if job.files:
        size += sum(getsizeof(f.content) + getsizeof(f.name) for f in job.files)
    if job.tests:
        size += sum(getsizeof(t.stdin) + _held(t.expected_output) + 128 for t in job.tests)
    if result is not None:
        size += getsizeof(result.stdout) + getsizeof(result.stderr)
        if result.compile_output is not None:
            size += getsizeof(result.compile_output)
        for test in result.tests or ():
            size += getsizeof(test) + sum(getsizeof(v) for v in test.values() if isinstance(v, str))
    _LAST_SIZED[0] = (job, result, size)
    return size


# The last job sized, with its result: a job's end sizes it twice in a row (the store's retention, then the worker's
# jobs finished here), and a finished job's strings no longer change. The job it holds on to is the one the worker
# keeps anyway (Waiters), the newest finished.
_LAST_SIZED: list[tuple[Job, ExecutionResult | None, int] | None] = [None]


def _held(text: str | None) -> int:
    return 0 if text is None else getsizeof(text)
