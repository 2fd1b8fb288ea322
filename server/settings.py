"""Settings: one frozen dataclass read from the environment and an optional `.env` file."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SettingsError

Parser = Callable[[str], Any]


def _int_range(low: int, high: int | None = None) -> Parser:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise ValueError from None
        if value < low or (high is not None and value > high):
            raise ValueError
        return value

    parse.form = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"  # type: ignore[attr-defined]
    return parse


def _text(raw: str) -> str:
    return raw.strip()


_text.form = "a string"  # type: ignore[attr-defined]


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError


_flag.form = "1/0, true/false, yes/no or on/off"  # type: ignore[attr-defined]


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


_csv.form = "a comma-separated list"  # type: ignore[attr-defined]


def _networks(raw: str) -> tuple[str, ...]:
    parts = _csv(raw)
    for part in parts:
        ipaddress.ip_network(part, strict=False)  # raises ValueError
    return parts


_networks.form = "a comma-separated list of IP addresses or CIDR networks"  # type: ignore[attr-defined]


def _redis_url(raw: str) -> str:
    value = raw.strip()
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError
    return value


_redis_url.form = "a redis://, rediss:// or unix:// URL"  # type: ignore[attr-defined]


def _choice(*options: str) -> Parser:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError
        return value

    parse.form = "one of " + ", ".join(options)  # type: ignore[attr-defined]
    return parse


def _env(name: str, parser: Parser, default: Any) -> Any:
    return field(default=default, metadata={"env": name, "parser": parser})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the server. Each field maps to the environment variable in its metadata."""

    host: str = _env("HOST", _text, "127.0.0.1")
    port: int = _env("PORT", _int_range(0, 65535), 3001)
    log_level: str = _env("LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info")

    # Queue (the seed's numbers)
    max_concurrent_jobs: int = _env("MAX_CONCURRENT_JOBS", _int_range(1, 10_000), 5)
    max_queue_size: int = _env("MAX_QUEUE_SIZE", _int_range(0, 10_000_000), 100)
    job_timeout_ms: int = _env("JOB_TIMEOUT_MS", _int_range(100, 3_600_000), 10_000)
    job_retention_seconds: int = _env("JOB_RETENTION_SECONDS", _int_range(0), 3600)
    job_retention_count: int = _env("JOB_RETENTION_COUNT", _int_range(0), 10_000)
    # Finished jobs kept (code, stdin, output, event log) in MiB, on either backend; the oldest go first.
    job_retention_max_mb: int = _env("JOB_RETENTION_MAX_MB", _int_range(0, 1_048_576), 256)
    max_code_bytes: int = _env("MAX_CODE_BYTES", _int_range(1), 65_536)
    max_stdin_bytes: int = _env("MAX_STDIN_BYTES", _int_range(0), 1_048_576)
    shutdown_grace_ms: int = _env("SHUTDOWN_GRACE_MS", _int_range(0, 600_000), 5000)

    # Sandbox
    sandbox: str = _env("SANDBOX", _choice("bwrap", "none"), "bwrap")
    compile_timeout_ms: int = _env("COMPILE_TIMEOUT_MS", _int_range(100, 600_000), 10_000)
    memory_limit_mb: int = _env("MEMORY_LIMIT_MB", _int_range(16, 65_536), 256)
    cpu_time_limit_s: int = _env("CPU_TIME_LIMIT_S", _int_range(1, 3600), 10)
    max_processes: int = _env("MAX_PROCESSES", _int_range(1, 100_000), 64)
    max_output_bytes: int = _env("MAX_OUTPUT_BYTES", _int_range(1024), 1_048_576)
    max_file_size_mb: int = _env("MAX_FILE_SIZE_MB", _int_range(1, 65_536), 16)
    max_open_files: int = _env("MAX_OPEN_FILES", _int_range(16, 1_048_576), 256)
    workdir_size_mb: int = _env("WORKDIR_SIZE_MB", _int_range(1, 65_536), 64)

    # Rate limiting and API keys
    rate_limit_requests: int = _env("RATE_LIMIT_REQUESTS", _int_range(1), 10)
    rate_limit_window_ms: int = _env("RATE_LIMIT_WINDOW_MS", _int_range(1), 60_000)
    # 0 means "same as RATE_LIMIT_REQUESTS".
    rate_limit_burst: int = _env("RATE_LIMIT_BURST", _int_range(0), 0)
    rate_limit_read_requests: int = _env("RATE_LIMIT_READ_REQUESTS", _int_range(1), 120)
    trusted_proxies: tuple[str, ...] = _env("TRUSTED_PROXIES", _networks, ())
    api_keys_file: str = _env("API_KEYS_FILE", _text, "")

    # WebSocket
    allowed_origins: tuple[str, ...] = _env("ALLOWED_ORIGINS", _csv, ())
    ws_max_message_bytes: int = _env("WS_MAX_MESSAGE_BYTES", _int_range(1024), 262_144)
    ws_max_connections_per_ip: int = _env("WS_MAX_CONNECTIONS_PER_IP", _int_range(1), 32)
    ws_send_queue_size: int = _env("WS_SEND_QUEUE_SIZE", _int_range(16), 1024)
    stats_interval_ms: int = _env("STATS_INTERVAL_MS", _int_range(50), 500)

    # Redis scale-out (empty: embedded in-memory backend)
    redis_url: str = _env("REDIS_URL", _redis_url, "")
    redis_prefix: str = _env("REDIS_PREFIX", _text, "conveyor")
    # 0: this instance serves the API and sockets but executes nothing (a front node).
    worker_slots: int = _env("WORKER_SLOTS", _int_range(0, 10_000), os.cpu_count() or 1)
    lease_timeout_ms: int = _env("LEASE_TIMEOUT_MS", _int_range(1000), 15_000)
    retry_lost_jobs: bool = _env("RETRY_LOST_JOBS", _flag, False)
    # Connections per instance for commands (blocking reads have their own 4): a burst past it waits up to
    # REDIS_TIMEOUT_MS for one, then gets a 503.
    redis_pool_size: int = _env("REDIS_POOL_SIZE", _int_range(2, 10_000), 64)
    # Every Redis command's bound: while Redis is unreachable or stalled, requests get a 503 after this long.
    redis_timeout_ms: int = _env("REDIS_TIMEOUT_MS", _int_range(100, 600_000), 3000)
    # When the shared rate limiter cannot reach Redis: "closed" refuses with 503, "open" lets requests through.
    rate_limit_redis_failure: str = _env("RATE_LIMIT_REDIS_FAILURE", _choice("closed", "open"), "closed")

    @property
    def effective_burst(self) -> int:
        return self.rate_limit_burst or self.rate_limit_requests

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
        """Read settings from `environ` (default: os.environ) over an optional `.env` file.

        Raises SettingsError naming the variable and the expected form on the first invalid value.
        """
        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            values.update(read_env_file(Path(env_file)))
        values.update(os.environ if environ is None else environ)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            # An empty value (`WORKER_SLOTS=` in .env.example) means "use the default".
            if name not in values or not values[name].strip():
                continue
            parser: Parser = f.metadata["parser"]
            try:
                kwargs[f.name] = parser(values[name])
            except ValueError:
                raise SettingsError(
                    f"{name}={values[name]!r} is invalid: expected {parser.form}"  # type: ignore[attr-defined]
                ) from None
        return cls(**kwargs)

    @classmethod
    def env_names(cls) -> list[str]:
        return [f.metadata["env"] for f in dataclasses.fields(cls)]


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines; `#` comments, `export` prefixes and matching quotes are allowed."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export ") :].lstrip()
        key, sep, value = stripped.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{path}:{lineno}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key.strip()] = value
    return out
