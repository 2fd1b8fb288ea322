"""The browser pages: the editor at `/`, the dashboard at `/dashboard`, the API reference at `/docs`, their files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from ..access.identity import OWNER_COOKIE, OWNER_TOKEN, new_owner_token
from ..access.sessions import over_https
from ..keys import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = ROOT / "templates"
STATIC_DIR = ROOT / "static"
WEBSOCKET_DOC = ROOT / "docs" / "websocket.md"

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
        OWNER_COOKIE,
        new_owner_token(),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=over_https(request),
    )


async def get_editor(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return _render(
        "editor",
        request,
        {
            "maxCodeBytes": settings.max_code_bytes,
            "maxStdinBytes": settings.max_stdin_bytes,
            "wsMaxMessageBytes": settings.ws_max_message_bytes,
            "jobRetentionSeconds": settings.job_retention_seconds,
            "memoryLimitMb": settings.memory_limit_mb,
            "jobTimeoutMs": settings.job_timeout_ms,
            "maxTests": settings.max_tests,
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
            "maxBatchSize": settings.max_batch_size,
        },
    )


async def get_docs(request: web.Request) -> web.Response:
    return _render("docs", request, {})


async def get_websocket_doc(request: web.Request) -> web.Response:
    """The WebSocket protocol (docs/websocket.md), which /docs shows under the REST operations."""
    return web.Response(
        text=WEBSOCKET_DOC.read_text(encoding="utf-8"), content_type="text/markdown", headers=PAGE_HEADERS
    )


# A versioned URL (`?v=<hash of the file>`) names one content for ever; an unversioned one may change.
IMMUTABLE = "public, max-age=31536000, immutable"
# The pages' own scripts and styles: small, served from memory and compressed per request (the vendor bundles are
# large and carry gzipped twins that the static route sends as they are).
OWN_ASSET = r"{name:[a-z]+\.(?:js|css)}"
_ASSET_TYPES = {".js": "text/javascript", ".css": "text/css"}
_assets: dict[str, tuple[float, bytes]] = {}  # name -> (mtime, bytes); at most the files of static/


async def get_asset(request: web.Request) -> web.StreamResponse:
    """One of the pages' own files: compressed when the browser accepts it, cached for ever when versioned."""
    name = request.match_info["name"]
    path = STATIC_DIR / name
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        raise web.HTTPNotFound() from None
    cached = _assets.get(name)
    if cached is None or cached[0] != mtime:
        cached = _assets[name] = (mtime, path.read_bytes())
    response = web.Response(body=cached[1], content_type=_ASSET_TYPES[path.suffix], charset="utf-8")
    response.enable_compression()
    return response


async def _cache_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/static/") and response.status == 200:
        response.headers["Cache-Control"] = IMMUTABLE if "v" in request.query else "no-cache"


def setup_pages(app: web.Application) -> None:
    """Jinja2 with autoescaping, the page routes and `/static/` (versioned URLs, so caches never go stale)."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    app.router.add_get("/", get_editor, name="editor")
    app.router.add_get("/dashboard", get_dashboard, name="dashboard")
    app.router.add_get("/docs", get_docs, name="docs")
    app.router.add_get("/docs/websocket.md", get_websocket_doc)
    app.router.add_get(f"/static/{OWN_ASSET}", get_asset)  # before the static route, which serves the rest
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=True)
    app.on_response_prepare.append(_cache_headers)
