"""What the Piston and Judge0 doors share at the boundary: body timeouts, JSON only, 429s counted once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from tests.conftest import AppClientFactory, keys_file

Client = TestClient[Request, Application]
# Every compat route that takes a JSON body.
OPS_KEY = "ops-secret-key"
JSON_ROUTES = ["/api/v2/execute", "/judge0/submissions", "/judge0/submissions/batch"]


@pytest.mark.parametrize("path", JSON_ROUTES)
async def test_a_body_that_never_arrives_gets_408(app_client: AppClientFactory, path: str) -> None:
    client = await app_client(http_body_timeout_ms=200)
    assert client.server.host is not None and client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            '{"language"'.encode()
        )
        # Generous: the body timeout is 0.2 s. Without one the handler waits for the rest for ever.
        status_line = await asyncio.wait_for(reader.readline(), 30)
        assert status_line.split()[1] == b"408", status_line
    finally:
        writer.close()


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize(
    "content_type", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", None]
)
async def test_only_json_bodies_are_read(client: Client, path: str, content_type: str | None) -> None:
    # A cross-site form (or a Blob with no type) can send these without a preflight: none may submit a job.
    body = '{"language": "python", "version": "*", "files": [{"content": "print(1)"}], "source_code": "print(1)", '
    body += '"language_id": 71, "submissions": [{"source_code": "print(1)", "language_id": 71}]}'
    headers = {"Content-Type": content_type} if content_type else {}
    skip = [] if content_type else ["Content-Type"]
    response = await client.post(path, data=body, headers=headers, skip_auto_headers=skip)
    assert response.status == 415
    assert "application/json" in str(await response.json())
    stats = await (await client.get("/queue/status")).json()
    assert stats["totalQueued"] == 0


async def test_every_doors_429_is_counted_once(app_client: AppClientFactory, tmp_path: Path) -> None:
    # The Judge0 batch, the native batch and the admin's rerun raised their 429 without counting it; the counting
    # is now the limiter's own, so each denial is counted once, whichever door drew the token.
    client = await app_client(
        rate_limit_requests=1, rate_limit_burst=1, api_keys_file=keys_file(tmp_path, {"ops": (OPS_KEY, True)})
    )
    item = {"source_code": "print(1)", "language_id": 71}
    answers = await (await client.post("/judge0/submissions/batch", json={"submissions": [item, item]})).json()
    assert [list(answer) for answer in answers] == [["token"], ["error"]]
    assert await rate_limited(client) == 1
    runs = await client.post("/runs", json={"submissions": [{"language": "python", "code": "print(1)"}]})
    assert [run["status"] for run in (await runs.json())["runs"]] == [429]
    assert await rate_limited(client) == 2
    assert (await client.post("/api/v2/execute", json={"language": "python", "version": "*", "files": []})).status
    assert await rate_limited(client) == 3
    ops = {"Authorization": f"Bearer {OPS_KEY}"}
    job = await (await client.post("/run?wait=false", json={"language": "python", "code": "1"}, headers=ops)).json()
    assert (await client.post(f"/queue/job/{job['jobId']}/rerun", headers=ops)).status == 429
    assert await rate_limited(client) == 4


async def rate_limited(client: Client) -> int:
    count: int = (await (await client.get("/queue/status")).json())["totalRateLimited"]
    return count
