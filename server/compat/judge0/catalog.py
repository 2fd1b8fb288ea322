"""Judge0's catalog: its ids for the languages the runner offers, its statuses, and its configuration variables
with this server's values."""

from __future__ import annotations

import resource
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...queue.jobs import Runner
from ...sandbox.languages import Language
from ...settings import Settings

JUDGE0_FILE = Path(__file__).with_name("judge0.toml")
VERSION = "1.13.1"


@dataclass(frozen=True, slots=True)
class LanguageEntry:
    id: int
    language: str
    name: str
    source_file: str
    compile_cmd: str | None
    run_cmd: str

    def brief(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name}

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "is_archived": False,
            "source_file": self.source_file,
            "compile_cmd": self.compile_cmd,
            "run_cmd": self.run_cmd,
        }


class Catalog:
    """Judge0's ids for the languages the runner offers, and its statuses."""

    def __init__(self, runner: Runner, languages: dict[str, Language], settings: Settings) -> None:
        with JUDGE0_FILE.open("rb") as f:
            data = tomllib.load(f)
        self.statuses = {int(key): value for key, value in data["statuses"].items()}
        self._rows = data["languages"]
        self._runner = runner
        self._languages = languages
        self._heap_mb = settings.memory_limit_mb // 2

    def offered(self) -> list[LanguageEntry]:
        versions = {r["language"]: r["version"] for r in self._runner.runtimes()}
        entries = []
        for row in self._rows:
            native, language = row["language"], self._languages.get(row["language"])
            if native not in versions or language is None:
                continue
            program = language.program(compiler_options=["%s"])
            compile_argv = language.compile_argv(heap_mb=self._heap_mb, program=program)
            entries.append(
                LanguageEntry(
                    id=row["id"],
                    language=native,
                    name=row["name"].format(version=versions[native]),
                    source_file=language.source,
                    compile_cmd=shlex.join(compile_argv) if compile_argv else None,
                    run_cmd=shlex.join(language.run_argv([], heap_mb=self._heap_mb, program=program)),
                )
            )
        return entries

    def by_id(self, language_id: int) -> LanguageEntry | None:
        return next((e for e in self.offered() if e.id == language_id), None)

    def for_language(self, native: str) -> LanguageEntry | None:
        """The first id of a native language: what a job submitted elsewhere shows as its language."""
        return next((e for e in self.offered() if e.language == native), None)


@dataclass(frozen=True, slots=True)
class Judge0Config:
    """Judge0's configuration variables with this server's real values (`GET /config_info`)."""

    cpu_time_limit: float
    wall_time_limit: float
    memory_limit: int
    stack_limit: int
    max_processes: int
    max_file_size: int
    max_number_of_runs: int
    extract_size: int

    @classmethod
    def of(cls, settings: Settings) -> Judge0Config:
        stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
        return cls(
            cpu_time_limit=float(settings.cpu_time_limit_s),
            wall_time_limit=settings.job_timeout_ms / 1000,
            memory_limit=settings.memory_limit_mb * 1024,
            stack_limit=0 if stack == resource.RLIM_INFINITY else stack // 1024,
            max_processes=settings.max_processes,
            max_file_size=settings.max_file_size_mb * 1024,
            max_number_of_runs=min(20, settings.max_tests),
            extract_size=settings.max_code_bytes // 1024,
        )

    def info(self, settings: Settings) -> dict[str, Any]:
        """Every key of Judge0's Config.config_info. There is no per-run extra CPU time, stack, process or file
        size limit, per-process limit, network or stderr redirection by default; the maxima are the defaults."""
        return {
            "maintenance_mode": False,
            "enable_wait_result": True,
            "enable_compiler_options": True,
            "allowed_languages_for_compile_options": [],
            "enable_command_line_arguments": True,
            "enable_submission_delete": False,
            "enable_callbacks": True,
            "callbacks_max_tries": 1 + settings.callback_retries,
            "callbacks_timeout": settings.callback_timeout_ms / 1000,
            "enable_additional_files": True,
            "max_queue_size": settings.max_queue_size,
            "cpu_time_limit": self.cpu_time_limit,
            "max_cpu_time_limit": self.cpu_time_limit,
            "cpu_extra_time": 0.0,
            "max_cpu_extra_time": 0.0,
            "wall_time_limit": self.wall_time_limit,
            "max_wall_time_limit": self.wall_time_limit,
            "memory_limit": self.memory_limit,
            "max_memory_limit": self.memory_limit,
            "stack_limit": self.stack_limit,
            "max_stack_limit": self.stack_limit,
            "max_processes_and_or_threads": self.max_processes,
            "max_max_processes_and_or_threads": self.max_processes,
            "enable_per_process_and_thread_time_limit": False,
            "allow_enable_per_process_and_thread_time_limit": False,
            "enable_per_process_and_thread_memory_limit": False,
            "allow_enable_per_process_and_thread_memory_limit": False,
            "max_file_size": self.max_file_size,
            "max_max_file_size": self.max_file_size,
            "number_of_runs": 1,
            "max_number_of_runs": self.max_number_of_runs,
            "redirect_stderr_to_stdout": False,
            "max_extract_size": self.extract_size,
            "enable_batched_submissions": True,
            "max_submission_batch_size": settings.max_batch_size,
            "submission_cache_duration": 0.0,
            "use_docs_as_homepage": False,
            "allow_enable_network": False,
            "enable_network": False,
        }
