"""The lockout: failed authentications per address, refusal before the key is checked, one log line per window."""

from __future__ import annotations

import logging

import pytest

from server.access.lockout import AuthLockout
from server.access.ratelimit import RateLimiter
from server.errors import TooManyRequests
from tests.conftest import make_settings


def _lockout(limit: int = 3) -> tuple[AuthLockout, list[float]]:
    now = [1000.0]
    settings = make_settings(auth_failure_limit=limit, rate_limit_window_ms=60_000)
    limiter = RateLimiter(settings, clock=lambda: now[0])
    return AuthLockout(limiter, settings, clock=lambda: now[0]), now


async def test_locked_out_after_the_limit_until_a_token_returns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="server.access.lockout")
    lockout, now = _lockout(3)
    for _ in range(3):
        lockout.check("203.0.113.7")
        assert await lockout.failed("203.0.113.7") is None
    refusal = await lockout.failed("203.0.113.7")
    assert isinstance(refusal, TooManyRequests) and refusal.extra["retryAfter"] == 20
    assert refusal.headers["Retry-After"] == "20"
    with pytest.raises(TooManyRequests):
        lockout.check("203.0.113.7")
    lockout.check("198.51.100.1")  # another address is not affected
    now[0] += 20.0  # one failure's worth of refill (3 per minute)
    lockout.check("203.0.113.7")
    assert await lockout.failed("203.0.113.7") is None
    assert isinstance(await lockout.failed("203.0.113.7"), TooManyRequests)
    # Logged once for the window, though locked out twice.
    assert len([r for r in caplog.records if "failed authentications" in r.getMessage()]) == 1
    now[0] += 61.0
    for _ in range(4):
        await lockout.failed("203.0.113.7")
    assert len([r for r in caplog.records if "failed authentications" in r.getMessage()]) == 2


async def test_locked_out_addresses_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("server.access.lockout.MAX_LOCKED", 3)
    lockout, _ = _lockout(1)
    for i in range(10):
        await lockout.failed(f"203.0.113.{i}")
        await lockout.failed(f"203.0.113.{i}")
    assert len(lockout) == 3
    lockout.check("203.0.113.0")  # the oldest was forgotten
    with pytest.raises(TooManyRequests):
        lockout.check("203.0.113.9")
