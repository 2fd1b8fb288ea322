"""Signing in from the pages: a key exchanged once for an HttpOnly cookie no page script can read.

`POST /session` with `Authorization: Bearer <key>` answers with a `conveyor_session` cookie (HttpOnly, SameSite=
Strict, Secure over HTTPS, Path=/) that names the key's user and an expiry, signed with HMAC-SHA256 keyed by the
SHA-256 digest of that user's key as the keys file holds it. So the server keeps no session state (any instance
that reads the same keys file accepts the cookie, and a restart keeps it), replacing or removing a key in the file
ends every session made with it, and forging one takes the digest, which only the keys file holds. The pages never
see the key again after the sign-in form: reloads and WebSocket reconnects carry the cookie.

A cookie is an ambient credential, so a request it authenticates that changes something must come from the
server's own pages: an `Origin` (or, without one, a `Referer`) of another site is refused with 403.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from datetime import UTC, datetime

from aiohttp import web

from ..errors import Forbidden, Unauthorized
from ..keys import SETTINGS
from .apikeys import ApiKeyEntry, ApiKeys
from .identity import CLIENT, Client, parse_networks, served_over_https

SESSION_COOKIE = "conveyor_session"
# A real cookie is ~130 characters (a 64-character user name at most); anything much longer is not ours.
MAX_COOKIE_LENGTH = 256
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
APIKEYS = web.AppKey("apikeys", ApiKeys)


def issue(entry: ApiKeyEntry, now: float, ttl_s: int) -> str:
    """A cookie value for `entry`, valid for `ttl_s` seconds from `now`."""
    name = base64.urlsafe_b64encode(entry.name.encode()).decode().rstrip("=")
    expires = int(now) + ttl_s
    return f"{name}.{expires}.{_mac(entry, name, expires)}"


def verify(value: str, keys: ApiKeys, now: float, max_ttl_s: int | None = None) -> ApiKeyEntry | None:
    """The entry a cookie value was issued for, or None when it is malformed, forged, expired, its key is gone, or
    it runs more than `max_ttl_s` past `now` (issued under a longer SESSION_TTL_S than the server's now)."""
    if len(value) > MAX_COOKIE_LENGTH or not value.isascii():
        return None  # ASCII first: int() and base64 raise on some non-ASCII digits and letters (a 500, not a None)
    parts = value.split(".")
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 12:
        return None
    name, expires_text, mac = parts
    expires = int(expires_text)
    if expires <= now or (max_ttl_s is not None and expires > now + max_ttl_s):
        return None
    try:
        user = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    entry = keys.named(user)
    if entry is None or not hmac.compare_digest(mac, _mac(entry, name, expires)):
        return None
    return entry


def _mac(entry: ApiKeyEntry, name: str, expires: int) -> str:
    return hmac.new(entry.sha256, f"conveyor-session:{name}.{expires}".encode(), hashlib.sha256).hexdigest()


def session_client(request: web.Request, keys: ApiKeys, ip: str) -> Client | None:
    """The signed-in user of a request that carries a valid session cookie (checked against the keys file now).

    A request it authenticates that is not a safe method must come from this server's own origin."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value or len(keys) == 0:
        return None
    entry = verify(value, keys, time.time(), request.app[SETTINGS].session_ttl_s)
    if entry is None:
        return None  # stale or forged: anonymous, and the page's sign-in form is shown again
    if request.method not in _SAFE_METHODS and not _same_origin(request):
        raise Forbidden("A signed-in request that changes something must come from this server's pages.")
    return entry.client(ip)


def _same_origin(request: web.Request) -> bool:
    # ALLOWED_ORIGINS, as for /ws: behind a proxy that ends TLS the pages' origin is https, this server's http.
    own = request.app[SETTINGS].allowed_origins or (f"{request.scheme}://{request.host}",)
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin in own
    referer = request.headers.get("Referer")
    return referer is None or any(referer == mine or referer.startswith(mine + "/") for mine in own)


async def sign_in(request: web.Request) -> web.Response:
    """POST /session: exchange the Bearer key (checked, lockout included, by the middleware) for the cookie."""
    client = request[CLIENT]
    settings = request.app[SETTINGS]
    entry = request.app[APIKEYS].named(client.user) if client.user is not None else None
    if entry is None or request.headers.get("Authorization") is None:
        raise Unauthorized("Send Authorization: Bearer <your key> to sign in.", headers={"WWW-Authenticate": "Bearer"})
    now = time.time()
    response = _who(client, now + settings.session_ttl_s)
    response.set_cookie(
        SESSION_COOKIE,
        issue(entry, now, settings.session_ttl_s),
        max_age=settings.session_ttl_s,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=over_https(request),
    )
    return response


async def signed_in(request: web.Request) -> web.Response:
    """GET /session: who this request is, by its cookie (or key): the pages ask after a reload."""
    return _who(request[CLIENT], None)


async def sign_out(request: web.Request) -> web.Response:
    """DELETE /session: forget the cookie in this browser (the key itself stays valid until the keys file drops it)."""
    response = web.json_response({"user": None, "admin": False})
    response.del_cookie(SESSION_COOKIE, path="/", samesite="Strict", secure=over_https(request), httponly=True)
    return response


def _who(client: Client, expires: float | None) -> web.Response:
    body: dict[str, object] = {"user": client.user, "admin": client.admin}
    if expires is not None:
        body["expiresAt"] = datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z")
    return web.json_response(body)


def setup_sessions(app: web.Application, keys: ApiKeys) -> None:
    app[APIKEYS] = keys
    app.router.add_post("/session", sign_in)
    app.router.add_get("/session", signed_in)
    app.router.add_delete("/session", sign_out)


def over_https(request: web.Request) -> bool:
    """Whether this request reached us over HTTPS (ours, or a TRUSTED_PROXIES proxy's word): cookies are then Secure."""
    return served_over_https(request, parse_networks(request.app[SETTINGS].trusted_proxies))
