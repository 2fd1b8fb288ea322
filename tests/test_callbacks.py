"""Callbacks: delivered and signed to an allowed receiver; refused for every address an SSRF would aim at.
(The outbox's own behaviour, across restarts, instances and slow hosts: test_callbacks_outbox.py.)"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.callbacks import (
    SIGNATURE_HEADER,
    CallbackSender,
    Delivery,
    address_allowed,
    check_callback_url,
)
from server.errors import BadRequest
from tests.conftest import make_settings


@dataclass
class Receiver:
    """A local webhook receiver: records every request; `answers` scripts its status codes in order."""

    server: TestServer
    seen: list[tuple[str, str, bytes, dict[str, str]]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    delay_s: float = 0.0

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server.port}{path}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    box: dict[str, Receiver] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        rec = box["r"]
        rec.seen.append((request.method, request.path, await request.read(), dict(request.headers)))
        if rec.delay_s:
            await asyncio.sleep(rec.delay_s)
        status = rec.answers.pop(0) if rec.answers else 200
        if status in (301, 302, 307, 308):
            return web.Response(status=status, headers={"Location": "/elsewhere"})
        return web.Response(status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    box["r"] = Receiver(server)
    yield box["r"]
    await server.close()


SenderFactory = Callable[..., Awaitable[CallbackSender]]


@pytest.fixture
async def sender_factory() -> AsyncIterator[SenderFactory]:
    made: list[CallbackSender] = []

    async def make(**overrides: Any) -> CallbackSender:
        settings = make_settings(**{"callback_timeout_ms": 1000, "callback_retries": 2, **overrides})
        sender = CallbackSender(settings, backoff_s=0.01)
        await sender.start()
        made.append(sender)
        return sender

    yield make
    for sender in made:
        await sender.close()


LOOPBACK = ("127.0.0.0/8",)


async def test_delivers_the_body_signed_with_the_secret(receiver: Receiver, sender_factory: SenderFactory) -> None:
    sender = await sender_factory(callback_allowed_networks=LOOPBACK, callback_secret="s3cret")
    body = b'{"id":"abc","status":"completed"}'
    assert await sender.deliver(Delivery("abc", receiver.url(), body))
    method, path, got, headers = receiver.seen[0]
    assert (method, path, got) == ("POST", "/hook", body)
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == expected
    assert headers["Content-Type"] == "application/json"


async def test_no_signature_without_a_secret(receiver: Receiver, sender_factory: SenderFactory) -> None:
    sender = await sender_factory(callback_allowed_networks=LOOPBACK)
    assert await sender.deliver(Delivery("abc", receiver.url(), b"{}", method="PUT"))
    method, _, _, headers = receiver.seen[0]
    assert method == "PUT" and SIGNATURE_HEADER not in headers


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "127.1"])
async def test_loopback_is_refused_unless_allowed(host: str, receiver: Receiver, sender_factory: SenderFactory) -> None:
    sender = await sender_factory()
    assert not await sender.deliver(Delivery("abc", receiver.url(host=host), b"{}"))
    assert receiver.seen == []  # the receiver never heard of it
    assert sender.abandoned == 1


@pytest.mark.parametrize(
    "host",
    [
        "127\u30020\u30020\u30021",  # ideographic full stops: IDNA makes them dots, and the host an IP literal
        "\uff11\uff12\uff17.0.0.1",  # full-width digits
        "127\uff0e0\uff0e0\uff0e1",  # full-width full stops
        "0x7f.1",
        "2130706433",
        "[::1]",
        "[0:0:0:0:0:ffff:7f00:1]",
    ],
)
@pytest.mark.parametrize("method", ["POST", "PUT"])  # native callbacks POST, Judge0's PUT
async def test_a_disguised_loopback_address_is_never_connected_to(
    host: str, method: str, receiver: Receiver, sender_factory: SenderFactory
) -> None:
    sender = await sender_factory()
    assert not await sender.deliver(Delivery("abc", receiver.url(host=host), b"{}", method=method))
    assert receiver.seen == []
    assert sender.abandoned == 1


async def test_the_server_itself_is_never_called_even_where_loopback_is_allowed(
    receiver: Receiver, sender_factory: SenderFactory
) -> None:
    # The receiver plays this server: a callback to our own address would be a request from ourselves, past every
    # limit on the door it reaches.
    sender = await sender_factory(callback_allowed_networks=LOOPBACK, host="127.0.0.1", port=receiver.server.port)
    for host in ("127.0.0.1", "localhost", "127\u30020\u30020\u30021"):
        assert not await sender.deliver(Delivery("abc", receiver.url(host=host), b"{}"))
    assert receiver.seen == []
    wildcard = await sender_factory(callback_allowed_networks=LOOPBACK, host="0.0.0.0", port=receiver.server.port)
    assert not await wildcard.deliver(Delivery("abc", receiver.url(), b"{}"))
    assert receiver.seen == []


async def test_metadata_and_private_addresses_are_refused_without_a_connection(sender_factory: SenderFactory) -> None:
    sender = await sender_factory(callback_retries=3)
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://[fd00:ec2::254]/"):
        assert not await sender.deliver(Delivery("abc", url, b"{}"))
    assert sender.abandoned == 3


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.100.100.200", False),  # carrier-grade NAT range, Alibaba's metadata service
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00:ec2::254", False),
        ("::ffff:10.0.0.1", False),
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("64:ff9b::5db8:d822", True),  # NAT64 of a public address
    ],
)
def test_address_rules(address: str, allowed: bool) -> None:
    assert address_allowed(ipaddress.ip_address(address), []) is allowed


def test_allowed_networks_open_a_private_range() -> None:
    networks = [ipaddress.ip_network("10.0.0.0/8")]
    assert address_allowed(ipaddress.ip_address("10.9.9.9"), networks)
    assert not address_allowed(ipaddress.ip_address("192.168.0.1"), networks)


async def test_redirects_are_not_followed(receiver: Receiver, sender_factory: SenderFactory) -> None:
    sender = await sender_factory(callback_allowed_networks=LOOPBACK)
    receiver.answers = [302]
    assert not await sender.deliver(Delivery("abc", receiver.url(), b"{}"))
    assert [path for _, path, _, _ in receiver.seen] == ["/hook"]  # /elsewhere never requested, no retry


async def test_server_errors_are_retried_with_backoff_then_succeed(
    receiver: Receiver, sender_factory: SenderFactory
) -> None:
    sender = await sender_factory(callback_allowed_networks=LOOPBACK, callback_retries=2)
    receiver.answers = [503, 500, 200]
    assert await sender.deliver(Delivery("abc", receiver.url(), b"{}"))
    assert len(receiver.seen) == 3 and sender.delivered == 1


async def test_retries_are_bounded(receiver: Receiver, sender_factory: SenderFactory) -> None:
    sender = await sender_factory(callback_allowed_networks=LOOPBACK, callback_retries=2)
    receiver.answers = [500] * 10
    assert not await sender.deliver(Delivery("abc", receiver.url(), b"{}"))
    assert len(receiver.seen) == 3


async def test_client_errors_are_not_retried(receiver: Receiver, sender_factory: SenderFactory) -> None:
    sender = await sender_factory(callback_allowed_networks=LOOPBACK, callback_retries=3)
    receiver.answers = [404]
    assert not await sender.deliver(Delivery("abc", receiver.url(), b"{}"))
    assert len(receiver.seen) == 1


async def test_a_slow_receiver_times_out(receiver: Receiver, sender_factory: SenderFactory) -> None:
    sender = await sender_factory(callback_allowed_networks=LOOPBACK, callback_timeout_ms=200, callback_retries=1)
    receiver.delay_s = 1.0
    assert not await sender.deliver(Delivery("abc", receiver.url(), b"{}"))
    assert len(receiver.seen) == 2


async def test_the_outbox_is_bounded(sender_factory: SenderFactory, caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens on port 9: each stays in the outbox, retried (for hours, a thousand times at most).
    sender = await sender_factory(callback_queue_size=3, callback_retries=1000, callback_allowed_networks=LOOPBACK)
    accepted = [await sender.enqueue(Delivery(str(i), "http://127.0.0.1:9/", b"{}")) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert await sender.refresh() == 3 and sender.dropped == 2 and sender.full
    assert "callback for job 4 to http://127.0.0.1:9 dropped: the outbox holds CALLBACK_QUEUE_SIZE=3" in caplog.text


async def test_enqueued_deliveries_are_sent_by_the_workers(receiver: Receiver, sender_factory: SenderFactory) -> None:
    sender = await sender_factory(callback_allowed_networks=LOOPBACK)
    for i in range(5):
        assert await sender.enqueue(Delivery(str(i), receiver.url(f"/hook/{i}"), b"{}"))
    async with asyncio.timeout(10):
        while sender.delivered < 5:
            await asyncio.sleep(0.01)
    assert sorted(path for _, path, _, _ in receiver.seen) == [f"/hook/{i}" for i in range(5)]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "file:///etc/passwd",
        "http://",
        "http://user:pass@example.com/",
        "http://example.com:99999/",
        "gopher://example.com/",
        "http://example.com/" + "a" * 3000,
    ],
)
def test_bad_callback_urls_are_refused_at_submission(url: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_callback_url(url)
    assert info.value.extra["field"] == "callbackUrl"


def test_good_callback_url_is_accepted() -> None:
    assert check_callback_url("https://judge.example.com/hook?token=x") == "https://judge.example.com/hook?token=x"
