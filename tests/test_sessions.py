"""Signing in from the pages (`/session`): a cookie no script reads, that a forger, an old key or another site
cannot use. The browser's side (a reload keeps the dashboard signed in) is in tests/test_dashboard.py."""

from __future__ import annotations

import hashlib
import time
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.access.apikeys import ApiKeys
from server.access.sessions import SESSION_COOKIE, issue, verify
from tests.conftest import AppClientFactory, keys_file

Client = TestClient[web.Request, web.Application]
ADMIN_KEY = "cvy_session-admin-key-0123456789"
USER_KEY = "cvy_session-user-key-0123456789ab"


def _keys(tmp_path: Path) -> str:
    return keys_file(tmp_path, {"ops": (ADMIN_KEY, True), "ann": (USER_KEY, False)})


async def _sign_in(client: Client, key: str) -> str:
    resp = await client.post("/session", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()
    cookie = SimpleCookie(resp.headers["Set-Cookie"])[SESSION_COOKIE]
    return cookie.value


async def _who(client: Client, cookie: str | None) -> dict[str, object]:
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie is not None else {}
    client.session.cookie_jar.clear()
    resp = await client.get("/session", headers=headers)
    assert resp.status == 200
    body: dict[str, object] = await resp.json()
    return body


async def test_a_sign_in_gives_an_httponly_strict_cookie_that_identifies_rest_and_sockets(
    app_client: AppClientFactory, tmp_path: Path
) -> None:
    client = await app_client(api_keys_file=_keys(tmp_path))
    resp = await client.post("/session", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status == 200
    body = await resp.json()
    assert body["user"] == "ops" and body["admin"] is True and body["expiresAt"].endswith("Z")
    morsel = SimpleCookie(resp.headers["Set-Cookie"])[SESSION_COOKIE]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert int(morsel["max-age"]) == 43_200
    assert ADMIN_KEY not in resp.headers["Set-Cookie"]
    # The cookie alone (no Authorization) is the admin: an admin-only route and the socket's hello say so.
    cookie = morsel.value
    assert await _who(client, cookie) == {"user": "ops", "admin": True}
    job = await (await client.post("/run", json={"language": "bash", "code": "true"})).json()
    detail = await client.get(f"/queue/job/{job['id']}", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
    assert detail.status == 200
    ws = await client.ws_connect("/ws", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
    hello = await ws.receive_json()
    assert hello["type"] == "hello" and hello["user"] == "ops" and hello["admin"] is True
    await ws.close()
    # A key that is not an admin's signs in as what it is.
    assert await _who(client, await _sign_in(client, USER_KEY)) == {"user": "ann", "admin": False}


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c[:-1] + ("0" if c[-1] != "0" else "1"),  # the signature
        lambda c: c.replace(c.split(".")[1], str(int(c.split(".")[1]) + 86_400)),  # a later expiry
        lambda c: c.split(".")[0] + ".9999999999999." + c.split(".")[2],  # an expiry too long to be ours
        lambda c: "YW5u" + c[c.index(".") :],  # "ann": another user's name under ops's signature
        lambda c: c + "." + c,
        lambda c: "x" * 6000,
        lambda c: "%%%.1.2",
        lambda c: c.split(".")[0] + ".²³." + c.split(".")[2],  # digits to isdigit(), not to int()
        lambda c: "é" + c,  # a name that is not ASCII, which base64 refuses with a ValueError
    ],
)
async def test_a_forged_cookie_is_anonymous_never_an_error(
    app_client: AppClientFactory, tmp_path: Path, tamper: object
) -> None:
    client = await app_client(api_keys_file=_keys(tmp_path))
    cookie = await _sign_in(client, ADMIN_KEY)
    forged = tamper(cookie)  # type: ignore[operator]
    assert forged != cookie
    assert await _who(client, forged) == {"user": None, "admin": False}


def test_an_expired_cookie_and_a_replaced_key_end_the_session(tmp_path: Path) -> None:
    keys = ApiKeys.load(_keys(tmp_path))
    ops = keys.named("ops")
    assert ops is not None
    now = time.time()
    assert verify(issue(ops, now, 60), keys, now) == ops
    assert verify(issue(ops, now - 120, 60), keys, now) is None
    # The operator replaces ops's key in the file: every cookie made with the old one stops working.
    replaced = ApiKeys.load(keys_file(tmp_path, {"ops": ("cvy_a-brand-new-key-for-ops-0123", True)}))
    assert verify(issue(ops, now, 60), replaced, now) is None
    # And removes the user: gone.
    assert verify(issue(ops, now, 60), ApiKeys(), now) is None


async def test_another_site_cannot_act_with_the_cookie(app_client: AppClientFactory, tmp_path: Path) -> None:
    client = await app_client(api_keys_file=_keys(tmp_path), max_concurrent_jobs=1)
    cookie = await _sign_in(client, ADMIN_KEY)
    client.session.cookie_jar.clear()
    sleeper = await client.post("/run?wait=false", json={"language": "bash", "code": "sleep 30"})
    job_id = (await sleeper.json())["jobId"]
    as_ops = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
    evil = {**as_ops, "Origin": "https://evil.example"}
    resp = await client.post("/queue/jobs/cancel", json={"ids": [job_id]}, headers=evil)
    assert resp.status == 403 and (await resp.json())["error"] == "Forbidden"
    resp = await client.post(
        "/queue/jobs/cancel", json={"ids": [job_id]}, headers={**as_ops, "Referer": "https://evil.example/x"}
    )
    assert resp.status == 403
    # The same request from the server's own page goes through.
    own = f"http://{client.server.host}:{client.server.port}"
    resp = await client.post("/queue/jobs/cancel", json={"ids": [job_id]}, headers={**as_ops, "Origin": own})
    assert resp.status == 200
    assert (await resp.json())["results"][0]["status"] == 200


async def test_signing_in_needs_the_key_and_is_locked_out_like_any_key(
    app_client: AppClientFactory, tmp_path: Path
) -> None:
    client = await app_client(api_keys_file=_keys(tmp_path), auth_failure_limit=3)
    resp = await client.post("/session")
    assert resp.status == 401 and "Set-Cookie" not in resp.headers
    statuses = [
        (await client.post("/session", headers={"Authorization": "Bearer cvy_wrong-key-000000000000000"})).status
        for _ in range(4)
    ]
    assert statuses == [401, 401, 401, 429]
    resp = await client.post("/session", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status == 429 and "Set-Cookie" not in resp.headers


async def test_signing_out_drops_the_cookie(app_client: AppClientFactory, tmp_path: Path) -> None:
    client = await app_client(api_keys_file=_keys(tmp_path))
    await _sign_in(client, ADMIN_KEY)
    assert (await (await client.get("/session")).json())["user"] == "ops"  # the client's jar holds the cookie
    resp = await client.delete("/session", headers={"Origin": f"http://{client.server.host}:{client.server.port}"})
    assert resp.status == 200
    morsel = SimpleCookie(resp.headers["Set-Cookie"])[SESSION_COOKIE]
    assert morsel.value == "" and int(morsel["max-age"]) == 0
    assert (await (await client.get("/session")).json())["user"] is None


async def test_the_admin_detail_says_who_submitted_a_job(app_client: AppClientFactory, tmp_path: Path) -> None:
    client = await app_client(api_keys_file=_keys(tmp_path))
    as_ann = {"Authorization": f"Bearer {USER_KEY}"}
    token = "t" * 40
    by_ann = await (await client.post("/run", json={"language": "bash", "code": "true"}, headers=as_ann)).json()
    by_token = await (
        await client.post("/run", json={"language": "bash", "code": "true"}, headers={"X-Owner-Token": token})
    ).json()
    as_ops = {"Authorization": f"Bearer {ADMIN_KEY}"}
    seen = [
        (await (await client.get(f"/queue/job/{job['id']}", headers=as_ops)).json())["submittedBy"]
        for job in (by_ann, by_token)
    ]
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert seen == ["ann", f"anonymous ({digest[:8]})"]
    # The owner reads its own job without it: who submitted is the admins' to know.
    own = await (await client.get(f"/queue/job/{by_ann['id']}", headers=as_ann)).json()
    assert "submittedBy" not in own


async def test_behind_a_tls_proxy_the_allowed_origins_may_act_with_the_cookie(
    app_client: AppClientFactory, tmp_path: Path
) -> None:
    # A reverse proxy ends TLS and forwards plain HTTP: the server's own scheme is http, the page's origin https.
    # ALLOWED_ORIGINS is how the operator names that origin for /ws; the same signed-in page's writes must pass too
    # (and another site's still may not).
    public = "https://conveyor.example"
    client = await app_client(api_keys_file=_keys(tmp_path), allowed_origins=(public,), max_concurrent_jobs=1)
    cookie = await _sign_in(client, ADMIN_KEY)
    client.session.cookie_jar.clear()
    sleeper = await client.post("/run?wait=false", json={"language": "bash", "code": "sleep 30"})
    job_id = (await sleeper.json())["jobId"]
    as_ops = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
    ws = await client.ws_connect("/ws", headers={**as_ops, "Origin": public})
    assert (await ws.receive_json())["admin"] is True
    await ws.close()
    resp = await client.post("/queue/jobs/cancel", json={"ids": [job_id]}, headers={**as_ops, "Origin": public})
    assert resp.status == 200, await resp.text()
    evil = {**as_ops, "Origin": "https://evil.example"}
    assert (await client.post("/queue/jobs/cancel", json={"ids": [job_id]}, headers=evil)).status == 403


async def test_a_shorter_session_ttl_ends_longer_sessions_made_before_it(
    app_client: AppClientFactory, tmp_path: Path
) -> None:
    # Issued under SESSION_TTL_S=30 days (the bound); the operator then lowers it to an hour and restarts: a cookie
    # that runs past what the server now allows is not honoured for the rest of its month.
    path = _keys(tmp_path)
    ops = ApiKeys.load(path).named("ops")
    assert ops is not None
    month = issue(ops, time.time(), 30 * 86_400)
    client = await app_client(api_keys_file=path, session_ttl_s=3600)
    assert await _who(client, month) == {"user": None, "admin": False}
    assert await _who(client, issue(ops, time.time(), 3600)) == {"user": "ops", "admin": True}


@pytest.mark.parametrize(
    ("headers", "secure"),
    [
        ({"X-Forwarded-Proto": "https"}, True),
        ({"X-Forwarded-Proto": "http, https"}, True),  # each proxy appends: the right-most is the one next to us
        ({"X-Forwarded-Proto": "https, http"}, False),
        ({"Forwarded": "for=192.0.2.7;proto=https"}, True),
        ({}, False),
    ],
)
async def test_behind_a_trusted_tls_proxy_both_cookies_are_secure(
    app_client: AppClientFactory, tmp_path: Path, headers: dict[str, str], secure: bool
) -> None:
    # The proxy ends TLS and speaks plain HTTP to us: only its word says the browser used https, and only a trusted
    # proxy's word counts. A cookie without Secure would be sent by the browser over plain http too.
    client = await app_client(api_keys_file=_keys(tmp_path), trusted_proxies=("127.0.0.0/8", "::1/128"))
    signed_in = await client.post("/session", headers={"Authorization": f"Bearer {ADMIN_KEY}", **headers})
    assert bool(SimpleCookie(signed_in.headers["Set-Cookie"])[SESSION_COOKIE]["secure"]) is secure
    client.session.cookie_jar.clear()
    page = await client.get("/", headers=headers)
    owner = next(m for m in SimpleCookie(page.headers["Set-Cookie"]).values())
    assert bool(owner["secure"]) is secure
    signed_out = await client.delete("/session", headers=headers)
    assert bool(SimpleCookie(signed_out.headers["Set-Cookie"])[SESSION_COOKIE]["secure"]) is secure


async def test_an_untrusted_caller_cannot_claim_https(app_client: AppClientFactory, tmp_path: Path) -> None:
    client = await app_client(api_keys_file=_keys(tmp_path))  # no TRUSTED_PROXIES: the caller's headers are its own
    resp = await client.post("/session", headers={"Authorization": f"Bearer {ADMIN_KEY}", "X-Forwarded-Proto": "https"})
    assert not SimpleCookie(resp.headers["Set-Cookie"])[SESSION_COOKIE]["secure"]
