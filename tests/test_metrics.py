"""GET /metrics: Prometheus text counted from real jobs, gauges read at scrape time, per-app registries."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from server.app import create_app
from server.doors.metrics import MAX_CHILDREN, METRICS
from server.keys import RUNNER
from server.queue.jobs import Runner
from tests.conftest import AppClientFactory, make_settings

Client = TestClient[web.Request, web.Application]
SLEEP = {"language": "python", "code": "import time\ntime.sleep(60)"}


async def scrape(client: Client) -> list[Sample]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return [sample for family in text_string_to_metric_families(await resp.text()) for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The one sample called `name` whose labels include `labels`, or None."""
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, f"{name} {labels} matches {len(found)} samples"
    return found[0] if found else None


async def run(client: Client, code: str, language: str = "python", **extra: object) -> str:
    resp = await client.post("/run", json={"language": language, "code": code, **extra})
    assert resp.status == 200, await resp.text()
    status: str = (await resp.json())["status"]
    return status


async def test_jobs_counted_by_final_status_and_language(client: Client) -> None:
    assert await run(client, "print('ok')") == "completed"
    assert await run(client, "raise SystemExit(2)") == "failed"
    assert await run(client, "echo hi", "bash") == "completed"
    assert await run(client, "import time\ntime.sleep(30)", timeoutMs=300) == "timeout"
    samples = await scrape(client)
    assert value(samples, "conveyor_jobs_total", status="completed", language="python") == 1
    assert value(samples, "conveyor_jobs_total", status="failed", language="python") == 1
    assert value(samples, "conveyor_jobs_total", status="timeout", language="python") == 1
    assert value(samples, "conveyor_jobs_total", status="completed", language="bash") == 1
    assert value(samples, "conveyor_jobs_total", status="cancelled", language="python") is None
    assert value(samples, "conveyor_jobs_submitted_total", language="python") == 3
    assert value(samples, "conveyor_jobs_submitted_total", language="bash") == 1
    # Every job here ran, so each has one wait and one execution observation.
    assert value(samples, "conveyor_job_execution_seconds_count", language="python") == 3
    assert value(samples, "conveyor_job_wait_seconds_count", language="python") == 3
    assert value(samples, "conveyor_job_execution_seconds_count", language="bash") == 1
    timed_out = value(samples, "conveyor_job_execution_seconds_bucket", language="python", le="0.1")
    assert timed_out is not None and timed_out < 3  # the 0.3 s timeout is not in the 0.1 s bucket
    assert value(samples, "conveyor_process_resident_memory_bytes") is not None


async def test_queue_gauges_and_rejections_are_read_at_scrape_time(app_client: AppClientFactory) -> None:
    client = await app_client(max_concurrent_jobs=1, max_queue_size=2)
    for _ in range(3):
        resp = await client.post("/run?wait=false", json=SLEEP)
        assert resp.status == 202
    resp = await client.post("/run?wait=false", json=SLEEP)
    assert resp.status == 503
    samples = await scrape(client)
    assert value(samples, "conveyor_jobs_running") == 1
    assert value(samples, "conveyor_queue_length") == 2
    assert value(samples, "conveyor_max_concurrent_jobs") == 1
    assert value(samples, "conveyor_max_queue_size") == 2
    assert value(samples, "conveyor_rejected_total") == 1
    # The refused job never entered the queue.
    assert value(samples, "conveyor_jobs_submitted_total", language="python") == 3


async def test_rate_limit_denials_are_counted(app_client: AppClientFactory) -> None:
    client = await app_client(rate_limit_requests=1, rate_limit_read_requests=5)
    assert await run(client, "print(1)") == "completed"
    resp = await client.post("/run", json={"language": "python", "code": "print(2)"})
    assert resp.status == 429
    samples = await scrape(client)
    assert value(samples, "conveyor_rate_limited_total") == 1


