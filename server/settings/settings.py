"""The settings: one frozen dataclass, each field read from the environment variable its metadata names."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .environment import parse_fields, read_environment
from .help import HELP
from .parsers import Parser, choice, csv, flag, int_range, networks, redis_url, text


def env(name: str, parser: Parser, default: Any) -> Any:
    """A setting read from the environment variable `name`; its meaning (help.HELP) is shown by `--help` and README."""
    return field(default=default, metadata={"env": name, "parser": parser, "doc": HELP[name]})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the server. Each field maps to the environment variable in its metadata."""

    host: str = env("HOST", text, "127.0.0.1")
    port: int = env("PORT", int_range(0, 65535), 3001)
    log_level: str = env("LOG_LEVEL", choice("debug", "info", "warning", "error"), "info")

    # Queue (the seed's numbers)
    max_concurrent_jobs: int = env("MAX_CONCURRENT_JOBS", int_range(1, 10_000), 5)
    max_queue_size: int = env("MAX_QUEUE_SIZE", int_range(0, 10_000_000), 100)
    job_timeout_ms: int = env("JOB_TIMEOUT_MS", int_range(100, 3_600_000), 10_000)
    # A day: a share link (`/?job=<id>`) pasted into a chat or a course page should still answer tomorrow.
    job_retention_seconds: int = env("JOB_RETENTION_SECONDS", int_range(0), 86_400)
    job_retention_count: int = env("JOB_RETENTION_COUNT", int_range(0), 10_000)
    # Finished jobs kept (code, stdin, output, event log) in MiB, on either backend; the oldest go first.
    job_retention_max_mb: int = env("JOB_RETENTION_MAX_MB", int_range(0, 1_048_576), 256)
    max_code_bytes: int = env("MAX_CODE_BYTES", int_range(1), 65_536)
    max_stdin_bytes: int = env("MAX_STDIN_BYTES", int_range(0), 1_048_576)
    shutdown_grace_ms: int = env("SHUTDOWN_GRACE_MS", int_range(0, 600_000), 5000)

    # Sandbox
    sandbox: str = env("SANDBOX", choice("bwrap", "none"), "bwrap")
    # Empty: every language of languages.toml whose toolchain works here (each probed at start-up).
    languages: tuple[str, ...] = env("LANGUAGES", csv, ())
    compile_timeout_ms: int = env("COMPILE_TIMEOUT_MS", int_range(100, 600_000), 10_000)
    memory_limit_mb: int = env("MEMORY_LIMIT_MB", int_range(16, 65_536), 256)
    cpu_time_limit_s: int = env("CPU_TIME_LIMIT_S", int_range(1, 3600), 10)
    max_processes: int = env("MAX_PROCESSES", int_range(1, 100_000), 64)
    max_output_bytes: int = env("MAX_OUTPUT_BYTES", int_range(1024), 1_048_576)
    max_file_size_mb: int = env("MAX_FILE_SIZE_MB", int_range(1, 65_536), 16)
    max_open_files: int = env("MAX_OPEN_FILES", int_range(16, 1_048_576), 256)
    workdir_size_mb: int = env("WORKDIR_SIZE_MB", int_range(1, 65_536), 64)
    # Build cache (docs/cache.md)
    cache_dir: str = env("CACHE_DIR", text, "")
    cache_max_mb: int = env("CACHE_MAX_MB", int_range(0, 1_048_576), 512)
    warm_pool: int = env("WARM_POOL", int_range(0, 64), 12)
    packages_file: str = env("PACKAGES_FILE", text, "")
    cgroup_manager: str = env("CGROUP_MANAGER", choice("auto", "systemd", "cgroupfs"), "auto")
    # The range, SANDBOX_UIDS at most, ends below (uid_t)-1.
    sandbox_uid_base: int = env("SANDBOX_UID_BASE", int_range(1, 4_294_967_294 - (1 << 24)), 2_000_000_000)
    sandbox_uids: int = env("SANDBOX_UIDS", int_range(0, 1 << 24), 65_536)
    # Without a memory cgroup the server refuses to start unless this accepts per-process limits.
    allow_per_process_limits: bool = env("ALLOW_PER_PROCESS_LIMITS", flag, False)

    # Rate limiting and API keys
    rate_limit_requests: int = env("RATE_LIMIT_REQUESTS", int_range(1), 10)
    rate_limit_window_ms: int = env("RATE_LIMIT_WINDOW_MS", int_range(1), 60_000)
    # 0 means "same as RATE_LIMIT_REQUESTS".
    rate_limit_burst: int = env("RATE_LIMIT_BURST", int_range(0), 0)
    rate_limit_read_requests: int = env("RATE_LIMIT_READ_REQUESTS", int_range(1), 120)
    submit_token_slot_seconds: int = env("SUBMIT_TOKEN_SLOT_SECONDS", int_range(1, 86_400), 60)
    trusted_proxies: tuple[str, ...] = env("TRUSTED_PROXIES", networks, ())
    api_keys_file: str = env("API_KEYS_FILE", text, "")
    session_ttl_s: int = env("SESSION_TTL_S", int_range(60, 30 * 86_400), 43_200)
    # Failed authentications (a wrong or malformed key, REST or WebSocket) per address per RATE_LIMIT_WINDOW_MS.
    auth_failure_limit: int = env("AUTH_FAILURE_LIMIT", int_range(1), 10)

    allowed_hosts: tuple[str, ...] = env("ALLOWED_HOSTS", csv, ())

    # WebSocket
    allowed_origins: tuple[str, ...] = env("ALLOWED_ORIGINS", csv, ())
    ws_max_message_bytes: int = env("WS_MAX_MESSAGE_BYTES", int_range(1024), 262_144)
    ws_max_connections_per_ip: int = env("WS_MAX_CONNECTIONS_PER_IP", int_range(1), 32)
    ws_send_queue_size: int = env("WS_SEND_QUEUE_SIZE", int_range(16), 1024)
    stats_interval_ms: int = env("STATS_INTERVAL_MS", int_range(50), 500)
    ws_messages_per_second: int = env("WS_MESSAGES_PER_SECOND", int_range(1), 20)
    ws_message_burst: int = env("WS_MESSAGE_BURST", int_range(1), 60)

    # HTTP edge
    http_header_timeout_ms: int = env("HTTP_HEADER_TIMEOUT_MS", int_range(100), 10_000)
    http_body_timeout_ms: int = env("HTTP_BODY_TIMEOUT_MS", int_range(100), 30_000)
    http_keepalive_timeout_ms: int = env("HTTP_KEEPALIVE_TIMEOUT_MS", int_range(100), 15_000)
    http_max_connections_per_ip: int = env("HTTP_MAX_CONNECTIONS_PER_IP", int_range(1), 128)
    fd_reserve: int = env("FD_RESERVE", int_range(16), 256)

    # Redis scale-out (empty: embedded in-memory backend)
    redis_url: str = env("REDIS_URL", redis_url, "")
    redis_prefix: str = env("REDIS_PREFIX", text, "conveyor")
    # 0: this instance serves the API and sockets but executes nothing (a front node).
    worker_slots: int = env("WORKER_SLOTS", int_range(0, 10_000), os.cpu_count() or 1)
    lease_timeout_ms: int = env("LEASE_TIMEOUT_MS", int_range(1000), 15_000)
    retry_lost_jobs: bool = env("RETRY_LOST_JOBS", flag, False)
    # Connections per instance for commands (blocking reads have their own 4): a burst past it waits up to
    # REDIS_TIMEOUT_MS for one, then gets a 503.
    redis_pool_size: int = env("REDIS_POOL_SIZE", int_range(2, 10_000), 64)
    # Every Redis command's bound: while Redis is unreachable or stalled, requests get a 503 after this long.
    redis_timeout_ms: int = env("REDIS_TIMEOUT_MS", int_range(100, 600_000), 3000)
    # When the shared rate limiter cannot reach Redis: "closed" refuses with 503, "open" lets requests through.
    rate_limit_redis_failure: str = env("RATE_LIMIT_REDIS_FAILURE", choice("closed", "open"), "closed")

    # Durable embedded store (docs/reliability.md)
    durable: bool = env("DURABLE", flag, True)
    data_dir: str = env("DATA_DIR", text, "")
    data_max_mb: int = env("DATA_MAX_MB", int_range(0, 1_048_576), 1024)

    # Judge features: batches and callbacks
    max_tests: int = env("MAX_TESTS", int_range(1, 1000), 64)
    max_batch_size: int = env("MAX_BATCH_SIZE", int_range(1, 1000), 20)
    max_batch_answer_bytes: int = env("MAX_BATCH_ANSWER_BYTES", int_range(65_536, 1 << 30), 16 * 1024 * 1024)
    callback_secret: str = env("CALLBACK_SECRET", text, "")
    callback_allowed_networks: tuple[str, ...] = env("CALLBACK_ALLOWED_NETWORKS", networks, ())
    callback_timeout_ms: int = env("CALLBACK_TIMEOUT_MS", int_range(100, 60_000), 5000)
    callback_retries: int = env("CALLBACK_RETRIES", int_range(0, 1000), 50)
    callback_retry_horizon_s: int = env("CALLBACK_RETRY_HORIZON_S", int_range(1, 30 * 86_400), 4 * 3600)
    callback_workers: int = env("CALLBACK_WORKERS", int_range(1, 1000), 8)
    callback_host_concurrency: int = env("CALLBACK_HOST_CONCURRENCY", int_range(1, 1000), 2)
    callback_queue_size: int = env("CALLBACK_QUEUE_SIZE", int_range(1, 1_000_000), 1000)

    @property
    def served_hosts(self) -> frozenset[str] | None:
        """The host names the server answers (lower case, no port), or None for any. A server on loopback answers
        its local names only: a DNS-rebinding page reaches it under the attacker's name."""
        if self.allowed_hosts:
            return frozenset(host.strip().lower().strip("[]").rstrip(".") for host in self.allowed_hosts)
        bound = self.host.strip().lower().strip("[]")
        try:
            loopback = ipaddress.ip_address(bound).is_loopback
        except ValueError:
            loopback = bound == "localhost"
        return frozenset({"localhost", "127.0.0.1", "::1", bound}) if loopback else None

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: one submission with the largest code and stdin. JSON escapes can double a
        string's size (\\u sequences are 6 bytes per char at worst, but that is abuse): allow 2x and 64 KiB of
        envelope, so a legitimate max-size program is refused by our 413 naming the field, not by aiohttp."""
        return 2 * (self.max_code_bytes + self.max_stdin_bytes) + 64 * 1024

    @property
    def cache_path(self) -> Path:
        """CACHE_DIR, or the default for the server's user."""
        if self.cache_dir:
            return Path(self.cache_dir)
        if os.geteuid() == 0:
            return Path("/var/cache/conveyor")
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "conveyor"

    @property
    def data_path(self) -> Path:
        """DATA_DIR, or the default for the server's user (systemd's StateDirectory= as root)."""
        if self.data_dir:
            return Path(self.data_dir)
        if os.geteuid() == 0:
            return Path("/var/lib/conveyor")
        return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "conveyor"

    @property
    def effective_burst(self) -> int:
        return self.rate_limit_burst or self.rate_limit_requests

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
        """Read settings from `environ` (default: os.environ) over an optional `.env` file.

        Raises SettingsError naming the variable and the expected form on the first invalid value.
        """
        return cls(**parse_fields(cls, read_environment(environ, env_file)))

    @classmethod
    def env_names(cls) -> list[str]:
        return [f.metadata["env"] for f in dataclasses.fields(cls)]

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default as written in .env, meaning) of every setting in declaration order, for `--help`."""
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default
            if isinstance(default, tuple):
                shown = ",".join(default)
            else:
                shown = str(int(default) if isinstance(default, bool) else default)
            rows.append((f.metadata["env"], shown, f.metadata["doc"]))
        return rows
