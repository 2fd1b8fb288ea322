"""REST API against the real sandbox; every response is checked against the served OpenAPI document."""

from __future__ import annotations

import io
from typing import Any

import pytest

from server.keys import QUEUE
from tests.clients import Client, call, wait_for_status
from tests.conftest import AppClientFactory
from tests.queues import eventually

HELLO = {"language": "python", "code": "print('hello')"}
SLEEP = {"language": "python", "code": "import time\ntime.sleep(30)"}


async def test_run_waits_and_returns_the_job(client: Client) -> None:
    job = await call(client, "POST", "/run", 200, json={**HELLO, "stdin": "", "args": []})
    assert job["status"] == "completed"
    assert job["stdout"] == "hello\n" and job["exitCode"] == 0
    assert job["waitTimeMs"] >= 0 and job["executionTimeMs"] > 0
    assert len(job["id"]) == 32


async def test_run_without_waiting_then_poll(client: Client) -> None:
    resp = await client.post("/run?wait=false", json=HELLO)
    assert resp.status == 202
    body = await resp.json()
    assert resp.headers["Location"] == f"/queue/job/{body['jobId']}"
    # A free slot starts the job at once, so by the time the answer is written it may be running already.
    assert body["status"] in ("queued", "running")
    job = await wait_for_status(client, body["jobId"], {"completed"})
    assert job["stdout"] == "hello\n"


async def test_node_alias_from_the_seed(client: Client) -> None:
    job = await call(client, "POST", "/run", 200, json={"language": "node", "code": 'console.log("test")'})
    assert job["language"] == "javascript" and job["stdout"] == "test\n"


async def test_failed_job_has_a_reason(client: Client) -> None:
    job = await call(client, "POST", "/run", 200, json={"language": "python", "code": "raise SystemExit(3)"})
    assert (job["status"], job["exitCode"], job["reason"]) == ("failed", 3, "runtime_error")


async def test_timeout_status(client: Client) -> None:
    job = await call(client, "POST", "/run", 200, json={**SLEEP, "timeoutMs": 300})
    assert job["status"] == "timeout" and job["reason"] == "timeout"


async def test_cancel_rules(app_client: AppClientFactory) -> None:
    client = await app_client(max_concurrent_jobs=1)
    running = (await call(client, "POST", "/run?wait=false", 202, json=SLEEP))["jobId"]
    queued = (await call(client, "POST", "/run?wait=false", 202, json=HELLO))["jobId"]
    await wait_for_status(client, running, {"running"})
    job = await call(client, "GET", f"/queue/job/{queued}", 200)
    assert job["status"] == "queued" and job["position"] == 1
    assert await call(client, "DELETE", f"/queue/job/{queued}", 200) == {"id": queued, "status": "cancelled"}
    conflict = await call(client, "DELETE", f"/queue/job/{running}", 409)
    assert conflict["error"] == "Conflict" and "running" in conflict["message"]
    await call(client, "DELETE", f"/queue/job/{queued}", 409)
    await call(client, "DELETE", "/queue/job/0123456789abcdef0123456789abcdef", 404)
    await call(client, "GET", "/queue/job/nope", 404)
    stats = await call(client, "GET", "/queue/status", 200)
    assert stats["totalCancelled"] == 1


async def test_queue_full_is_503_with_retry_after(app_client: AppClientFactory) -> None:
    client = await app_client(max_concurrent_jobs=1, max_queue_size=1)
    first = (await call(client, "POST", "/run?wait=false", 202, json=SLEEP))["jobId"]
    await wait_for_status(client, first, {"running"})
    await call(client, "POST", "/run?wait=false", 202, json=SLEEP)
    resp = await client.post("/run", json=HELLO)
    body = await resp.json()
    assert resp.status == 503
    assert body["error"] == "Queue full" and body["retryAfter"] >= 1
    assert resp.headers["Retry-After"] == str(body["retryAfter"])
    stats = await call(client, "GET", "/queue/status", 200)
    assert stats["totalRejected"] == 1 and stats["queueLength"] == 1 and stats["runningCount"] == 1


