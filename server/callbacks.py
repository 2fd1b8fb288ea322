"""Callbacks: a finished job delivered to the URL its submitter named, without becoming an SSRF proxy.

A callback URL is a request the server makes on a client's behalf, so it must not reach what the client cannot:
loopback, private and link-local networks, cloud metadata addresses, and this server itself. The check runs on the
address each socket is about to connect to (the connector's socket factory), after everything the client library
does to a URL: IDNA turns `127。0。0。1` or full-width digits into an IP literal that skips the resolver, so no
check on the URL's text can be trusted. The resolver also refuses a name with any address callbacks may not reach
(a name mixing public and private ones is a rebinding trick). Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .errors import BadRequest
from .loops import stop_task
from .settings import Settings

logger = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048
SIGNATURE_HEADER = "X-Conveyor-Signature"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class CallbackRefused(OSError):
    """The callback's host resolves to an address callbacks may not reach."""


REFUSED = "which callbacks may not reach"


def is_local_address(ip: IPAddress) -> bool:
    """Whether `ip` is one of this machine's own addresses (binding to it succeeds only then)."""
    family = socket.AF_INET6 if isinstance(ip, ipaddress.IPv6Address) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(ip), 0))
    except OSError:
        return False
    return True


class ConnectGuard:
    """The connector's socket factory: vets the address each connection is about to use."""

    def __init__(self, allowed: Sequence[IPNetwork], own_port: int) -> None:
        self._allowed = allowed
        self._own_port = own_port

    def __call__(self, addr_info: tuple[int, int, int, str, tuple[Any, ...]]) -> socket.socket:
        family, type_, proto, _, address = addr_info
        ip = ipaddress.ip_address(str(address[0]).partition("%")[0])
        port = int(address[1])
        if not address_allowed(ip, self._allowed):
            raise CallbackRefused(f"{ip} is an address {REFUSED}")
        # This server itself: a callback to our own port would be a request from us, past the limits of the door it
        # reaches. We listen only on our own addresses, so any local address with our port is us.
        if port == self._own_port and is_local_address(embedded_ipv4(ip) or ip):
            raise CallbackRefused(f"{ip} port {port} is this server, {REFUSED}")
        return socket.socket(family=family, type=type_, proto=proto)


def check_callback_url(url: str) -> str:
    """Validate a callback URL's form at submission (its addresses are vetted again at delivery)."""
    if len(url) > MAX_URL_LENGTH:
        raise BadRequest(f"callbackUrl is longer than {MAX_URL_LENGTH} characters.", field="callbackUrl")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise BadRequest("callbackUrl is not a valid URL.", field="callbackUrl") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("callbackUrl must be an http:// or https:// URL with a host.", field="callbackUrl")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("callbackUrl must not carry credentials.", field="callbackUrl")
    return url


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries to the IPv4 Internet (mapped, NAT64, 6to4, Teredo), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def address_allowed(ip: IPAddress, allowed: Sequence[IPNetwork]) -> bool:
    """Public unicast addresses are allowed; anything else (loopback, private, link-local and so the metadata
    services, shared, reserved, multicast, unspecified) only inside an operator's CALLBACK_ALLOWED_NETWORKS."""
    if any(ip in network for network in allowed if network.version == ip.version):
        return True
    inner = embedded_ipv4(ip)
    if inner is not None:
        return address_allowed(inner, allowed)
    return ip.is_global and not ip.is_multicast


class GuardedResolver(AbstractResolver):
    """Resolves as usual, then refuses the host when any of its addresses is one callbacks may not reach: a name
    that mixes public and private addresses is a rebinding trick, not a reason to try the public one."""

    def __init__(self, allowed: Sequence[IPNetwork]) -> None:
        self._allowed = allowed
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if not address_allowed(ipaddress.ip_address(result["host"]), self._allowed):
                raise CallbackRefused(f"{host} resolves to {result['host']}, {REFUSED}")
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(slots=True)
class Delivery:
    """One callback to make: where, how, and the body (the finished job, encoded once)."""

    job_id: str
    url: str
    body: bytes
    method: str = "POST"


