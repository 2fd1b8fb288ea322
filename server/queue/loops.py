"""Background loops: what every long-lived task of ours needs to stop when it is told to."""

from __future__ import annotations

import asyncio
from contextlib import suppress


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that arrived as an ordinary error.

    On Python 3.11 `asyncio.timeout` can turn a cancellation that races its deadline into TimeoutError, and a client
    library may wrap it in its own error; a loop that catches Exception and goes round again would then swallow the
    request to stop, and whoever waits for it (an app's shutdown) waits for ever. Call this first in such handlers.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def settle(*futures: asyncio.Future[None] | None) -> None:
    """Wake whoever awaits these futures (those still pending): the queue's one-shot signals, where an
    asyncio.Event would cost a task per wait."""
    for future in futures:
        if future is not None and not future.done():
            future.set_result(None)


async def stop_task(task: asyncio.Task[object], *, timeout_s: float = 5.0) -> None:
    """Cancel `task` and wait for it, cancelling again while it runs on (at most `timeout_s`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=min(0.5, max(0.0, deadline - loop.time())))
        if loop.time() >= deadline:
            break
    if task.done():
        with suppress(asyncio.CancelledError, Exception):
            task.result()
