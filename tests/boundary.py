"""Helpers for the boundary's attack tests: did the server keep answering while it handled a hostile input?"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

T = TypeVar("T")
# CPU seconds of this process while the attack is handled: far above what parsing a bounded input costs, far below
# what the attacks cost (9 to 40 CPU-s each). CPU time, not wall time, so a loaded machine does not flake it.
STALL_BOUND_S = 2.0


async def while_healthy(client: TestClient[Request, Application], attack: Awaitable[T]) -> tuple[T, float]:
    """Run `attack` with `/health` asked alongside (it must answer); its result and the CPU seconds this process
    (the test server shares the test's loop and process) spent meanwhile."""
    started = time.process_time()
    health = asyncio.ensure_future(client.get("/health"))
    try:
        result = await attack
    finally:
        response = await health
    assert response.status == 200
    response.release()
    return result, time.process_time() - started
