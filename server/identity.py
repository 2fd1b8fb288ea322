"""Client identity: who is calling (an API-key user or an anonymous address), for quotas, priority and ownership."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Client:
    """The caller of one request or WebSocket.

    `key` identifies the quota bucket and the owner of submitted jobs: "user:<name>" for an API-key user,
    "ip:<address>" for anonymous callers.
    """

    key: str
    ip: str
    user: str | None = None
    max_priority: int = 0
    admin: bool = False
    rate_limit_requests: int | None = None
    rate_limit_burst: int | None = None


def peer_ip(request: web.BaseRequest) -> str:
    """The socket peer address (never a header)."""
    return request.remote or "unknown"


def anonymous(ip: str) -> Client:
    return Client(key=f"ip:{ip}", ip=ip)