class CallbackSender:
    """Delivers callbacks from a bounded backlog with a few workers, bounded retries and exponential backoff.

    The backlog is in memory: callbacks still pending when the instance stops are lost (logged), as a webhook
    sender's are when it dies; the job itself stays readable with its id.
    """

    def __init__(self, settings: Settings, *, workers: int = 4, backoff_s: float = 1.0) -> None:
        self._secret = settings.callback_secret.encode()
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in settings.callback_allowed_networks]
        self._own_port = settings.port
        self._timeout = aiohttp.ClientTimeout(total=settings.callback_timeout_ms / 1000.0)
        self._attempts = 1 + settings.callback_retries
        self._backlog: deque[Delivery] = deque()
        self._capacity = settings.callback_queue_size
        self._wakeup = asyncio.Event()
        self._workers = workers
        self._backoff_s = backoff_s
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def sign(self, body: bytes) -> str | None:
        """GitHub-style `sha256=<hex>` HMAC of the exact body, when a secret is configured."""
        if not self._secret:
            return None
        return "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()

    def enqueue(self, delivery: Delivery) -> bool:
        """Queue a delivery; False (logged, counted) when the backlog is full."""
        if len(self._backlog) >= self._capacity:
            self.dropped += 1
            logger.warning("callback for job %s dropped: %d callbacks already pending", delivery.job_id, self._capacity)
            return False
        self._backlog.append(delivery)
        self._wakeup.set()
        return True

    @property
    def pending(self) -> int:
        return len(self._backlog)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._allowed),
            socket_factory=ConnectGuard(self._allowed, self._own_port),
            limit=self._workers * 2,
        )
        # trust_env=False: an HTTP(S)_PROXY in the server's environment must not carry callbacks past the checks.
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, trust_env=False)
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self._workers)]

    async def close(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        if self._backlog:
            logger.warning("%d callbacks still pending at shutdown were not delivered", len(self._backlog))
            self._backlog.clear()
        if self._session is not None:
            await self._session.close()

    async def _work(self) -> None:
        while True:
            while not self._backlog:
                self._wakeup.clear()
                await self._wakeup.wait()
            delivery = self._backlog.popleft()
            try:
                await self.deliver(delivery)
            except Exception:
                logger.exception("callback for job %s failed unexpectedly", delivery.job_id)

    async def deliver(self, delivery: Delivery) -> bool:
        """Try a delivery up to 1 + CALLBACK_RETRIES times; True once the receiver answered 2xx."""
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
            outcome, retry = await self._attempt(delivery)
            if outcome is None:
                self.delivered += 1
                return True
            level = logging.INFO if retry and attempt + 1 < self._attempts else logging.WARNING
            logger.log(level, "callback for job %s to %s: %s", delivery.job_id, _origin(delivery.url), outcome)
            if not retry:
                break
        self.failed += 1
        return False

    async def _attempt(self, delivery: Delivery) -> tuple[str | None, bool]:
        """One request: (None, _) on success, else (what went wrong, whether another attempt can help)."""
        assert self._session is not None, "start() first"
        headers = {"Content-Type": "application/json", "User-Agent": "Conveyor-Callback"}
        signature = self.sign(delivery.body)
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        try:
            async with self._session.request(
                delivery.method, delivery.url, data=delivery.body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
        except CallbackRefused as exc:
            return f"refused: {exc}", False
        except aiohttp.ClientConnectorError as exc:
            # Several refused addresses come back as one OSError naming each.
            if isinstance(exc.os_error, CallbackRefused) or REFUSED in str(exc.os_error):
                return f"refused: {exc.os_error}", False
            return f"cannot connect: {exc.os_error}", True
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"request failed: {type(exc).__name__}", True
        if 200 <= status < 300:
            return None, False
        # Redirects are not followed (the target would escape the address checks); 4xx other than 408/429 will not
        # change on a retry.
        return f"answered {status}", status >= 500 or status in (408, 429)


def _origin(url: str) -> str:
    """Scheme, host and port only: a callback URL's path and query may carry the receiver's secrets."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


@asynccontextmanager
async def callback_sender(settings: Settings) -> AsyncIterator[CallbackSender]:
    """The sender for an app's lifetime (cleanup_ctx)."""
    sender = CallbackSender(settings)
    await sender.start()
    try:
        yield sender
    finally:
        await sender.close()