async def test_metrics_is_a_read_and_scans_the_build_cache_once_per_interval(
    app_client: AppClientFactory, monkeypatch: Any
) -> None:
    # A scrape read the whole build cache directory each time, without any limit on scrapes.
    client = await app_client(rate_limit_read_requests=5)
    runner = client.app[RUNNER]
    scans = []
    status = runner.cache_status

    def counting() -> dict[str, Any]:
        scans.append(1)
        return status()

    monkeypatch.setattr(runner, "cache_status", counting)
    statuses = [(await client.get("/metrics")).status for _ in range(7)]
    assert statuses == [200] * 5 + [429] * 2
    assert len(scans) == 1


async def test_websocket_gauge_follows_open_sockets(client: Client) -> None:
    assert value(await scrape(client), "conveyor_websocket_connections") == 0
    ws = await client.ws_connect("/ws")
    assert (await ws.receive_json())["type"] == "hello"
    assert value(await scrape(client), "conveyor_websocket_connections") == 1
    await ws.close()
    async with asyncio.timeout(10):
        while value(await scrape(client), "conveyor_websocket_connections") != 0:
            await asyncio.sleep(0.02)


async def test_openmetrics_on_request(client: Client) -> None:
    resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).endswith("# EOF\n")


def test_each_app_has_its_own_registry(sandbox: Runner) -> None:
    first, second = (create_app(make_settings(), runner=sandbox) for _ in range(2))
    assert first[METRICS].registry is not second[METRICS].registry


async def test_cpu_time_and_memory_peak_histograms_per_stage(client: Client) -> None:
    c = '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n'
    assert await run(client, c, "c") == "completed"
    assert await run(client, "print('hi')") == "completed"
    samples = await scrape(client)
    for name in ("conveyor_job_cpu_seconds_count", "conveyor_job_memory_peak_bytes_count"):
        assert value(samples, name, language="c", stage="compile") == 1
        assert value(samples, name, language="c", stage="run") == 1
        assert value(samples, name, language="python", stage="run") == 1
        assert value(samples, name, language="python", stage="compile") is None  # nothing compiled
    peak = value(samples, "conveyor_job_memory_peak_bytes_sum", language="python", stage="run")
    assert peak is not None and peak > 1 << 20  # an interpreter's worth, not zero


async def test_two_instances_on_one_redis_count_each_job_once(
    aiohttp_client: Any, sandbox: Runner, redis_url: str
) -> None:
    # Every instance sees every event of the cluster; only the one that caused an event counts it.
    front: Client = await aiohttp_client(create_app(make_settings(redis_url=redis_url, worker_slots=0), runner=sandbox))
    worker: Client = await aiohttp_client(
        create_app(make_settings(redis_url=redis_url, worker_slots=1), runner=sandbox)
    )
    for _ in range(2):
        assert await run(front, "print('ok')") == "completed"
    totals = []
    for client in (front, worker):
        samples = await scrape(client)
        totals.append(
            (
                value(samples, "conveyor_jobs_submitted_total", language="python") or 0,
                value(samples, "conveyor_jobs_total", status="completed", language="python") or 0,
            )
        )
    assert totals == [(2, 0), (0, 2)]


def test_labelled_series_past_the_remembered_bound_still_count(sandbox: Runner) -> None:
    """Metrics.child remembers at most MAX_CHILDREN labelled series (on Redis other instances' events may name
    languages this one does not offer); past it each is looked up again, and every count still lands."""
    metrics = create_app(make_settings(), runner=sandbox)[METRICS]
    for i in range(MAX_CHILDREN + 100):
        metrics.on_event({"type": "queued", "language": f"lang-{i}"})
    metrics.on_event({"type": "queued", "language": f"lang-{MAX_CHILDREN + 99}"})
    assert len(metrics._children) == MAX_CHILDREN
    samples = [sample for family in metrics.submitted.collect() for sample in family.samples]
    counted = {s.labels["language"]: s.value for s in samples if s.name.endswith("_total")}
    assert len(counted) == MAX_CHILDREN + 100 and counted[f"lang-{MAX_CHILDREN + 99}"] == 2.0
