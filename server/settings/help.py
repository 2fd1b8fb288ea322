"""What every setting means: shown by `python -m server --help` and in README's settings table."""

from __future__ import annotations

HELP = {
    "HOST": "address to listen on",
    "PORT": "port to listen on",
    "LOG_LEVEL": "`debug`, `info`, `warning` or `error`",
    "MAX_CONCURRENT_JOBS": "jobs running at once (with Redis: across the cluster)",
    "MAX_QUEUE_SIZE": "jobs waiting; the next submission gets 503 `Queue full`",
    "JOB_TIMEOUT_MS": "default and maximum wall time of one run (a request may ask for less)",
    "JOB_RETENTION_SECONDS": (
        "finished jobs stay queryable (results, share links) this long: in memory, and in the journal (`DURABLE`)…"
    ),
    "JOB_RETENTION_COUNT": (
        "…memory keeps at most this many of them (`0`: none kept; with `DURABLE` older ones are read from disk)…"
    ),
    "JOB_RETENTION_MAX_MB": (
        "…holding at most this much code, input, output and event log; past it or the count, the owner holding the "
        "most loses its own oldest first (both backends)"
    ),
    "MAX_CODE_BYTES": "largest source accepted (413 past it)",
    "MAX_STDIN_BYTES": (
        "largest stdin accepted, and most live input (WebSocket `stdin`) a program may leave unread (429 past it)"
    ),
    "SHUTDOWN_GRACE_MS": "on SIGTERM/SIGINT, running jobs get this long before they are cancelled (`shutdown`)",
    "SANDBOX": "`bwrap`; `none` is for development only and logs a loud warning on every start",
    "LANGUAGES": (
        "languages to offer, by name (`python,bash,c`); empty: every language of `server/sandbox/languages.toml` "
        "whose toolchain works here. Only these are probed at start-up"
    ),
    "COMPILE_TIMEOUT_MS": "wall time of a compile stage",
    "MEMORY_LIMIT_MB": "memory of one job (cgroup memory controller; see `ALLOW_PER_PROCESS_LIMITS`)",
    "CPU_TIME_LIMIT_S": (
        "CPU seconds of one job's whole process tree (cgroup CPU accounting, reason `cpu_limit`), and of each "
        "process (RLIMIT_CPU)"
    ),
    "MAX_PROCESSES": "processes and threads of one job (cgroup pids, else RLIMIT_NPROC)",
    "MAX_OUTPUT_BYTES": "stdout+stderr cap; past it the job is killed, `truncated`, reason `output_limit`",
    "MAX_FILE_SIZE_MB": "largest file a job may write (RLIMIT_FSIZE)",
    "MAX_OPEN_FILES": "open files of one job (RLIMIT_NOFILE)",
    "WORKDIR_SIZE_MB": "size of the job's private writable tmpfs",
    "CACHE_DIR": (
        "where compiled builds are cached; empty: `/var/cache/conveyor` as root, else `~/.cache/conveyor` "
        "(`$XDG_CACHE_HOME`)"
    ),
    "CACHE_MAX_MB": (
        "size bound of the build cache; past it the least recently used builds are evicted; `0` turns it off"
    ),
    "WARM_POOL": (
        "sandboxes started ahead of their jobs (namespaces, mounts, cgroups and limits ready), shared among the "
        "languages by recent demand; each runs one job and is destroyed; `0` turns the pool off"
    ),
    "PACKAGES_FILE": (
        "TOML file of the packages jobs may import, per language (`python`, `javascript`); installed by "
        "`python -m server packages install` into read-only layers under `CACHE_DIR` "
        "(see [docs/cache.md](docs/cache.md))"
    ),
    "CGROUP_MANAGER": (
        "how the server claims its cgroup v2 subtree: `auto` uses a cgroup systemd delegated to it, else asks "
        "systemd for a delegated scope, else (root, no systemd) makes `/sys/fs/cgroup/conveyor`; `systemd` and "
        "`cgroupfs` allow only those ways (see [Where it runs](#where-it-runs))"
    ),
    "SANDBOX_UID_BASE": (
        "first host uid of the range a root server runs sandboxes as, one uid each so that no job sees anothe"
        "r's keyrings or per-uid counts; the default range lies above systemd's container range and below 2^31"
    ),
    "SANDBOX_UIDS": (
        "uids in that range (at least the sandboxes alive at once: jobs and warm ones); `0`: every sandbox ru"
        "ns as 65534, as before. A server that is not root cannot choose uids: its jobs share its own"
    ),
    "ALLOW_PER_PROCESS_LIMITS": (
        "without a memory cgroup (not root, no delegated cgroup v2 subtree) the server refuses to start; `1` accepts "
        "per-process limits instead: RLIMIT_AS of `MEMORY_LIMIT_MB / MAX_PROCESSES` per process, no job-wide CPU "
        "limit or accounting (see [docs/security.md](docs/security.md#the-sandbox))"
    ),
    "RATE_LIMIT_REQUESTS": "submissions (`POST /run`, WebSocket `run`) per window per client",
    "RATE_LIMIT_WINDOW_MS": "the window",
    "RATE_LIMIT_BURST": "bucket capacity; `0` means the same as `RATE_LIMIT_REQUESTS`",
    "RATE_LIMIT_READ_REQUESTS": "other API calls (`/queue/*`, `/runtimes`, `/openapi.json`, `/ws` connects) per window",
    "SUBMIT_TOKEN_SLOT_SECONDS": (
        "worker slot time one submit token buys: a submission books (its tests, or 1) x its timeout and costs that "
        "over this, at least one token (400 when more than the bucket holds)"
    ),
    "TRUSTED_PROXIES": (
        "CIDRs whose `X-Forwarded-For`/`Forwarded` are believed (right-most untrusted hop wins), "
        "and whose `X-Forwarded-Proto: https` marks the cookies Secure"
    ),
    "API_KEYS_FILE": "TOML file of API keys (see below)",
    "SESSION_TTL_S": (
        "how long a sign-in from the pages lasts (`POST /session`: an HttpOnly cookie, no key kept in the page)"
    ),
    "AUTH_FAILURE_LIMIT": (
        "failed authentications (REST and WebSocket) per address per `RATE_LIMIT_WINDOW_MS`; past it every key "
        "from that address gets 429 unchecked"
    ),
    "ALLOWED_HOSTS": (
        "host names requests may name in `Host` (port ignored; others get 421); empty: `localhost`, `127.0.0.1` "
        "and `::1` when `HOST` is a loopback address, any host otherwise"
    ),
    "ALLOWED_ORIGINS": "origins allowed to open `/ws`; empty means the server's own origin only",
    "WS_MAX_MESSAGE_BYTES": "larger WebSocket frames close the socket with 1009",
    "WS_MAX_CONNECTIONS_PER_IP": "WebSocket connections per address",
    "WS_SEND_QUEUE_SIZE": "messages buffered for a socket before a non-reading client is closed with 1013",
    "STATS_INTERVAL_MS": (
        "queue-topic `stats` at most this often while anything changes; the shared snapshot is rebuilt at most "
        "this often"
    ),
    "WS_MESSAGES_PER_SECOND": "messages a WebSocket connection may send per second…",
    "WS_MESSAGE_BURST": (
        "…in bursts of this many; past it one `error`, then drops; a client that keeps sending is closed with 1008"
    ),
    "HTTP_HEADER_TIMEOUT_MS": "a connection's request line and headers must arrive within this, or it is closed",
    "HTTP_BODY_TIMEOUT_MS": "a request body must arrive within this (408, connection closed)",
    "HTTP_KEEPALIVE_TIMEOUT_MS": (
        "an idle keep-alive connection (or one whose next request does not arrive whole) is closed after this"
    ),
    "HTTP_MAX_CONNECTIONS_PER_IP": (
        "open HTTP connections (WebSockets included) per address; past it 429 and close (trusted proxies exempt)"
    ),
    "FD_RESERVE": (
        "file descriptors kept free for jobs: new connections are refused first (the soft `RLIMIT_NOFILE` is raised "
        "to the hard limit at start)"
    ),
    "REDIS_URL": (
        "`redis://…` to run as one of N instances on Redis; empty: the embedded queue (journaled: see `DURABLE`)"
    ),
    "REDIS_PREFIX": "namespace of every Redis key (several clusters can share one Redis)",
    "WORKER_SLOTS": "jobs this instance executes at once (Redis mode); `0`: serves API and sockets only",
    "LEASE_TIMEOUT_MS": "a job whose instance stops renewing its lease this long ends `failed` / `worker_lost`",
    "RETRY_LOST_JOBS": "`1`: a job lost with its instance is requeued once instead",
    "REDIS_POOL_SIZE": (
        "Redis connections per instance for commands; a burst past it waits `REDIS_TIMEOUT_MS`, then 503"
    ),
    "REDIS_TIMEOUT_MS": (
        "bound of every Redis command: while Redis is unreachable or stalled, requests get 503 after this"
    ),
    "RATE_LIMIT_REDIS_FAILURE": (
        "the shared rate limiter without Redis: `closed` refuses (503), `open` lets requests through"
    ),
    "DURABLE": (
        "embedded store: `1` journals jobs to SQLite in `DATA_DIR`, so finished results, share links and queued "
        "jobs survive a restart or a crash (jobs that were running end `failed` / `worker_lost`); `0`: memory only"
    ),
    "DATA_DIR": (
        "where the server keeps what must outlive it: the job journal `jobs.db` (`DURABLE`) and, without Redis, the "
        "callback outbox `callbacks.sqlite3`; empty: `/var/lib/conveyor` as root, else `~/.local/state/conveyor` "
        "(`$XDG_STATE_HOME`)"
    ),
    "DATA_MAX_MB": (
        "disk the journal's finished jobs may take; past it the owner holding the most loses its own oldest first"
    ),
    "MAX_TESTS": "tests in one submission (compiled once, each in a fresh sandbox)",
    "MAX_BATCH_SIZE": "submissions in one `POST /runs`, jobs in one `GET /runs`",
    "MAX_BATCH_ANSWER_BYTES": (
        "bytes of one `GET /runs` answer; jobs past it are named with their own URL instead (the first always fits)"
    ),
    "CALLBACK_SECRET": "key of the `X-Conveyor-Signature` HMAC-SHA256 on callbacks; empty: unsigned",
    "CALLBACK_ALLOWED_NETWORKS": (
        "CIDRs callbacks may reach besides public addresses (loopback, private, link-local are refused otherwise)"
    ),
    "CALLBACK_TIMEOUT_MS": "time for one callback request",
    "CALLBACK_RETRIES": (
        "retries of a failed callback at most (backoff 1 s, 2 s, 4 s, ... up to 10 min, jittered), within "
        "`CALLBACK_RETRY_HORIZON_S`"
    ),
    "CALLBACK_RETRY_HORIZON_S": (
        "how long after its job finished a callback is still retried; then it is abandoned (logged, counted)"
    ),
    "CALLBACK_WORKERS": "callback requests one instance makes at once",
    "CALLBACK_HOST_CONCURRENCY": (
        "callback requests to one host at once, per instance: a slow receiver cannot hold every worker"
    ),
    "CALLBACK_QUEUE_SIZE": (
        "callbacks the outbox holds, armed at submission (a job still queued or running) or waiting for delivery; "
        "when full, submissions with a callback get 503"
    ),
}
