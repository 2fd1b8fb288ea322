"""What the tests' clients do over and over: REST calls checked against openapi.json, waits for a job's status,
and WebSocket messages read one at a time or up to a kind. Waits end as soon as what they wait for is there."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator

from tests.conftest import scaled

Client = TestClient[web.Request, web.Application]
SPEC: dict[str, Any] = orjson.loads((Path(__file__).parent.parent / "server" / "doors" / "openapi.json").read_bytes())
TERMINAL = {"completed", "failed", "timeout", "cancelled"}


def _template_matches(template: str, path: str) -> bool:
    return re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)), path) is not None


def _response_schema(path: str, method: str, status: int) -> dict[str, Any]:
    template = next((p for p in SPEC["paths"] if _template_matches(p, path)), None)
    assert template is not None, f"{path} is not in openapi.json"
    operation = SPEC["paths"][template][method.lower()]
    response = operation["responses"].get(str(status))
    assert response is not None, f"{method} {template} does not document status {status}"
    if "$ref" in response:
        response = SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


async def call(client: Client, method: str, path: str, status: int, **kwargs: Any) -> Any:
    """Make a request, assert its status, and validate the JSON body against openapi.json."""
    resp = await client.request(method, path, **kwargs)
    body = await resp.json()
    assert resp.status == status, body
    assert resp.content_type == "application/json"
    schema = _response_schema(path.split("?")[0], method, status)
    Draft202012Validator({**schema, "components": SPEC["components"]}).validate(body)
    return body


async def wait_for_status(
    client: Client, job_id: str, statuses: set[str], timeout: float = scaled(60), headers: dict[str, str] | None = None
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            job = await call(client, "GET", f"/queue/job/{job_id}", 200, headers=headers)
            if job["status"] in statuses:
                return job  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)


async def recv(ws: ClientWebSocketResponse, timeout: float = scaled(60)) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == WSMsgType.TEXT, msg
    data: dict[str, Any] = orjson.loads(msg.data)
    return data


async def until(ws: ClientWebSocketResponse, kind: str | set[str], timeout: float = scaled(60)) -> list[dict[str, Any]]:
    """Every message up to and including the first of type `kind`."""
    kinds = {kind} if isinstance(kind, str) else kind
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            message = await recv(ws)
            seen.append(message)
            if message["type"] in kinds:
                return seen
