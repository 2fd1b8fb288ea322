"""A Judge0 submission as Judge0 writes it: its fields, tokens and Ruby's base64, the extras a job keeps, and
the two ways a submission is refused."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ...errors import ConveyorError

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