async def test_status_health_runtimes(client: Client) -> None:
    await call(client, "POST", "/run", 200, json=HELLO)
    stats = await call(client, "GET", "/queue/status", 200)
    assert stats["totalQueued"] == 1 and stats["totalProcessed"] == 1
    assert (stats["maxConcurrent"], stats["maxQueueSize"]) == (2, 20)
    health = await call(client, "GET", "/health", 200)
    assert health["status"] == "ok" and health["queue"]["totalProcessed"] == 1
    assert "memory" in str(health["sandbox"])
    runtimes = await call(client, "GET", "/runtimes", 200)
    languages = {r["language"] for r in runtimes}
    assert {"python", "javascript", "bash"} <= languages
    javascript = next(r for r in runtimes if r["language"] == "javascript")
    assert "node" in javascript["aliases"] and javascript["version"]


async def test_openapi_document_is_served(client: Client) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    spec = await resp.json()
    assert spec["openapi"].startswith("3.1") and "/run" in spec["paths"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"code": "print(1)"}, 400, "language"),
        ({"language": "python"}, 400, "code"),
        ({"language": 3, "code": "x"}, 400, "language"),
        ({"language": "python", "code": ["x"]}, 400, "code"),
        ({"language": "python", "code": "x", "stdin": 5}, 400, "stdin"),
        ({"language": "python", "code": "x", "args": "a b"}, 400, "args"),
        ({"language": "python", "code": "x", "args": [1]}, 400, "args"),
        ({"language": "python", "code": "x", "priority": -1}, 400, "priority"),
        ({"language": "python", "code": "x", "priority": 1.5}, 400, "priority"),
        ({"language": "python", "code": "x", "priority": True}, 400, "priority"),
        ({"language": "python", "code": "x", "timeoutMs": 999_999}, 400, "timeoutMs"),
        ({"language": "python", "code": "x", "timeoutMs": 0}, 400, "timeoutMs"),
        ({"language": "python", "code": "   "}, 400, "code"),
        ({"language": "python", "code": "x" * 65_537}, 413, "code"),
        ({"language": "python", "code": "x", "priority": 5}, 403, "priority"),
    ],
)
async def test_bad_submissions_name_the_field(client: Client, body: dict[str, Any], status: int, field: str) -> None:
    error = await call(client, "POST", "/run", status, json=body)
    if status == 403:  # a privilege, not a malformed field: the body names the caller's maximum instead
        assert error["maxPriority"] == 0 and "priority" in error["message"].lower()
    else:
        assert error["field"] == field
    assert set(error) >= {"error", "message"}


async def test_an_unknown_field_is_named_not_ignored(app_client: AppClientFactory) -> None:
    client = await app_client()
    # The typo ran with no input before: now a 400 naming it, on each native door.
    error = await call(client, "POST", "/run", 400, json={**HELLO, "stdn": "x", "zz": 1})
    assert error["field"] == "stdn" and error["unknown"] == ["stdn", "zz"] and "stdn" in error["message"]
    answer = await call(client, "POST", "/runs", 200, json={"submissions": [{**HELLO, "stdn": "x"}, HELLO]})
    assert [r["status"] for r in answer["runs"]] == [400, 202] and answer["runs"][0]["unknown"] == ["stdn"]
    bad_test = {"language": "python", "code": "print(input())", "tests": [{"stdin": "1", "expected": "1"}]}
    assert (await call(client, "POST", "/run", 400, json=bad_test))["unknown"] == ["tests[0].expected"]
    bad_file = {"language": "python", "files": [{"name": "a.py", "content": "print(1)", "mode": "x"}]}
    assert (await call(client, "POST", "/run", 400, json=bad_file))["unknown"] == ["files[0].mode"]


