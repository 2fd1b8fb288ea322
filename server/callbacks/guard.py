"""The callbacks' SSRF guard: a finished job delivered to the URL its submitter named, never as an SSRF proxy.

A callback URL is a request the server makes on a client's behalf, so it must not reach what the client cannot:
loopback, private and link-local networks, cloud metadata addresses, and this server itself. The check runs on the
address each socket is about to connect to (the connector's socket factory), after everything the client library
does to a URL: IDNA turns `127。0。0。1` or full-width digits into an IP literal that skips the resolver, so no
check on the URL's text can be trusted. The resolver also refuses a name with any address callbacks may not reach
(a name mixing public and private ones is a rebinding trick). Redirects are never followed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from ..errors import BadRequest

MAX_URL_LENGTH = 2048
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
