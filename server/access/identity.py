"""Client identity: who is calling (an API-key user or an anonymous address) for quotas and priority, and which
owner its jobs get (the key's user, or an anonymous owner token; never the address)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiohttp import web

from ..errors import BadRequest, Forbidden

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# One IPv6 customer usually holds a whole /56 (often a /48), so keying by the full address would give each caller
# 2**72 free buckets. A /56 is the common residential delegation (RIPE-690); /64 would be one LAN.
IPV6_PREFIX = 56


@dataclass(frozen=True, slots=True)
class Client:
    """The caller of one request or WebSocket.

    `key` identifies the quota bucket: "user:<name>" for an API-key user, "ip:<address>" for anonymous callers.
    `owner` is what its jobs are owned by: "key:<name>" for an API-key user, "anon:<sha256 of its owner token>"
    for an anonymous caller that presented one, None for one that did not (its jobs belong to nobody who can
    drive them over REST; the submitting WebSocket still can). An address is never an owner: a classroom behind
    one NAT shares an address, not its jobs.
    """

    key: str
    ip: str
    user: str | None = None
    max_priority: int = 0
    admin: bool = False
    rate_limit_requests: int | None = None
    rate_limit_burst: int | None = None
    owner: str | None = None

    @property
    def job_owner(self) -> str:
        """The `Job.owner` of what this client submits ("anon:" when it holds no token: nobody matches it)."""
        return self.owner or ANONYMOUS_OWNER

    def with_owner_token(self, token: str | None) -> Client:
        """This client owning what `token` owns. An API-key user's jobs stay owned by its key."""
        if token is None or self.user is not None:
            return self
        return dataclasses.replace(self, owner=owner_of_token(token))


# The caller of a request, identified by the rate-limit middleware (server.access.middleware).
CLIENT = web.RequestKey("client", Client)


# The owner token: the pages set it as an HttpOnly, SameSite=Strict cookie; other clients send the header, or get
# one in the WebSocket `hello`. At least 192 bits, so it cannot be guessed; only its digest is ever stored.
OWNER_COOKIE = "conveyor_owner"
OWNER_HEADER = "X-Owner-Token"
OWNER_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")
ANONYMOUS_OWNER = "anon:"


def new_owner_token() -> str:
    return secrets.token_urlsafe(32)


def owner_of_token(token: str) -> str:
    return "anon:" + hashlib.sha256(token.encode()).hexdigest()


def owner_token(request: web.BaseRequest) -> str | None:
    """The caller's owner token: the header (a malformed one is a 400) or else the pages' cookie (a malformed or
    stale cookie is ignored; the pages replace it)."""
    header = request.headers.get(OWNER_HEADER)
    if header is not None:
        if not OWNER_TOKEN.fullmatch(header):
            raise BadRequest(
                f"{OWNER_HEADER} must be 32 to 128 characters of letters, digits, - and _ (e.g. 32 random bytes in "
                "base64url).",
                field=OWNER_HEADER,
            )
        return header
    cookie = request.cookies.get(OWNER_COOKIE)
    return cookie if cookie is not None and OWNER_TOKEN.fullmatch(cookie) else None


def peer_ip(request: web.BaseRequest) -> str:
    """The socket peer address (never a header)."""
    return request.remote or "unknown"


def anonymous(ip: str) -> Client:
    """An unauthenticated caller, keyed (quota and job ownership) by its address or IPv6 /56."""
    return Client(key=f"ip:{ip}", ip=ip)


def check_priority(client: Client, priority: int) -> None:
    """Priority is a privilege: raise Forbidden naming the caller's maximum when `priority` exceeds it.

    Handlers call this before drawing on the submit bucket, so a refused priority costs no quota.
    """
    if priority <= client.max_priority:
        return
    if client.user is None:
        raise Forbidden(
            f"Priority {priority} is not allowed: anonymous callers may only use priority 0. "
            "Send an API key (Authorization: Bearer <key>) for higher priorities.",
            maxPriority=0,
        )
    raise Forbidden(
        f"Priority {priority} is not allowed: the maximum for this API key is {client.max_priority}.",
        maxPriority=client.max_priority,
    )


