"""The HTTP edge: the listening socket, with a header timeout, a cap on connections per address and a reserve of
file descriptors for jobs, in front of aiohttp's own request handler."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import resource
import time
from collections.abc import Callable

import orjson
from aiohttp import web

from ..access.identity import ip_key, parse_networks
from ..settings import Settings

logger = logging.getLogger(__name__)

HEADER_END = b"\r\n\r\n"
# How long a count of open descriptors is trusted; connections accepted meanwhile are added to it.
FD_COUNT_TTL_S = 0.1
RETRY_AFTER_S = 5
# aiohttp's lingering close: a client still sending a body the server answered early (a 413) may finish sending and
# read the answer before the connection closes. A 408 closes at once instead (doors.middlewares).
LINGERING_S = 10.0


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (the kernel's nr_open when the hard limit is unlimited), so
    the server runs out of descriptors as late as the host allows. Returns the (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open", encoding="ascii") as nr_open:
                target = int(nr_open.read())
        except (OSError, ValueError):
            target = soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            logger.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft, hard


def count_open_fds() -> int:
    """Descriptors this process holds (Linux /proc); 0 where that cannot be read (then nothing is refused)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # listdir's own descriptor
    except OSError:
        return 0


class FdBudget:
    """Tells when a new connection would eat into the descriptors kept for jobs (pipes, the sandbox's files).

    A job that cannot open a pipe fails (`internal_error`); a connection refused with 503 is retried by its client.
    So the edge refuses connections while fewer than `reserve` descriptors are free. Counting /proc/self/fd on
    every accept would cost a directory scan per connection: the count is kept for FD_COUNT_TTL_S, plus one per
    connection accepted since (closed ones are noticed at the next count).
    """

    def __init__(
        self,
        reserve: int,
        *,
        limit: Callable[[], int] | None = None,
        count: Callable[[], int] = count_open_fds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reserve = reserve
        self._limit = limit or (lambda: resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self._count = count
        self._clock = clock
        self._open = 0
        self._counted_at = float("-inf")

    def admit(self) -> bool:
        """Account for one accepted connection; False when it would leave less than the reserve free."""
        now = self._clock()
        if now - self._counted_at > FD_COUNT_TTL_S:
            self._open = self._count()
            self._counted_at = now
        else:
            self._open += 1
        limit = self._limit()
        return limit == resource.RLIM_INFINITY or self._open < limit - self.reserve


def _refusal(status: int, reason: str, message: str) -> bytes:
    body = orjson.dumps({"error": reason, "message": message, "retryAfter": RETRY_AFTER_S})
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Retry-After: {RETRY_AFTER_S}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Edge:
    """The protocol factory for the listening socket: wraps each aiohttp request handler in an `EdgeProtocol`.

    aiohttp bounds an idle keep-alive connection (its `keepalive_timeout`, which also closes a connection whose
    next request has not fully arrived), but not the first request's headers of a connection, nor the number of
    connections per address, nor what accepting costs in descriptors: those are done here, by hand.
    """

    def __init__(
        self, settings: Settings, handler_factory: Callable[[], asyncio.Protocol], *, fds: FdBudget | None = None
    ) -> None:
        self.settings = settings
        self.handler_factory = handler_factory
        self.fds = fds if fds is not None else FdBudget(settings.fd_reserve)
        self.header_timeout_s = settings.http_header_timeout_ms / 1000.0
        self._trusted = parse_networks(settings.trusted_proxies)
        self._per_ip: dict[str, int] = {}

    def __call__(self) -> EdgeProtocol:
        return EdgeProtocol(self)

    def __len__(self) -> int:
        """Addresses with open connections."""
        return len(self._per_ip)

    def admit(self, peer: object) -> tuple[str | None, bytes | None]:
        """(the address to count the connection under, or None; the refusal to send instead, or None)."""
        if not self.fds.admit():
            logger.warning("refusing a connection: fewer than %d file descriptors free", self.fds.reserve)
            return None, _refusal(503, "Service Unavailable", "The server is at capacity; try again shortly.")
        address = _address(peer)
        if address is None or any(address in network for network in self._trusted):
            return None, None  # a trusted proxy carries many clients; the rate limiter tells them apart
        ip = ip_key(address)
        count = self._per_ip.get(ip, 0)
        if count >= self.settings.http_max_connections_per_ip:
            return None, _refusal(
                429,
                "Too Many Requests",
                f"At most {self.settings.http_max_connections_per_ip} open connections per address.",
            )
        self._per_ip[ip] = count + 1
        return ip, None

    def release(self, ip: str) -> None:
        left = self._per_ip.get(ip, 1) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)


class EdgeProtocol(asyncio.Protocol):
    """One connection: refused at once, or handed to aiohttp's handler with a deadline for its first headers."""

    def __init__(self, edge: Edge) -> None:
        self._edge = edge
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._ip: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._ip, refusal = self._edge.admit(transport.get_extra_info("peername"))
        if refusal is not None:
            transport.write(refusal)
            transport.close()
            return
        self._inner = self._edge.handler_factory()
        self._inner.connection_made(transport)
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._edge.header_timeout_s, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._deadline is not None:
            seen = self._tail + data
            if HEADER_END in seen:
                self._deadline.cancel()
                self._deadline = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._ip is not None:
            self._edge.release(self._ip)
            self._ip = None
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self._transport is not None and not self._transport.is_closing():
            logger.debug("closing a connection whose request headers did not arrive in time (%s)", self._ip)
            self._transport.close()


def _address(peer: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(peer, tuple) or not peer:
        return None  # a Unix socket
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The app's runner with the edge's keep-alive timeout, and aiohttp's lingering close."""
    return web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=settings.http_keepalive_timeout_ms / 1000.0,
        lingering_time=LINGERING_S,
    )


async def listen(
    runner: web.AppRunner, settings: Settings, *, host: str | None = None, port: int | None = None
) -> asyncio.Server:
    """Listen on HOST:PORT through the edge (instead of aiohttp's TCPSite, whose protocol factory is aiohttp's
    handler alone). Close the returned server before `runner.cleanup()`."""
    loop = asyncio.get_running_loop()
    if runner.server is None:
        raise RuntimeError("call runner.setup() first")
    edge = Edge(settings, runner.server)
    return await loop.create_server(
        edge,
        settings.host if host is None else host,
        settings.port if port is None else port,
        reuse_address=True,
    )
