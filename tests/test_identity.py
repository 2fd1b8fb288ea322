"""Client identity: peer address, trusted proxies (right-most untrusted hop), IPv6 /56 keys, priority checks."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from server.access.identity import (
    OWNER_COOKIE,
    OWNER_TOKEN,
    Client,
    anonymous,
    check_priority,
    client_ip,
    new_owner_token,
    owner_of_token,
    owner_token,
    parse_networks,
    peer_ip,
)
from server.errors import BadRequest, Forbidden

PROXIES = parse_networks(("10.0.0.0/8", "2001:db8:ffff::/48"))


def _request(remote: str | None, headers: list[tuple[str, str]] | None = None) -> web.BaseRequest:
    request = make_mocked_request("GET", "/run", headers=CIMultiDict(headers or []))
    return request.clone(remote=remote) if remote is not None else request


def test_peer_address_without_trusted_proxies() -> None:
    assert client_ip(_request("203.0.113.7"), ()) == "203.0.113.7"
    assert peer_ip(_request("203.0.113.7")) == "203.0.113.7"


def test_spoofed_forwarded_headers_from_untrusted_peer_are_ignored() -> None:
    headers = [("X-Forwarded-For", "1.2.3.4"), ("Forwarded", "for=5.6.7.8")]
    assert client_ip(_request("203.0.113.7", headers), PROXIES) == "203.0.113.7"
    assert client_ip(_request("203.0.113.7", headers), ()) == "203.0.113.7"


def test_trusted_proxy_takes_right_most_untrusted_hop() -> None:
    # The caller claims 1.1.1.1; our proxy 10.0.0.2 appended the real address, then 10.0.0.1 forwarded it.
    headers = [("X-Forwarded-For", "1.1.1.1, 198.51.100.9, 10.0.0.2")]
    assert client_ip(_request("10.0.0.1", headers), PROXIES) == "198.51.100.9"


def test_multiple_xff_header_lines_form_one_chain() -> None:
    headers = [("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "198.51.100.9:5555")]
    assert client_ip(_request("10.0.0.1", headers), PROXIES) == "198.51.100.9"


def test_all_hops_trusted_gives_left_most() -> None:
    headers = [("X-Forwarded-For", "10.1.1.1, 10.2.2.2")]
    assert client_ip(_request("10.0.0.1", headers), PROXIES) == "10.1.1.1"


def test_garbage_hop_stops_the_walk_at_the_last_trusted_hop() -> None:
    headers = [("X-Forwarded-For", "198.51.100.9, not-an-ip, 10.0.0.3")]
    assert client_ip(_request("10.0.0.1", headers), PROXIES) == "10.0.0.3"
    headers = [("X-Forwarded-For", "198.51.100.9, not-an-ip")]
    assert client_ip(_request("10.0.0.1", headers), PROXIES) == "10.0.0.1"


def test_forwarded_header_rfc7239() -> None:
    headers = [("Forwarded", 'for=1.1.1.1, for="[2001:db8:1:2::17]:4711";proto=https, for=10.0.0.9')]
    assert client_ip(_request("10.0.0.1", headers), PROXIES) == "2001:db8:1::/56"
    headers = [("Forwarded", "for=198.51.100.9:8080")]
    assert client_ip(_request("10.0.0.1", headers), PROXIES) == "198.51.100.9"
    headers = [("Forwarded", "for=_hidden")]
    assert client_ip(_request("10.0.0.1", headers), PROXIES) == "10.0.0.1"


def test_disagreeing_headers_are_not_believed() -> None:
    # The proxy wrote one of them and passed the other through; we cannot tell which.
    headers = [("X-Forwarded-For", "198.51.100.9"), ("Forwarded", "for=192.0.2.1")]
    assert client_ip(_request("10.0.0.1", headers), PROXIES) == "10.0.0.1"
    headers = [("X-Forwarded-For", "198.51.100.9"), ("Forwarded", "for=198.51.100.9")]
    assert client_ip(_request("10.0.0.1", headers), PROXIES) == "198.51.100.9"


def test_ipv6_clients_are_grouped_by_56() -> None:
    first = client_ip(_request("2001:db8:abcd:1201::1"), ())
    second = client_ip(_request("2001:db8:abcd:12ff:ffff::2"), ())
    other = client_ip(_request("2001:db8:abcd:1300::1"), ())
    assert first == second == "2001:db8:abcd:1200::/56"
    assert other == "2001:db8:abcd:1300::/56"


def test_ipv4_mapped_ipv6_is_ipv4() -> None:
    assert client_ip(_request("::ffff:203.0.113.7"), ()) == "203.0.113.7"
    headers = [("X-Forwarded-For", "198.51.100.9")]
    assert client_ip(_request("::ffff:10.0.0.1", headers), PROXIES) == "198.51.100.9"


def test_trusted_ipv6_proxy() -> None:
    headers = [("X-Forwarded-For", "198.51.100.9")]
    assert client_ip(_request("2001:db8:ffff::1", headers), PROXIES) == "198.51.100.9"


def test_missing_or_non_ip_peer() -> None:
    assert client_ip(_request(None), PROXIES) == "unknown"
    assert client_ip(_request("/run/conveyor.sock"), PROXIES) == "/run/conveyor.sock"


def test_anonymous_client() -> None:
    assert anonymous("203.0.113.7") == Client(key="ip:203.0.113.7", ip="203.0.113.7")


def test_check_priority() -> None:
    check_priority(anonymous("203.0.113.7"), 0)
    with pytest.raises(Forbidden) as anon:
        check_priority(anonymous("203.0.113.7"), 1)
    assert anon.value.extra == {"maxPriority": 0}
    assert "anonymous" in anon.value.message
    user = Client(key="user:alice", ip="203.0.113.7", user="alice", max_priority=5)
    check_priority(user, 5)
    with pytest.raises(Forbidden) as exc:
        check_priority(user, 6)
    assert exc.value.status == 403
    assert "maximum for this API key is 5" in exc.value.message
    assert exc.value.extra == {"maxPriority": 5}


def test_owner_tokens_never_the_address() -> None:
    token = new_owner_token()
    assert OWNER_TOKEN.fullmatch(token) and token != new_owner_token()
    anon = anonymous("203.0.113.7")
    assert anon.owner is None and anon.job_owner == "anon:"
    owned = anon.with_owner_token(token)
    assert owned.owner == owner_of_token(token) and token not in str(owned.owner)
    assert owned.key == anon.key  # the quota stays per address
    # Two clients of one address are different owners; one token is one owner at any address.
    assert anonymous("203.0.113.7").with_owner_token(new_owner_token()).owner != owned.owner
    assert anonymous("198.51.100.1").with_owner_token(token).owner == owned.owner
    user = Client(key="user:alice", ip="203.0.113.7", user="alice", owner="key:alice")
    assert user.with_owner_token(token) is user  # a key user's jobs stay its key's


def test_owner_token_from_header_or_cookie() -> None:
    token, other = new_owner_token(), new_owner_token()
    assert owner_token(_request("203.0.113.7")) is None
    assert owner_token(_request("203.0.113.7", [("X-Owner-Token", token)])) == token
    assert owner_token(_request("203.0.113.7", [("Cookie", f"{OWNER_COOKIE}={token}")])) == token
    both = [("X-Owner-Token", token), ("Cookie", f"{OWNER_COOKIE}={other}")]
    assert owner_token(_request("203.0.113.7", both)) == token
    # A stale or forged cookie is ignored (the pages replace it); a malformed header is the caller's mistake.
    assert owner_token(_request("203.0.113.7", [("Cookie", f"{OWNER_COOKIE}=short")])) is None
    for bad in ("short", "x" * 129, token[:-1] + "!"):
        with pytest.raises(BadRequest) as exc:
            owner_token(_request("203.0.113.7", [("X-Owner-Token", bad)]))
        assert exc.value.extra == {"field": "X-Owner-Token"}