@functools.lru_cache(maxsize=8)
def parse_networks(specs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """TRUSTED_PROXIES as networks (cached: the settings tuple is the same object for every request)."""
    return tuple(ipaddress.ip_network(spec, strict=False) for spec in specs)


def client_ip(request: web.BaseRequest, trusted: Sequence[IPNetwork]) -> str:
    """The caller's address as a quota key: an IPv4 address or an IPv6 /56 network ("2001:db8:ab00::/56").

    The socket peer decides unless it is a trusted proxy. Only then are X-Forwarded-For / Forwarded read, walking
    the hops from the right and stopping at the first one that is not a trusted proxy: every hop to its left was
    written by that untrusted party, so the left-most entry is whatever the caller chose to claim.
    """
    remote = request.remote
    if not remote:
        return "unknown"
    peer = _peer(remote)
    if peer is None:
        return remote  # not an IP socket (a Unix socket path): nothing to group
    if trusted and _is_trusted(peer[0], trusted):
        return ip_key(_forwarded_client(request, peer[0], trusted))
    return peer[1]


@functools.lru_cache(maxsize=4096)
def _peer(remote: str) -> tuple[IPAddress, str] | None:
    """A socket peer's address and its quota key, worked out once per address (every request of a connection, and
    of a client, names the same one), for the most recent 4096 addresses."""
    address = _parse_ip(remote)
    return None if address is None else (address, ip_key(address))


def served_over_https(request: web.BaseRequest, trusted: Sequence[IPNetwork]) -> bool:
    """Did the browser reach us over HTTPS: our own TLS, or a trusted proxy's word (its right-most
    `X-Forwarded-Proto`, else its last `Forwarded: proto=`). An untrusted caller's headers say nothing: a cookie
    marked Secure on its say-so would only stop working, but the same rule keeps every forwarded header honest."""
    if request.secure:
        return True
    peer = _parse_ip(request.remote or "")
    if peer is None or not trusted or not _is_trusted(peer, trusted):
        return False
    protos = [part.strip() for value in request.headers.getall("X-Forwarded-Proto", []) for part in value.split(",")]
    if protos:
        return protos[-1].lower() == "https"
    forwarded = request.forwarded
    return bool(forwarded) and str(forwarded[-1].get("proto", "")).lower() == "https"


def ip_key(address: IPAddress) -> str:
    """The quota key for an address: IPv4 as is, IPv6 collapsed to its /56."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # dual-stack sockets report IPv4 callers as ::ffff:a.b.c.d
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((int(address) >> (128 - IPV6_PREFIX) << (128 - IPV6_PREFIX), IPV6_PREFIX))
        return str(network)
    return str(address)


def _forwarded_client(request: web.BaseRequest, peer: IPAddress, trusted: Sequence[IPNetwork]) -> IPAddress:
    xff_values = request.headers.getall("X-Forwarded-For", [])
    has_forwarded = "Forwarded" in request.headers
    from_xff = _right_most_untrusted(_split_xff(xff_values), peer, trusted) if xff_values else None
    from_fwd = _right_most_untrusted(_forwarded_for(request), peer, trusted) if has_forwarded else None
    if from_xff is not None and from_fwd is not None and from_xff != from_fwd:
        # Our proxy wrote one header and passed the other through from the caller; we cannot tell which is which,
        # so neither is believed. Such callers share the proxy's bucket and cannot borrow a victim's address.
        return peer
    if from_xff is not None:
        return from_xff
    return from_fwd if from_fwd is not None else peer


def _right_most_untrusted(hops: list[str], peer: IPAddress, trusted: Sequence[IPNetwork]) -> IPAddress:
    """Walk the chain (client, proxy1, ..., peer) from the right; the first untrusted hop is the client."""
    current = peer
    for raw in reversed(hops):
        address = _parse_ip(raw)
        if address is None:
            # An unparsable or obfuscated hop ("unknown", "_hidden"): the trusted hop to its right is the last
            # thing we know to be true.
            return current
        current = address
        if not _is_trusted(address, trusted):
            return address
    return current  # every hop is a trusted proxy: the left-most one is the best we have


def _split_xff(values: Iterable[str]) -> list[str]:
    # Some proxies (Azure) append "address:port"; the port says nothing about who the caller is.
    return [_strip_port(part) for value in values for part in value.split(",") if part.strip()]


def _forwarded_for(request: web.BaseRequest) -> list[str]:
    hops: list[str] = []
    for element in request.forwarded:
        value = element.get("for")
        hops.append(_strip_port(value) if value else "")
    return hops


def _strip_port(node: str) -> str:
    """RFC 7239 node: `192.0.2.1`, `192.0.2.1:8080`, `"[2001:db8::1]:4711"` (quotes already removed by aiohttp)."""
    node = node.strip().strip('"')
    if node.startswith("["):
        return node[1 : node.find("]")] if "]" in node else ""
    if node.count(":") == 1:
        return node.split(":", 1)[0]
    return node


def _parse_ip(raw: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(raw.strip())
    except ValueError:
        return None


def _is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in trusted)
