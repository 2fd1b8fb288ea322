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


def _env(name: str, parser: Parser, default: Any, doc: str = "") -> Any:
    """A setting read from the environment variable `name`; `doc` is its meaning, shown by `--help` and README."""
    return field(default=default, metadata={"env": name, "parser": parser, "doc": doc})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the server. Each field maps to the environment variable in its metadata."""

    host: str = _env("HOST", _text, "127.0.0.1", "address to listen on")
    port: int = _env("PORT", _int_range(0, 65535), 3001, "port to listen on")
    log_level: str = _env(
        "LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info", "`debug`, `info`, `warning` or `error`"
    )

    # Queue (the seed's numbers)
    max_concurrent_jobs: int = _env(
        "MAX_CONCURRENT_JOBS", _int_range(1, 10_000), 5, "jobs running at once (with Redis: across the cluster)"
    )
    max_queue_size: int = _env(
        "MAX_QUEUE_SIZE", _int_range(0, 10_000_000), 100, "jobs waiting; the next submission gets 503 `Queue full`"
    )
    job_timeout_ms: int = _env(
        "JOB_TIMEOUT_MS",
        _int_range(100, 3_600_000),
        10_000,
        "default and maximum wall time of one run (a request may ask for less)",
    )
    # A day: a share link (`/?job=<id>`) pasted into a chat or a course page should still answer tomorrow.
    job_retention_seconds: int = _env(
        "JOB_RETENTION_SECONDS",
        _int_range(0),
        86_400,
        "finished jobs stay queryable (results, share links) this long: in memory, and in the journal (`DURABLE`)…",
    )
    job_retention_count: int = _env(
        "JOB_RETENTION_COUNT",
        _int_range(0),
        10_000,
        "…memory keeps at most this many of them (`0`: none kept; with `DURABLE` older ones are read from disk)…",
    )
    # Finished jobs kept (code, stdin, output, event log) in MiB, on either backend; the oldest go first.
    job_retention_max_mb: int = _env(
        "JOB_RETENTION_MAX_MB",
        _int_range(0, 1_048_576),
        256,
        "…holding at most this much code, input, output and event log; past it or the count, the owner holding the "
        "most loses its own oldest first (both backends)",
    )
    max_code_bytes: int = _env("MAX_CODE_BYTES", _int_range(1), 65_536, "largest source accepted (413 past it)")
    max_stdin_bytes: int = _env(
        "MAX_STDIN_BYTES",
        _int_range(0),
        1_048_576,
        "largest stdin accepted, and most live input (WebSocket `stdin`) a program may leave unread (429 past it)",
    )
    shutdown_grace_ms: int = _env(
        "SHUTDOWN_GRACE_MS",
        _int_range(0, 600_000),
        5000,
        "on SIGTERM/SIGINT, running jobs get this long before they are cancelled (`shutdown`)",
    )

    # Sandbox
    sandbox: str = _env(
        "SANDBOX",
        _choice("bwrap", "none"),
        "bwrap",
        "`bwrap`; `none` is for development only and logs a loud warning on every start",
    )
    compile_timeout_ms: int = _env(
        "COMPILE_TIMEOUT_MS", _int_range(100, 600_000), 10_000, "wall time of a compile stage"
    )
    memory_limit_mb: int = _env(
        "MEMORY_LIMIT_MB",
        _int_range(16, 65_536),
        256,
        "memory of one job (cgroup memory controller; see `ALLOW_PER_PROCESS_LIMITS`)",
    )
    cpu_time_limit_s: int = _env(
        "CPU_TIME_LIMIT_S",
        _int_range(1, 3600),
        10,
        "CPU seconds of one job's whole process tree (cgroup CPU accounting, reason `cpu_limit`), and of each "
        "process (RLIMIT_CPU)",
    )
    max_processes: int = _env(
        "MAX_PROCESSES", _int_range(1, 100_000), 64, "processes and threads of one job (cgroup pids, else RLIMIT_NPROC)"
    )
    max_output_bytes: int = _env(
        "MAX_OUTPUT_BYTES",
        _int_range(1024),
        1_048_576,
        "stdout+stderr cap; past it the job is killed, `truncated`, reason `output_limit`",
    )
    max_file_size_mb: int = _env(
        "MAX_FILE_SIZE_MB", _int_range(1, 65_536), 16, "largest file a job may write (RLIMIT_FSIZE)"
    )
    max_open_files: int = _env(
        "MAX_OPEN_FILES", _int_range(16, 1_048_576), 256, "open files of one job (RLIMIT_NOFILE)"
    )
    workdir_size_mb: int = _env(
        "WORKDIR_SIZE_MB", _int_range(1, 65_536), 64, "size of the job's private writable tmpfs"
    )
    # Build cache (docs/cache.md)
    cache_dir: str = _env(
        "CACHE_DIR",
        _text,
        "",
        "where compiled builds are cached; empty: `/var/cache/conveyor` as root, else `~/.cache/conveyor` "
        "(`$XDG_CACHE_HOME`)",
    )
    cache_max_mb: int = _env(
        "CACHE_MAX_MB",
        _int_range(0, 1_048_576),
        512,
        "size bound of the build cache; past it the least recently used builds are evicted; `0` turns it off",
    )
    warm_pool: int = _env(
        "WARM_POOL",
        _int_range(0, 64),
        4,
        "sandboxes started ahead of their jobs (namespaces, mounts, cgroups and limits ready), shared among the "
        "languages by recent demand; each runs one job and is destroyed; `0` turns the pool off",
    )
    packages_file: str = _env(
        "PACKAGES_FILE",
        _text,
        "",
        "TOML file of the packages jobs may import, per language (`python`, `javascript`); installed by "
        "`python -m server packages install` into read-only layers under `CACHE_DIR` "
        "(see [docs/cache.md](docs/cache.md))",
    )
    cgroup_manager: str = _env(
        "CGROUP_MANAGER",
        _choice("auto", "systemd", "cgroupfs"),
        "auto",
        "how the server claims its cgroup v2 subtree: `auto` uses a cgroup systemd delegated to it, else asks "
        "systemd for a delegated scope, else (root, no systemd) makes `/sys/fs/cgroup/conveyor`; `systemd` and "
        "`cgroupfs` allow only those ways (see [Where it runs](#where-it-runs))",
    )
    sandbox_uid_base: int = _env(
        "SANDBOX_UID_BASE",
        _int_range(1, 4_294_967_294 - (1 << 24)),  # the range, SANDBOX_UIDS at most, ends below (uid_t)-1
        2_000_000_000,
        "first host uid of the range a root server runs sandboxes as, one uid each so that no job sees anothe"
        "r's keyrings or per-uid counts; the default range lies above systemd's container range and below 2^31",
    )
    sandbox_uids: int = _env(
        "SANDBOX_UIDS",
        _int_range(0, 1 << 24),
        65_536,
        "uids in that range (at least the sandboxes alive at once: jobs and warm ones); `0`: every sandbox ru"
        "ns as 65534, as before. A server that is not root cannot choose uids: its jobs share its own",
    )
    # Without a memory cgroup the server refuses to start unless this accepts per-process limits.
    allow_per_process_limits: bool = _env(
        "ALLOW_PER_PROCESS_LIMITS",
        _flag,
        False,
        "without a memory cgroup (not root, no delegated cgroup v2 subtree) the server refuses to start; `1` accepts "
        "per-process limits instead: RLIMIT_AS of `MEMORY_LIMIT_MB / MAX_PROCESSES` per process, no job-wide CPU "
        "limit or accounting (see [docs/security.md](docs/security.md#the-sandbox))",
    )

    # Rate limiting and API keys
    rate_limit_requests: int = _env(
        "RATE_LIMIT_REQUESTS", _int_range(1), 10, "submissions (`POST /run`, WebSocket `run`) per window per client"
    )
    rate_limit_window_ms: int = _env("RATE_LIMIT_WINDOW_MS", _int_range(1), 60_000, "the window")
    # 0 means "same as RATE_LIMIT_REQUESTS".
    rate_limit_burst: int = _env(
        "RATE_LIMIT_BURST", _int_range(0), 0, "bucket capacity; `0` means the same as `RATE_LIMIT_REQUESTS`"
    )
    rate_limit_read_requests: int = _env(
        "RATE_LIMIT_READ_REQUESTS",
        _int_range(1),
        120,
        "other API calls (`/queue/*`, `/runtimes`, `/openapi.json`, `/ws` connects) per window",
    )
    submit_token_slot_seconds: int = _env(
        "SUBMIT_TOKEN_SLOT_SECONDS",
        _int_range(1, 86_400),
        60,
        "worker slot time one submit token buys: a submission books (its tests, or 1) x its timeout and costs that "
        "over this, at least one token (400 when more than the bucket holds)",
    )
    trusted_proxies: tuple[str, ...] = _env(
        "TRUSTED_PROXIES",
        _networks,
        (),
        "CIDRs whose `X-Forwarded-For`/`Forwarded` are believed (right-most untrusted hop wins)",
    )
    api_keys_file: str = _env("API_KEYS_FILE", _text, "", "TOML file of API keys (see below)")
    session_ttl_s: int = _env(
        "SESSION_TTL_S",
        _int_range(60, 30 * 86_400),
        43_200,
        "how long a sign-in from the pages lasts (`POST /session`: an HttpOnly cookie, no key kept in the page)",
    )
    # Failed authentications (a wrong or malformed key, REST or WebSocket) per address per RATE_LIMIT_WINDOW_MS.
    auth_failure_limit: int = _env(
        "AUTH_FAILURE_LIMIT",
        _int_range(1),
        10,
        "failed authentications (REST and WebSocket) per address per `RATE_LIMIT_WINDOW_MS`; past it every key "
        "from that address gets 429 unchecked",
    )

    allowed_hosts: tuple[str, ...] = _env(
        "ALLOWED_HOSTS",
        _csv,
        (),
        "host names requests may name in `Host` (port ignored; others get 421); empty: `localhost`, `127.0.0.1` "
        "and `::1` when `HOST` is a loopback address, any host otherwise",
    )

    # WebSocket
    allowed_origins: tuple[str, ...] = _env(
        "ALLOWED_ORIGINS", _csv, (), "origins allowed to open `/ws`; empty means the server's own origin only"
    )
    ws_max_message_bytes: int = _env(
        "WS_MAX_MESSAGE_BYTES", _int_range(1024), 262_144, "larger WebSocket frames close the socket with 1009"
    )
    ws_max_connections_per_ip: int = _env(
        "WS_MAX_CONNECTIONS_PER_IP", _int_range(1), 32, "WebSocket connections per address"
    )
    ws_send_queue_size: int = _env(
        "WS_SEND_QUEUE_SIZE",
        _int_range(16),
        1024,
        "messages buffered for a socket before a non-reading client is closed with 1013",
    )
    stats_interval_ms: int = _env(
        "STATS_INTERVAL_MS",
        _int_range(50),
        500,
        "queue-topic `stats` at most this often while anything changes; the shared snapshot is rebuilt at most "
        "this often",
    )
    ws_messages_per_second: int = _env(
        "WS_MESSAGES_PER_SECOND", _int_range(1), 20, "messages a WebSocket connection may send per second…"
    )
    ws_message_burst: int = _env(
        "WS_MESSAGE_BURST",
        _int_range(1),
        60,
        "…in bursts of this many; past it one `error`, then drops; a client that keeps sending is closed with 1008",
    )

    # HTTP edge
    http_header_timeout_ms: int = _env(
        "HTTP_HEADER_TIMEOUT_MS",
        _int_range(100),
        10_000,
        "a connection's request line and headers must arrive within this, or it is closed",
    )
    http_body_timeout_ms: int = _env(
        "HTTP_BODY_TIMEOUT_MS",
        _int_range(100),
        30_000,
        "a request body must arrive within this (408, connection closed)",
    )
    http_keepalive_timeout_ms: int = _env(
        "HTTP_KEEPALIVE_TIMEOUT_MS",
        _int_range(100),
        15_000,
        "an idle keep-alive connection (or one whose next request does not arrive whole) is closed after this",
    )
    http_max_connections_per_ip: int = _env(
        "HTTP_MAX_CONNECTIONS_PER_IP",
        _int_range(1),
        128,
        "open HTTP connections (WebSockets included) per address; past it 429 and close (trusted proxies exempt)",
    )
    fd_reserve: int = _env(
        "FD_RESERVE",
        _int_range(16),
        256,
        "file descriptors kept free for jobs: new connections are refused first (the soft `RLIMIT_NOFILE` is raised "
        "to the hard limit at start)",
    )

    # Redis scale-out (empty: embedded in-memory backend)
    redis_url: str = _env(
        "REDIS_URL",
        _redis_url,
        "",
        "`redis://…` to run as one of N instances on Redis; empty: the embedded queue (journaled: see `DURABLE`)",
    )
    redis_prefix: str = _env(
        "REDIS_PREFIX", _text, "conveyor", "namespace of every Redis key (several clusters can share one Redis)"
    )
    # 0: this instance serves the API and sockets but executes nothing (a front node).
    worker_slots: int = _env(
        "WORKER_SLOTS",
        _int_range(0, 10_000),
        os.cpu_count() or 1,
        "jobs this instance executes at once (Redis mode); `0`: serves API and sockets only",
    )
    lease_timeout_ms: int = _env(
        "LEASE_TIMEOUT_MS",
        _int_range(1000),
        15_000,
        "a job whose instance stops renewing its lease this long ends `failed` / `worker_lost`",
    )
    retry_lost_jobs: bool = _env(
        "RETRY_LOST_JOBS", _flag, False, "`1`: a job lost with its instance is requeued once instead"
    )
    # Connections per instance for commands (blocking reads have their own 4): a burst past it waits up to
    # REDIS_TIMEOUT_MS for one, then gets a 503.
    redis_pool_size: int = _env(
        "REDIS_POOL_SIZE",
        _int_range(2, 10_000),
        64,
        "Redis connections per instance for commands; a burst past it waits `REDIS_TIMEOUT_MS`, then 503",
    )
    # Every Redis command's bound: while Redis is unreachable or stalled, requests get a 503 after this long.
    redis_timeout_ms: int = _env(
        "REDIS_TIMEOUT_MS",
        _int_range(100, 600_000),
        3000,
        "bound of every Redis command: while Redis is unreachable or stalled, requests get 503 after this",
    )
    # When the shared rate limiter cannot reach Redis: "closed" refuses with 503, "open" lets requests through.
    rate_limit_redis_failure: str = _env(
        "RATE_LIMIT_REDIS_FAILURE",
        _choice("closed", "open"),
        "closed",
        "the shared rate limiter without Redis: `closed` refuses (503), `open` lets requests through",
    )

    # Durable embedded store (docs/reliability.md)
    durable: bool = _env(
        "DURABLE",
        _flag,
        True,
        "embedded store: `1` journals jobs to SQLite in `DATA_DIR`, so finished results, share links and queued "
        "jobs survive a restart or a crash (jobs that were running end `failed` / `worker_lost`); `0`: memory only",
    )
    data_dir: str = _env(
        "DATA_DIR",
        _text,
        "",
        "where the server keeps what must outlive it: the job journal `jobs.db` (`DURABLE`) and, without Redis, the "
        "callback outbox `callbacks.sqlite3`; empty: `/var/lib/conveyor` as root, else `~/.local/state/conveyor` "
        "(`$XDG_STATE_HOME`)",
    )
    data_max_mb: int = _env(
        "DATA_MAX_MB",
        _int_range(0, 1_048_576),
        1024,
        "disk the journal's finished jobs may take; past it the owner holding the most loses its own oldest first",
    )

    # Judge features: batches and callbacks
    max_tests: int = _env(
        "MAX_TESTS", _int_range(1, 1000), 64, "tests in one submission (compiled once, each in a fresh sandbox)"
    )
    max_batch_size: int = _env(
        "MAX_BATCH_SIZE", _int_range(1, 1000), 20, "submissions in one `POST /runs`, jobs in one `GET /runs`"
    )
    max_batch_answer_bytes: int = _env(
        "MAX_BATCH_ANSWER_BYTES",
        _int_range(65_536, 1 << 30),
        16 * 1024 * 1024,
        "bytes of one `GET /runs` answer; jobs past it are named with their own URL instead (the first always fits)",
    )
    callback_secret: str = _env(
        "CALLBACK_SECRET", _text, "", "key of the `X-Conveyor-Signature` HMAC-SHA256 on callbacks; empty: unsigned"
    )
    callback_allowed_networks: tuple[str, ...] = _env(
        "CALLBACK_ALLOWED_NETWORKS",
        _networks,
        (),
        "CIDRs callbacks may reach besides public addresses (loopback, private, link-local are refused otherwise)",
    )
    callback_timeout_ms: int = _env(
        "CALLBACK_TIMEOUT_MS", _int_range(100, 60_000), 5000, "time for one callback request"
    )
    callback_retries: int = _env(
        "CALLBACK_RETRIES",
        _int_range(0, 1000),
        50,
        "retries of a failed callback at most (backoff 1 s, 2 s, 4 s, ... up to 10 min, jittered), within "
        "`CALLBACK_RETRY_HORIZON_S`",
    )
    callback_retry_horizon_s: int = _env(
        "CALLBACK_RETRY_HORIZON_S",
        _int_range(1, 30 * 86_400),
        4 * 3600,
        "how long after its job finished a callback is still retried; then it is abandoned (logged, counted)",
    )
    callback_workers: int = _env(
        "CALLBACK_WORKERS", _int_range(1, 1000), 8, "callback requests one instance makes at once"
    )
    callback_host_concurrency: int = _env(
        "CALLBACK_HOST_CONCURRENCY",
        _int_range(1, 1000),
        2,
        "callback requests to one host at once, per instance: a slow receiver cannot hold every worker",
    )
    callback_queue_size: int = _env(
        "CALLBACK_QUEUE_SIZE",
        _int_range(1, 1_000_000),
        1000,
        "callbacks the outbox holds, armed at submission (a job still queued or running) or waiting for delivery; "
        "when full, submissions with a callback get 503",
    )

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

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default as written in .env, meaning) of every setting in declaration order, for `--help`."""
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default
            if isinstance(default, tuple):
                text = ",".join(default)
            else:
                text = str(int(default) if isinstance(default, bool) else default)
            rows.append((f.metadata["env"], text, f.metadata["doc"]))
        return rows


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
