"""Helpers for the browser tests: Debian's Chromium through Playwright, pages that record what they request, the
servers they talk to, the editor's and the dashboard's common steps, and screenshots."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, ConsoleMessage, Page, Playwright, ViewportSize, WebSocket, expect

from server.access.identity import new_owner_token
from server.hub.hub import HUB

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Headless and quiet: no background networking, no component updates, nothing that reaches outside the test.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
# `make screenshots` sets this to docs/screenshots: the README's pictures are taken by the tests that check the pages.
PUBLISH = os.environ.get("CONVEYOR_SCREENSHOTS", "")
VIEWPORT: ViewportSize = {"width": 1400, "height": 860}
# Generous: the first run of a language in a session may compile or warm caches, and CI machines are shared. Waits
# end as soon as the DOM condition holds, so this costs nothing when things are fast.
expect.set_options(timeout=60_000)
ServerFactory = Callable[..., Awaitable[TestServer]]
# For servers whose test keeps a sleeping job running while the page acts on it (stops it, cancels it, shows it
# running): the tests' 5 s job timeout could end it first on a loaded machine. Pass as serve(job_timeout_ms=...).
LONG_JOB_MS = 120_000
OWNER = new_owner_token()


async def launch(playwright: Playwright) -> Browser:
    """Debian's Chromium (`playwright install` cannot download browsers here, and must not be needed)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (or set CHROMIUM to a Chromium binary)")
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@dataclass
class Recorder:
    """Every URL a page asked for (HTTP requests and WebSocket handshakes) and every WebSocket frame it received."""

    urls: list[str] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)
    # The size in bytes of every WebSocket frame it sent.
    sent: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Content-Security-Policy refusals (Chromium reports them as console errors): a page must need none.
    csp: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("websocket", self._on_websocket)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._on_console)

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.csp.append(message.text)

    def _on_websocket(self, ws: WebSocket) -> None:
        self.urls.append(ws.url)
        ws.on("framereceived", lambda payload: self.frames.append(payload if isinstance(payload, str) else ""))
        ws.on(
            "framesent",
            lambda payload: self.sent.append(len(payload.encode() if isinstance(payload, str) else payload)),
        )

    def outside(self, origin: str) -> list[str]:
        """URLs that are neither this origin over HTTP nor its WebSocket endpoint."""
        ws_origin = "ws" + origin.removeprefix("http")
        allowed = (origin + "/", ws_origin + "/")
        return [url for url in self.urls if not url.startswith(allowed)]


async def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Save a PNG under tests/artifacts/ (git-ignored) for a human to look at, and under $CONVEYOR_SCREENSHOTS."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    if PUBLISH:
        Path(PUBLISH).mkdir(parents=True, exist_ok=True)
        (Path(PUBLISH) / path.name).write_bytes(path.read_bytes())
    return path


class Pages:
    """Opens pages in fresh browser contexts and records what each one requested."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.recorders: dict[Page, tuple[Recorder, str]] = {}

    async def open(
        self, server: TestServer, path: str, *, viewport: ViewportSize = VIEWPORT, wait_socket: bool = True
    ) -> Page:
        context = await self.browser.new_context(viewport=viewport)
        page = await context.new_page()
        recorder = Recorder()
        recorder.attach(page)
        origin = origin_of(server)
        self.recorders[page] = (recorder, origin)
        await page.goto(origin + path)
        if wait_socket:
            await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
        return page

    def recorder(self, page: Page) -> Recorder:
        return self.recorders[page][0]

    async def close(self) -> None:
        for page in self.recorders:
            await page.context.close()


def origin_of(server: TestServer) -> str:
    return str(server.make_url("/")).rstrip("/")


async def submit(
    server: TestServer, code: str, language: str = "python", *, wait: bool = False, stdin: str = ""
) -> dict[str, Any]:
    """POST /run as an anonymous REST client holding the owner token OWNER (so that it may stop its jobs)."""
    async with aiohttp.ClientSession() as session:
        url = server.make_url("/run").with_query(wait="true" if wait else "false")
        run = {"language": language, "code": code, "stdin": stdin}
        async with session.post(url, json=run, headers={"X-Owner-Token": OWNER}) as resp:
            body: dict[str, Any] = await resp.json()
            body["httpStatus"] = resp.status
            return body


async def stop_as_owner(server: TestServer, job_id: str) -> None:
    """Stop a job `submit` queued, with its owner token (REST)."""
    async with aiohttp.ClientSession() as session:
        url = server.make_url(f"/queue/job/{job_id}/stop")
        async with session.post(url, headers={"X-Owner-Token": OWNER}) as resp:
            assert resp.status == 200, await resp.text()


async def stop_server(server: TestServer) -> None:
    """Stop like a deploy does. The hub closes its sockets (1001) in a cleanup context, which aiohttp runs only
    after waiting up to 60 s for open handlers, WebSockets included; closing them first (what an on_shutdown hook
    in app.py would do) keeps the test quick. Reported to the hub's owner."""
    await server.app[HUB].close()
    await server.close()


# -- editor -------------------------------------------------------------------------------------------------------


async def editor_ready(page: Page) -> None:
    await expect(page.locator("#language")).to_have_value("python")
    await expect(page.locator("#run")).to_be_enabled()


EDITOR_VIEW = "CM.EditorView.findFromDOM(document.querySelector('#code-editor').shadowRoot.querySelector('.cm-editor'))"


async def set_code(page: Page, text: str) -> None:
    """Replace the editor's text as a paste would (Playwright's fill types into the contenteditable through the
    browser's editing commands, which add style attributes the pages' CSP refuses)."""
    await page.evaluate(
        f"(text) => {{ const view = {EDITOR_VIEW}; "
        "view.dispatch({changes: {from: 0, to: view.state.doc.length, insert: text}, userEvent: 'input.paste'}); }",
        text,
    )
    await expect_code(page, text)


async def code_of(page: Page) -> str:
    """The editor's text, from CodeMirror's state (the DOM shows only the visible lines)."""
    text: str = await page.evaluate(f"{EDITOR_VIEW}.state.doc.toString()")
    return text


async def expect_code(page: Page, expected: str | re.Pattern[str]) -> None:
    """Wait until the editor's text equals `expected` (or matches it, for a pattern)."""
    text = ""
    try:
        async with asyncio.timeout(20):
            while True:
                text = await code_of(page)
                if expected.search(text) if isinstance(expected, re.Pattern) else text == expected:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"editor text {text!r} never became {expected!r}") from None


def handle(server: TestServer, job_id: str) -> str:
    """The display handle a dashboard shows for `job_id` (viewers never get the id itself)."""
    return server.app[HUB].handles(job_id)


def row(page: Page, server: TestServer, job_id: str) -> Any:
    return page.locator(f'#jobs-body tr[data-handle="{handle(server, job_id)}"]')
