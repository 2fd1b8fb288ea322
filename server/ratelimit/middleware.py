"""The aiohttp middleware: identify every caller, limit the API routes, stamp the rate-limit headers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from ..apikeys import JUDGE0_AUTH_HEADER, ApiKeys, authenticate
from ..errors import ConveyorError, Unauthorized
from ..identity import Client, client_ip, parse_networks
from ..keys import CLIENT
from ..settings import Settings
from .base import Bucket, decision_headers, raise_if_denied
from .limiter import RateLimiter

if TYPE_CHECKING:
    from ..lockout import AuthLockout

_READ_PATHS = frozenset({"/queue", "/runs", "/runtimes", "/cache/status", "/openapi.json", "/ws"})
# The Piston and Judge0 compat APIs draw from the same buckets as the native routes (a Judge0 batch draws one
# read here and one submit per submission in its handler, as `POST /runs` does).
_COMPAT_SUBMIT = frozenset({("POST", "/api/v2/execute"), ("POST", "/judge0/submissions")})
_COMPAT_PREFIXES = ("/api/v2/", "/judge0/")
_QUOTA_FREE_STATUSES = frozenset({401, 403})
# A submission refused as malformed ran nothing: it gives its submit token back and costs a read instead, so that
# someone learning the API is not locked out of running by shaped-wrong requests, and a flood of them stays bounded.
_MALFORMED_STATUSES = frozenset({400, 413, 415, 422})


def bucket_for(method: str, path: str) -> Bucket | None:
    """Which bucket a request draws from; None for pages, static files, /health and /metrics."""
    if path == "/run":
        return "submit" if method == "POST" else None
    if (method, path) in _COMPAT_SUBMIT:
        return "submit"
    if path in _READ_PATHS or path.startswith(("/queue/", *_COMPAT_PREFIXES)):
        return "read"
    return None


def presents_key(request: web.BaseRequest) -> bool:
    """Does the request name an API key (Authorization, or Judge0's X-Auth-Token on its routes): what the lockout
    guards."""
    return hdrs.AUTHORIZATION in request.headers or (
        JUDGE0_AUTH_HEADER in request.headers and request.path.startswith("/judge0/")
    )


def ratelimit_middleware(
    limiter: RateLimiter,
    keys: ApiKeys,
    settings: Settings,
    *,
    on_denied: Callable[[], None] | None = None,
    lockout: AuthLockout | None = None,
) -> Middleware:
    """Identify every caller into `request[CLIENT]`, limit the API routes and add the headers to their responses.

    Place it inside the error-to-JSON middleware: it raises Unauthorized / TooManyRequests. `on_denied` counts 429s.
    With `lockout`, a request that presents a key is refused (429) while its address is locked out, and a failed
    authentication counts towards the lockout.
    """

    async def identify(request: web.Request) -> Client:
        if lockout is None or not presents_key(request):
            return authenticate(request, keys, settings)
        ip = client_ip(request, parse_networks(settings.trusted_proxies))
        lockout.check(ip)
        try:
            return authenticate(request, keys, settings)
        except Unauthorized as exc:
            raise (await lockout.failed(ip)) or exc from None

    @web.middleware
    async def ratelimit(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Before any bucket: a bad key is a 401 that costs no quota (but counts towards the address's lockout).
        client = await identify(request)
        request[CLIENT] = client
        bucket = bucket_for(request.method, request.path)
        if bucket is None:
            return await handler(request)
        decision = await limiter.hit(client, bucket)
        if not decision.allowed:
            if on_denied is not None:
                on_denied()
            raise_if_denied(decision, bucket)
        try:
            response = await handler(request)
        except (ConveyorError, web.HTTPException) as exc:
            if exc.status in _QUOTA_FREE_STATUSES:
                decision = await limiter.refund(client, bucket)
            elif exc.status in _MALFORMED_STATUSES and bucket == "submit":
                await limiter.refund(client, bucket)
                bucket = "read"
                decision = await limiter.hit(client, bucket)
                if not decision.allowed:
                    if on_denied is not None:
                        on_denied()
                    raise_if_denied(decision, bucket)
            _merge(exc.headers, decision_headers(decision, bucket))
            raise
        # A prepared response (a WebSocket, a stream) has sent its headers already.
        if not response.prepared:
            _merge(response.headers, decision_headers(decision, bucket))
        return response

    return ratelimit


def _merge(target: MutableMapping[str, str], headers: Mapping[str, str]) -> None:
    # The handler's own headers win (a 503's Retry-After is about the queue, not the bucket).
    present = {name.lower() for name in target}
    for name, value in headers.items():
        if name.lower() not in present:
            target[name] = value
