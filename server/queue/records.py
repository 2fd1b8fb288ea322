"""Job records as the stores keep them: every `Job` field by its dataclass name, the result as one JSON value.

Fields are serialized from the dataclasses themselves, not from a hand-kept list, so a field added to `Job` or
`ExecutionResult` is stored, replicated through Redis and read back without touching this module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from ..jobs import ExecutionResult, Job, JobStatus, Limits, SourceFile, TestCase

# Kept by the stores themselves (status and seq change inside Lua scripts; position is computed on demand).
_OWN = frozenset({"status", "seq", "position", "result"})
JOB_FIELDS = tuple(f.name for f in dataclasses.fields(Job) if f.name not in _OWN)
RESULT_FIELDS = frozenset(f.name for f in dataclasses.fields(ExecutionResult))
# Fields that are dataclasses themselves: JSON gives them back as dicts (or lists of dicts).
_NESTED: dict[str, Any] = {
    "files": lambda items: None if items is None else [SourceFile(**item) for item in items],
    "limits": lambda item: Limits(**item),
    "tests": lambda items: None if items is None else [TestCase(**item) for item in items],
}


def result_dict(result: ExecutionResult) -> dict[str, Any]:
    """The result as a JSON-ready dict (every field, None included)."""
    return {name: getattr(result, name) for name in RESULT_FIELDS}


def result_from(data: dict[str, Any]) -> ExecutionResult:
    """A result from its dict; fields this version does not know are ignored."""
    return ExecutionResult(**{k: v for k, v in data.items() if k in RESULT_FIELDS})


def job_to_hash(job: Job) -> dict[str, bytes]:
    """Every submission field as a JSON value, ready for HSET."""
    return {name: orjson.dumps(getattr(job, name)) for name in JOB_FIELDS}


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


def record_bytes(job: Job) -> int:
    """What a finished job costs to keep, roughly: its text fields (code, stdin, output), for byte retention."""
    result = job.result
    size = len(job.code) + len(job.stdin) + 512
    size += sum(len(f.content) for f in job.files or ()) + sum(len(t.stdin) for t in job.tests or ())
    if result is not None:
        size += len(result.stdout) + len(result.stderr) + len(result.compile_output or "")
        size += sum(len(t.get("stdout", "")) + len(t.get("stderr", "")) + 256 for t in result.tests or ())
    return size