async def test_malformed_submissions_cost_no_submit_token(app_client: AppClientFactory) -> None:
    # A user learning the API with 3 runs a minute is not locked out of running by shaped-wrong requests; they are
    # bounded as reads instead (the read bucket, here 6).
    client = await app_client(rate_limit_requests=3, rate_limit_read_requests=6)
    wrong: list[dict[str, Any]] = [
        {"json": {**HELLO, "stdn": "x"}},
        {"json": {"language": "python"}},
        {"json": {"language": "python", "code": "x" * 65_537}},
        {"data": b"language=python", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
    ]
    for kwargs in wrong:
        resp = await client.post("/run", **kwargs)
        assert resp.status in (400, 413, 415), await resp.text()
    # The read bucket: five malformed submissions took five, one is left; then malformed ones are refused.
    assert (await client.post("/run", json={"language": "python"})).status == 400
    assert (await client.post("/run", json={"language": "python"})).status == 429
    for _ in range(3):
        resp = await client.post("/run", json=HELLO)
        assert resp.status == 200, await resp.text()
    assert (await client.post("/run", json=HELLO)).status == 429  # the submit bucket still holds
    stats = client.app[QUEUE]
    await eventually(lambda: _rate_limited(stats, 2))  # both 429s counted


async def _rate_limited(queue: Any, count: int) -> bool:
    return bool((await queue.stats())["totalRateLimited"] >= count)


async def test_unknown_language_lists_valid_ones(client: Client) -> None:
    error = await call(client, "POST", "/run", 400, json={"language": "no-such-lang", "code": "x"})
    assert "no-such-lang" in error["message"] and "python" in error["message"]
    assert "node" in error["valid"]


@pytest.mark.parametrize(
    ("data", "headers", "status"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400),
        (b"", {"Content-Type": "application/json"}, 400),
        (b"language=python", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ],
)
async def test_malformed_bodies(client: Client, data: bytes, headers: dict[str, str], status: int) -> None:
    error = await call(client, "POST", "/run", status, data=data, headers=headers)
    assert error["error"] and error["message"]


async def test_bad_wait_parameter(client: Client) -> None:
    await call(client, "POST", "/run?wait=maybe", 400, json=HELLO)


async def test_oversized_body_is_json_413(client: Client) -> None:
    big = io.BytesIO(b"x" * (3 * 1024 * 1024))
    resp = await client.post("/run", data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    body = await resp.json()
    assert body["error"] == "Request Entity Too Large" and body["message"]


async def test_unknown_route_and_method_are_json(client: Client) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404 and (await resp.json())["error"] == "Not Found"
    resp = await client.put("/run")
    assert resp.status == 405 and "PUT" in (await resp.json())["message"]
    assert "POST" in resp.headers["Allow"]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:3001", "127.0.0.1.nip.io", "localhost.evil.example"])
async def test_a_dns_rebinding_host_is_refused_on_a_loopback_server(app_client: AppClientFactory, host: str) -> None:
    # A page on evil.example whose name now resolves to 127.0.0.1 reaches a local server with its own Host header.
    client = await app_client(host="127.0.0.1")
    for method, path in (("GET", "/queue/status"), ("POST", "/run"), ("GET", "/"), ("GET", "/ws")):
        resp = await client.request(method, path, headers={"Host": host}, json=HELLO if method == "POST" else None)
        assert resp.status == 421, (path, resp.status)
        body = await resp.json()
        assert body["error"] == "Misdirected request" and "ALLOWED_HOSTS" in body["message"]
    for good in ("localhost:3001", "127.0.0.1", "[::1]:3001", "LOCALHOST"):
        assert (await client.get("/queue/status", headers={"Host": good})).status == 200, good


async def test_allowed_hosts_when_set_and_any_host_on_a_public_address(app_client: AppClientFactory) -> None:
    client = await app_client(host="127.0.0.1", allowed_hosts=("conveyor.example",))
    assert (await client.get("/queue/status", headers={"Host": "conveyor.example:443"})).status == 200
    assert (await client.get("/queue/status", headers={"Host": "localhost"})).status == 421
    public = await app_client(host="0.0.0.0")
    assert (await public.get("/queue/status", headers={"Host": "anything.example"})).status == 200
