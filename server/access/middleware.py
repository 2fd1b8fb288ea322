"""The access middleware: identify every caller, limit the API routes, stamp the rate-limit headers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from ..errors import ConveyorError, TooManyRequests, Unauthorized
from ..settings import Settings
from .apikeys import JUDGE0_AUTH_HEADER, ApiKeys, authenticate
from .identity import CLIENT, Client, client_ip, parse_networks
from .lockout import AuthLockout
from .ratelimit.base import Bucket, Decision, decision_headers, raise_if_denied
from .ratelimit.limiter import RateLimiter
from .sessions import session_client

_READ_PATHS = frozenset({"/queue", "/runs", "/runtimes", "/cache/status", "/openapi.json", "/ws", "/metrics"})
# The Piston and Judge0 compat APIs draw from the same buckets as the native routes (a Judge0 batch draws one
# read here and one submit per submission in its handler, as `POST /runs` does).
_COMPAT_SUBMIT = frozenset({("POST", "/api/v2/execute"), ("POST", "/judge0/submissions")})
_COMPAT_PREFIXES = ("/api/v2/", "/judge0/")
_QUOTA_FREE_STATUSES = frozenset({401, 403})
# A submission refused as malformed ran nothing: it gives its submit token back and costs a read instead, so that
# someone learning the API is not locked out of running by shaped-wrong requests, and a flood of them stays bounded.
_MALFORMED_STATUSES = frozenset({400, 413, 415, 422})


def bucket_for(method: str, path: str) -> Bucket | None:
    """Which bucket a request draws from; None for pages, static files and /health."""
    if path[:8].lower() == "/api/v2/":
        path = path.lower().rstrip("/")  # Piston's routes take any case and a trailing slash, as Express's do
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

    Place it inside the error-to-JSON middleware: it raises Unauthorized / TooManyRequests. `on_denied` counts the
    lockout's 429s (the limiter counts its own).
    With `lockout`, a request that presents a key is refused (429) while its address is locked out, and a failed
    authentication counts towards the lockout.
    """
    return _RateLimit(limiter, keys, settings, on_denied or (lambda: None), lockout)


class _RateLimit:
    """The middleware itself (new-style: aiohttp reads `__middleware_version__`)."""

    __middleware_version__ = 1

    def __init__(
        self,
        limiter: RateLimiter,
        keys: ApiKeys,
        settings: Settings,
        denied: Callable[[], None],
        lockout: AuthLockout | None,
    ) -> None:
        self.limiter = limiter
        self.keys = keys
        self.settings = settings
        self.denied = denied
        self.lockout = lockout

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Before any bucket: a bad key is a 401 that costs no quota (but counts towards the address's lockout).
        client = await self._identify(request)
        request[CLIENT] = client
        bucket = bucket_for(request.method, request.path)
        if bucket is None:
            return await handler(request)
        decision = await _draw(self.limiter, client, bucket)
        try:
            response = await handler(request)
        except (ConveyorError, web.HTTPException) as exc:
            bucket, decision = await self._settle(client, bucket, decision, exc.status)
            _merge(exc.headers, decision_headers(decision, bucket))
            raise
        # A prepared response (a WebSocket, a stream) has sent its headers already.
        if not response.prepared:
            _merge(response.headers, decision_headers(decision, bucket))
        return response

    async def _identify(self, request: web.Request) -> Client:
        keys, settings = self.keys, self.settings
        if presents_key(request):
            if self.lockout is None:
                return authenticate(request, keys, settings)
            return await _identify_past_lockout(request, keys, settings, self.lockout, self.denied)
        # No key: the pages' sign-in cookie if there is a good one, else anonymous by address and owner token.
        client = authenticate(request, keys, settings)
        return session_client(request, keys, client.ip) or client

    async def _settle(self, client: Client, bucket: Bucket, decision: Decision, status: int) -> tuple[Bucket, Decision]:
        """The bucket and decision an error answer ends with: 401/403 give the token back; a malformed
        submission gives its submit token back and costs a read instead."""
        if status in _QUOTA_FREE_STATUSES:
            return bucket, await self.limiter.refund(client, bucket)
        if status in _MALFORMED_STATUSES and bucket == "submit":
            await self.limiter.refund(client, bucket)
            return "read", await _draw(self.limiter, client, "read")
        return bucket, decision


async def _identify_past_lockout(
    request: web.Request, keys: ApiKeys, settings: Settings, lockout: AuthLockout, denied: Callable[[], None]
) -> Client:
    ip = client_ip(request, parse_networks(settings.trusted_proxies))
    try:
        lockout.check(ip)
        try:
            return authenticate(request, keys, settings)
        except Unauthorized as exc:
            raise (await lockout.failed(ip)) or exc from None
    except TooManyRequests:  # locked out: a 429 like the others
        denied()
        raise


async def _draw(limiter: RateLimiter, client: Client, bucket: Bucket) -> Decision:
    decision = await limiter.hit(client, bucket)  # a denial is counted by the limiter itself (on_denied)
    if not decision.allowed:
        raise_if_denied(decision, bucket)
    return decision


def _merge(target: MutableMapping[str, str], headers: Mapping[str, str]) -> None:
    # The handler's own headers win (a 503's Retry-After is about the queue, not the bucket).
    present = {name.lower() for name in target}
    for name, value in headers.items():
        if name.lower() not in present:
            target[name] = value
