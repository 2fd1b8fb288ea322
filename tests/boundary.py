"""Helpers for the boundary's attack tests: did the server keep answering while it handled a hostile input?"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from contextlib import suppress
from typing import TypeVar

from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

T = TypeVar("T")
# Far above what any handler should hold the loop for, far below what the attacks took (seconds each).
STALL_BOUND_S = 2.0


async def while_healthy(client: TestClient[Request, Application], attack: Awaitable[T]) -> tuple[T, float]:
    """Run `attack` with `/health` asked alongside; its result and the longest the event loop went without a turn.

    The test server shares the test's loop, so a handler that computes for seconds stalls both: a ticker that
    sleeps 10 ms at a time sees the stall as one long gap, however the requests were interleaved."""
    gaps: list[float] = []
    last = time.monotonic()

    async def tick() -> None:
        nonlocal last
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.ensure_future(tick())
    try:
        health = asyncio.ensure_future(client.get("/health"))
        result = await attack
        response = await health
        assert response.status == 200
        response.release()
    finally:
        ticker.cancel()
        with suppress(asyncio.CancelledError):
            await ticker
    # The ticker may not have had a turn since the stall: count the time since its last one too.
    gaps.append(time.monotonic() - last)
    return result, max(gaps, default=0.0)
