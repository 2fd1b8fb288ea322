"""The browser pages: the editor at `/`, the live dashboard at `/dashboard`, their templates and static files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .identity import OWNER_COOKIE, OWNER_TOKEN, new_owner_token
from .keys import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = ROOT / "templates"
STATIC_DIR = ROOT / "static"

# The pages load only their own scripts and styles and talk only to this server: a injected script (if escaping
# ever failed) could not load code or send data elsewhere. 'self' covers the same-origin ws:// in CSP 3.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# The dashboard's charts cover this many minutes (client-side ring buffer).
CHART_WINDOW_MINUTES = 15


def _render(page: str, request: web.Request, config: dict[str, Any]) -> web.Response:
    response = aiohttp_jinja2.render_template(f"{page}.html", request, {"page": page, "config": config})
    response.headers.update(PAGE_HEADERS)
    _give_owner_token(request, response)
    return response


def _give_owner_token(request: web.Request, response: web.Response) -> None:
    """A browser's owner token: HttpOnly (page scripts, and so an injected one, never read it), SameSite=Strict
    (no other site's page can make the browser send it), for this browser session. The same-origin WebSocket
    and REST calls carry it, so a reloaded editor still owns its running job."""
    current = request.cookies.get(OWNER_COOKIE)
    if current is not None and OWNER_TOKEN.fullmatch(current):
        return
    response.set_cookie(
        OWNER_COOKIE, new_owner_token(), path="/", httponly=True, samesite="Strict", secure=request.secure
    )


async def get_editor(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return _render(
        "editor",
        request,
        {
            "maxCodeBytes": settings.max_code_bytes,
            "maxStdinBytes": settings.max_stdin_bytes,
            "jobTimeoutMs": settings.job_timeout_ms,
        },
    )


async def get_dashboard(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return _render(
        "dashboard",
        request,
        {
            "statsIntervalMs": settings.stats_interval_ms,
            "maxConcurrent": settings.max_concurrent_jobs,
            "maxQueueSize": settings.max_queue_size,
            "chartWindowMinutes": CHART_WINDOW_MINUTES,
        },
    )


def setup_pages(app: web.Application) -> None:
    """Jinja2 with autoescaping, the two page routes and `/static/` (versioned URLs, so caches never go stale)."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    app.router.add_get("/", get_editor, name="editor")
    app.router.add_get("/dashboard", get_dashboard, name="dashboard")
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=True)
