"""A job as Judge0 shows a submission: its attributes, the requested fields, text as UTF-8 or Ruby's base64."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import Any

from ...queue.jobs import Job
from .attributes import TEXT_FIELDS, Extras, Unconvertible, ruby_encode64, token_of
from .catalog import Catalog, Judge0Config, LanguageEntry
from .status import Outcome, decimal_text, outcome


def serialize(
    job: Job, fields: Iterable[str], base64_encoded: bool, *, catalog: Catalog, config: Judge0Config
) -> dict[str, Any]:
    """The submission's requested attributes; raises Unconvertible for text that is not UTF-8 in text mode."""
    extras = Extras.from_json(job.dialect)
    found = outcome(job, extras)
    entry = catalog.by_id(extras.language_id) if extras.language_id else catalog.for_language(job.language)
    values = {
        **_attributes(job, found, extras, entry, catalog),
        **_limits(job, extras, config),
        **_commands(job, extras),
    }
    texts = _texts(job, found)
    out: dict[str, Any] = {}
    for name in fields:
        if name in TEXT_FIELDS:
            lossy = found.lossy and name in ("stdout", "stderr")
            out[name] = _text_value(texts[name], base64_encoded, lossy)
        elif name == "message" and base64_encoded and found.message is not None:
            out[name] = ruby_encode64(found.message.encode())
        else:
            out[name] = values[name]
    return out


def _attributes(
    job: Job, found: Outcome, extras: Extras, entry: LanguageEntry | None, catalog: Catalog
) -> dict[str, Any]:
    """What the run came to, and the submission's identity."""
    summary = job.summary()
    return {
        "language_id": entry.id if entry else None,
        "status_id": found.status,
        "created_at": summary["createdAt"],
        "finished_at": summary["finishedAt"],
        "time": decimal_text(found.time),
        "memory": int(found.memory) if found.memory is not None else None,
        "token": token_of(job.id),
        "number_of_runs": len(job.tests) if job.tests else extras.number_of_runs,
        "exit_code": found.exit_code,
        "exit_signal": found.exit_signal,
        "message": found.message,
        "wall_time": decimal_text(found.wall_time),
        "status": {"id": found.status, "description": catalog.statuses[found.status]},
        "language": entry.brief() if entry else None,
    }


def _limits(job: Job, extras: Extras, config: Judge0Config) -> dict[str, Any]:
    """The limits the submission ran under: the ones it asked for, else Judge0's defaults as configured."""
    return {
        "cpu_time_limit": decimal_text((job.limits.cpu_time_ms or config.cpu_time_limit * 1000) / 1000),
        "cpu_extra_time": decimal_text(extras.cpu_extra_time),
        "wall_time_limit": decimal_text(job.timeout_ms / 1000),
        "memory_limit": job.limits.memory_mb * 1024 if job.limits.memory_mb else config.memory_limit,
        "stack_limit": extras.stack_limit if extras.stack_limit is not None else config.stack_limit,
        "max_processes_and_or_threads": extras.max_processes or config.max_processes,
        "enable_per_process_and_thread_time_limit": False,
        "enable_per_process_and_thread_memory_limit": False,
        "max_file_size": extras.max_file_size if extras.max_file_size is not None else config.max_file_size,
    }


def _commands(job: Job, extras: Extras) -> dict[str, Any]:
    """How the submission asked to be compiled, run and called back."""
    return {
        "compiler_options": extras.compiler_options or (" ".join(job.compiler_options) or None),
        "command_line_arguments": extras.command_line_arguments or (shlex.join(job.args) or None),
        "redirect_stderr_to_stdout": extras.redirect_stderr_to_stdout,
        "callback_url": extras.callback_url,
        "additional_files": None,
        "enable_network": False,
    }


def _texts(job: Job, found: Outcome) -> dict[str, bytes | str | None]:
    test = job.tests[0] if job.tests else None
    return {
        "source_code": job.files[0].raw if job.files else job.code.encode(),
        "stdin": test.stdin if test else job.stdin,
        "expected_output": test.expected_output if test else job.expected_output,
        "stdout": found.stdout,
        "stderr": found.stderr,
        "compile_output": found.compile_output,
    }


def _text_value(value: bytes | str | None, base64_encoded: bool, lossy: bool) -> str | None:
    if value is None:
        return None
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    if base64_encoded:
        return ruby_encode64(raw)
    if lossy:
        raise Unconvertible
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Unconvertible from None
