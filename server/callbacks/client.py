"""One callback request: through the SSRF guard, signed, named by its idempotency key, judged retryable or not."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

import aiohttp

from ..settings import Settings
from .guard import REFUSED, CallbackRefused, ConnectGuard, GuardedResolver
from .outbox import Delivery

SIGNATURE_HEADER = "X-Conveyor-Signature"
# The job's id, which the signed body carries too (`id`, Judge0's `token`): the same on every attempt, on every
# instance, after every restart, so a receiver drops the duplicates at-least-once delivery can bring.
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to: `error` is None on a 2xx; else whether another attempt can help."""

    error: str | None
    retry: bool = False


DELIVERED = Outcome(None)


class CallbackClient:
    """The HTTP side: one session whose connector vets every address (guard.py), no proxies, no redirects."""

    def __init__(self, settings: Settings) -> None:
        self._secret = settings.callback_secret.encode()
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in settings.callback_allowed_networks]
        self._own_port = settings.port
        self._timeout = aiohttp.ClientTimeout(total=settings.callback_timeout_ms / 1000.0)
        self._connections = settings.callback_workers * 2
        self._session: aiohttp.ClientSession | None = None

    def sign(self, body: bytes) -> str | None:
        """GitHub-style `sha256=<hex>` HMAC of the exact body, when a secret is configured."""
        if not self._secret:
            return None
        return "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._allowed),
            socket_factory=ConnectGuard(self._allowed, self._own_port),
            limit=self._connections,
        )
        # trust_env=False: an HTTP(S)_PROXY in the server's environment must not carry callbacks past the checks.
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, trust_env=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def attempt(self, delivery: Delivery) -> Outcome:
        """One request."""
        assert self._session is not None, "start() first"
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Conveyor-Callback",
            IDEMPOTENCY_HEADER: delivery.key,
        }
        signature = self.sign(delivery.body)
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        try:
            async with self._session.request(
                delivery.method, delivery.url, data=delivery.body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
        except CallbackRefused as exc:
            return Outcome(f"refused: {exc}")
        except aiohttp.ClientConnectorError as exc:
            # Several refused addresses come back as one OSError naming each.
            if isinstance(exc.os_error, CallbackRefused) or REFUSED in str(exc.os_error):
                return Outcome(f"refused: {exc.os_error}")
            return Outcome(f"cannot connect: {exc.os_error}", retry=True)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Outcome(f"request failed: {type(exc).__name__}", retry=True)
        if 200 <= status < 300:
            return DELIVERED
        # Redirects are not followed (the target would escape the address checks); 4xx other than 408/429 will not
        # change on a retry.
        return Outcome(f"answered {status}", retry=status >= 500 or status in (408, 429))
