"""Job records as the Redis backend stores them: a hash of strings per job, the result as JSON."""

from __future__ import annotations

from typing import Any

import orjson

from ..jobs import ExecutionResult, Job, JobStatus


def result_dict(result: ExecutionResult) -> dict[str, Any]:
    """The result as a JSON-ready dict (every field, None included)."""
    return {name: getattr(result, name) for name in ExecutionResult.__slots__}


def job_from_hash(data: dict[str, str]) -> Job:
    """Rebuild a Job from its hash (as read with decode_responses=True)."""

    def number(name: str) -> float | None:
        value = data.get(name)
        return float(value) if value not in (None, "") else None

    result_raw = data.get("result")
    result = None
    if result_raw:
        fields = orjson.loads(result_raw)
        result = ExecutionResult(**{k: v for k, v in fields.items() if k in ExecutionResult.__slots__})
    return Job(
        id=data["id"],
        language=data["language"],
        code=data.get("code", ""),
        stdin=data.get("stdin", ""),
        args=orjson.loads(data.get("args", "[]")),
        priority=int(data.get("priority", 0)),
        owner=data.get("owner", ""),
        timeout_ms=int(data.get("timeout_ms", 0)),
        interactive=data.get("interactive") == "1",
        status=JobStatus(data["status"]),
        created_at=number("created_at") or 0.0,
        started_at=number("started_at"),
        finished_at=number("finished_at"),
        result=result,
        seq=int(data.get("seq", 0)),
    )
