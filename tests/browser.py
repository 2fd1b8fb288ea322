"""Helpers for the browser tests: Debian's Chromium through Playwright, request recording and screenshots."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Playwright, ViewportSize, WebSocket

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
