"""Prometheus metrics: `GET /metrics`, counted from queue events and read from the queue and hub at scrape time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..callbacks.sender import CALLBACKS
from ..hub.hub import HUB
from ..keys import EVENTS, QUEUE, RUNNER
from ..queue.events import Event
from ..queue.jobs import TERMINAL_TYPES

logger = logging.getLogger(__name__)

NAMESPACE = "conveyor"
# Seconds. Waits are short on an idle server and long under load; runs are bounded by JOB_TIMEOUT_MS.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
EXECUTION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Bytes: 1 MiB to 4 GiB, doubling (MEMORY_LIMIT_MB is 256 by default).
MEMORY_BUCKETS = tuple(float(1 << (20 + i)) for i in range(13))
# The event's figures for each stage: (CPU time in ms, memory peak in bytes).
STAGE_USAGE = {"run": ("cpuTimeMs", "memoryPeakBytes"), "compile": ("compileCpuTimeMs", "compileMemoryPeakBytes")}

# Labelled series remembered by their label values (`Metrics.child`): a language has a few; on Redis other instances'
# events may name more, and past this many the rest are looked up each time.
MAX_CHILDREN = 1024
# The events the metrics count (a running or output event is no news to them).
COUNTED_TYPES = frozenset({"queued", *TERMINAL_TYPES})

# Seconds between two scans of the build cache directory for /metrics and /cache/status (Prometheus scrapes every
# 15 s or so; the cache's counters move slowly).
CACHE_SCAN_S = 10.0

CACHE_COUNTERS = {
    "hits": "Builds taken from the build cache (compile skipped).",
    "misses": "Build cache lookups that found nothing usable (compiled).",
    "evictions": "Builds evicted from the build cache past CACHE_MAX_MB, least recently used first.",
    "corrupt": "Build cache entries that failed their content check (deleted and rebuilt).",
}


CALLBACK_COUNTERS = {
    "delivered": "Callbacks a receiver answered with 2xx (by this instance).",
    "retried": "Callback attempts that failed and were scheduled again (backoff with jitter).",
    "abandoned": "Callbacks given up: not worth retrying, CALLBACK_RETRIES or CALLBACK_RETRY_HORIZON_S used up.",
    "dropped": "Callbacks not kept because the outbox held CALLBACK_QUEUE_SIZE already.",
    "orphaned": "Callbacks armed at submission and dropped: the job store no longer knew their job.",
}


class _ScrapeCollector(Collector):
    """Values that live elsewhere (queue stats, hub sockets), read when Prometheus scrapes.

    `collect` is synchronous but the queue's `stats()` is async (Redis), so the handler awaits the stats first and
    leaves them in `stats` for the encoder's call to `collect`, which follows at once on the same loop.
    """

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self.stats: dict[str, Any] = {}
        self.cache: dict[str, Any] = {}
        self.pool: dict[str, Any] = {}

    def collect(self) -> Iterable[Metric]:
        stats = self.stats
        yield _gauge("queue_length", "Jobs waiting in the queue.", stats.get("queueLength", 0))
        yield _gauge("jobs_running", "Jobs running now.", stats.get("runningCount", 0))
        yield _gauge("max_concurrent_jobs", "Jobs that may run at once.", stats.get("maxConcurrent", 0))
        yield _gauge("max_queue_size", "Jobs that may wait at once.", stats.get("maxQueueSize", 0))
        yield _counter(
            "rejected", "Submissions refused because the queue was full (HTTP 503).", stats.get("totalRejected", 0)
        )
        yield _counter(
            "rate_limited", "Requests refused by the rate limiter (HTTP 429).", stats.get("totalRateLimited", 0)
        )
        cache = self.cache.get("builds", {})
        for name in ("hits", "misses", "evictions", "corrupt"):
            yield _counter(f"build_cache_{name}", CACHE_COUNTERS[name], cache.get(name, 0))
        yield _gauge("build_cache_entries", "Builds in the build cache.", cache.get("entries", 0))
        yield _gauge("build_cache_bytes", "Bytes on disk in the build cache.", cache.get("bytes", 0))
        yield _gauge("build_cache_max_bytes", "The build cache's bound (CACHE_MAX_MB).", cache.get("maxBytes", 0))
        layers = self.cache.get("packages", {})
        yield _gauge("package_layers", "Package layers jobs get (PACKAGES_FILE).", layers.get("layers", 0))
        yield _gauge("package_layer_packages", "Packages in those layers.", layers.get("packages", 0))
        yield _gauge("package_layer_bytes", "Bytes on disk of those layers.", layers.get("bytes", 0))
        pool = self.pool
        yield _gauge("warm_pool_ready", "Warm sandboxes started and waiting for a job.", pool.get("ready", 0))
        yield _gauge("warm_pool_in_use", "Warm sandboxes running the job that took them.", pool.get("inUse", 0))
        yield _gauge("warm_pool_budget", "Warm sandboxes the pool may hold (WARM_POOL).", pool.get("budget", 0))
        yield _counter("warm_pool_hits", "Jobs that started in a warm sandbox.", pool.get("hits", 0))
        yield _counter("warm_pool_misses", "Jobs that found no warm sandbox and started cold.", pool.get("misses", 0))
        yield _counter("warm_pool_failures", "Warm sandboxes that failed to start.", pool.get("failures", 0))
        yield _gauge(
            "warm_pool_refill_seconds",
            "The last warm sandbox's time from start to ready.",
            (pool.get("refillMs") or 0) / 1000.0,
        )
        yield from self._callbacks()
        hub = self._app.get(HUB)
        connections = len(hub.connections) if hub is not None else 0
        yield _gauge("websocket_connections", "Open WebSocket connections.", connections)

    def _callbacks(self) -> Iterable[Metric]:
        sender = self._app.get(CALLBACKS)
        if sender is None:
            return
        for name, help_text in CALLBACK_COUNTERS.items():
            yield _counter(f"callbacks_{name}", help_text, getattr(sender, name))
        yield _gauge(
            "callbacks_pending",
            "Callbacks in the outbox, due or waiting for a retry (on Redis: every instance's, one shared outbox).",
            sender.pending,
        )
        yield _gauge(
            "callbacks_armed",
            "Callbacks armed at submission whose job is still queued or running (they count towards "
            "CALLBACK_QUEUE_SIZE; on Redis: every instance's).",
            sender.armed,
        )
        yield _gauge("callbacks_in_flight", "Callback requests this instance has under way.", sender.in_flight)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NAMESPACE}_{name}", documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{NAMESPACE}_{name}", documentation, value=value)


class Metrics:
    """One app's metrics in its own registry (tests build many apps; the global registry would collide)."""

    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry()
        self.scrape = _ScrapeCollector(app)
        self.cache_scan = CacheScan(app)
        self.registry.register(self.scrape)
        ProcessCollector(namespace=NAMESPACE, registry=self.registry)
        self.submitted = Counter(
            "jobs_submitted", "Jobs accepted into the queue.", ["language"], namespace=NAMESPACE, registry=self.registry
        )
        self.finished = Counter(
            "jobs",
            "Jobs that reached a final status.",
            ["status", "language"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.wait_time = self._histogram(
            "job_wait_seconds",
            "Time from submission to start, for jobs that ran.",
            ["language"],
            WAIT_BUCKETS,
        )
        self.execution_time = self._histogram(
            "job_execution_seconds",
            "Time the program ran (compilation excluded).",
            ["language"],
            EXECUTION_BUCKETS,
        )

        self.cpu_time = self._histogram(
            "job_cpu_seconds",
            "CPU time of a stage's whole process tree (from the job's cgroup).",
            ["language", "stage"],
            EXECUTION_BUCKETS,
        )
        self.memory_peak = self._histogram(
            "job_memory_peak_bytes",
            "Peak memory of a stage (from the job's cgroup: page cache and tmpfs files included, as the limit counts).",
            ["language", "stage"],
            MEMORY_BUCKETS,
        )

        self._children: dict[tuple[object, ...], Any] = {}

    def _histogram(self, name: str, documentation: str, labels: list[str], buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, documentation, labels, namespace=NAMESPACE, buckets=buckets, registry=self.registry)

    def child(self, metric: Counter | Histogram, *values: str) -> Any:
        """`metric.labels(*values)`, remembered: labels() checks and sorts its arguments at every call, six times a
        job; the series it returns is the same every time."""
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*values)
            if len(self._children) < MAX_CHILDREN:
                self._children[key] = child
        return child

    def on_event(self, event: Event) -> None:
        """The queue listener. Runs on the queue's path: synchronous, O(1) and never raises."""
        try:
            kind = event.get("type")
            if kind == "queued" and not event.get("retried"):  # a lost job requeued was submitted once
                self.child(self.submitted, str(event.get("language"))).inc()
            elif kind in TERMINAL_TYPES:
                self._on_finished(kind, event)
        except Exception:
            # The emitter would log and skip us too; catching here keeps the promise local to this module.
            logger.exception("metrics: %s event for job %s not counted", event.get("type"), event.get("jobId"))

    def _on_finished(self, kind: str, event: Event) -> None:
        language = str(event.get("language"))
        self.child(self.finished, kind, language).inc()
        for stage, (cpu_key, memory_key) in STAGE_USAGE.items():
            cpu_ms, peak = event.get(cpu_key), event.get(memory_key)
            if cpu_ms is not None:
                self.child(self.cpu_time, language, stage).observe(cpu_ms / 1000.0)
            if peak is not None:
                self.child(self.memory_peak, language, stage).observe(peak)
        execution_ms = event.get("executionTimeMs")
        # Both are observed when the job ends, so a job counts once and nothing is remembered between events; a job
        # cancelled while queued never ran, so its wait is not a wait for a slot (the stats percentiles agree).
        if execution_ms is None:
            return
        self.child(self.execution_time, language).observe(execution_ms / 1000.0)
        wait_ms = event.get("waitTimeMs")
        if wait_ms is not None:
            self.child(self.wait_time, language).observe(wait_ms / 1000.0)


METRICS = web.AppKey("metrics", Metrics)


class CacheScan:
    """The build cache's status (a directory listing, in a thread) at most once per CACHE_SCAN_S; callers meanwhile
    share the last one, or the scan under way."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._scan: asyncio.Task[dict[str, Any]] | None = None
        self._at = 0.0

    async def __call__(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        scan = self._scan
        if scan is None or (scan.done() and (scan.exception() is not None or loop.time() - self._at >= CACHE_SCAN_S)):
            self._at = loop.time()
            scan = self._scan = loop.create_task(asyncio.to_thread(self._app[RUNNER].cache_status))
        return await asyncio.shield(scan)


async def get_metrics(request: web.Request) -> web.Response:
    """The Prometheus text format (or OpenMetrics when the scraper asks for it)."""
    app = request.app
    metrics = app[METRICS]
    metrics.scrape.stats = await app[QUEUE].stats()
    metrics.scrape.cache = await metrics.cache_scan()
    metrics.scrape.pool = app[RUNNER].pool_status()
    if CALLBACKS in app:
        try:
            await app[CALLBACKS].refresh()
        except Exception:  # the outbox's last known size serves; the queue's stats above reached the store
            logger.exception("metrics: the callback outbox's size could not be read")
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


def setup_metrics(app: web.Application) -> None:
    """Add `GET /metrics` and count queue events while the app runs. Call after the queue's cleanup context is added."""
    metrics = Metrics(app)
    app[METRICS] = metrics

    async def listen(app: web.Application) -> AsyncIterator[None]:
        # Each job is counted by the one instance that caused its event, so a sum over instances is the truth.
        unsubscribe = app[EVENTS].subscribe(metrics.on_event, here_only=True, types=COUNTED_TYPES)
        try:
            yield
        finally:
            unsubscribe()

    app.cleanup_ctx.append(listen)
    app.router.add_get("/metrics", get_metrics)
