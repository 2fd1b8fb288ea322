"""/docs: the API reference rendered locally by the bundled Swagger UI, its examples and the WebSocket protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from playwright.async_api import expect

from tests.browser import Pages, ServerFactory, origin_of, screenshot
from tests.conftest import AppClientFactory

ROOT = Path(__file__).resolve().parent.parent
SPEC: dict[str, Any] = orjson.loads((ROOT / "server" / "doors" / "openapi.json").read_bytes())


def _media_types() -> list[tuple[str, dict[str, Any]]]:
    """Every (where, media type object) that carries examples, in paths and in shared responses."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            body = operation.get("requestBody", {}).get("content", {})
            found += [(f"{method} {path} request", media) for media in body.values()]
            for status, response in operation["responses"].items():
                content = response.get("content", {})
                found += [(f"{method} {path} {status}", media) for media in content.values()]
    for name, response in SPEC["components"]["responses"].items():
        found += [(f"response {name}", media) for media in response.get("content", {}).values()]
    return [(where, media) for where, media in found if "examples" in media]


def test_main_endpoints_have_examples_that_fit_their_schemas() -> None:
    carrying = _media_types()
    described = {where for where, _ in carrying}
    for expected in (
        "post /run request",
        "post /run 200",
        "post /run 202",
        "get /queue/status 200",
        "get /queue/history 200",
        "get /ratelimit 200",
        "get /runtimes 200",
        "response TooManyRequests",
    ):
        assert expected in described, f"{expected} has no example"
    for where, media in carrying:
        for name, example in media["examples"].items():
            ref = example["$ref"].rsplit("/", 1)[1]
            value = SPEC["components"]["examples"][ref]["value"]
            validator = Draft202012Validator({**media["schema"], "components": SPEC["components"]})
            errors = [e.message for e in validator.iter_errors(value)]
            assert errors == [], f"example {name} of {where}: {errors}"


async def test_websocket_protocol_is_served_from_docs(app_client: AppClientFactory) -> None:
    client = await app_client()
    resp = await client.get("/docs/websocket.md")
    assert resp.status == 200 and resp.content_type == "text/markdown"
    assert await resp.text() == (ROOT / "docs" / "websocket.md").read_text(encoding="utf-8")
    page = await client.get("/docs")
    assert page.status == 200 and "default-src 'none'" in page.headers["Content-Security-Policy"]


@pytest.mark.browser
async def test_docs_render_operations_examples_and_the_websocket_protocol(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    page = await pages.open(server, "/docs", wait_socket=False)
    await expect(page.locator("body")).to_have_attribute("data-docs-ready", "true")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("Conveyor")
    operations = page.locator(".swagger-ui .opblock-summary-path")
    for path in ("/run", "/queue/status", "/queue/history", "/ratelimit", "/queue/job/{jobId}", "/runtimes"):
        await expect(operations.filter(has_text=path).first).to_be_visible()
    await screenshot(page, "docs", full_page=False)
    # "Try it out" and the examples point at this server, not the description's default one.
    await expect(page.locator(".swagger-ui .servers select")).to_contain_text(origin_of(server))
    await page.locator(".opblock-post .opblock-summary").first.click()
    await expect(page.locator(".opblock-post .opblock-body")).to_contain_text("print(input()[::-1])")
    await expect(page.locator(".opblock-post .opblock-body")).to_contain_text("olleh")
    protocol = page.locator("#websocket-protocol")
    await protocol.locator("summary").click()
    await expect(protocol).to_contain_text("Client → server")
    await expect(protocol.locator("table")).to_have_count(2)
    await expect(protocol).to_contain_text("retryAfter")


@pytest.mark.browser
async def test_docs_follow_the_dark_theme(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/docs", wait_socket=False)
    await expect(page.locator("body")).to_have_attribute("data-docs-ready", "true")
    await page.evaluate("Theme.set('dark')")
    await expect(page.locator("html")).to_have_class("dark-mode")
    title = await page.evaluate("getComputedStyle(document.querySelector('.swagger-ui .info .title')).color")
    await page.evaluate("Theme.set('light')")
    assert title != await page.evaluate("getComputedStyle(document.querySelector('.swagger-ui .info .title')).color")
