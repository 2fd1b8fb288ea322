"""Background loops stop when told, even when a library turns the cancellation into an ordinary error."""

from __future__ import annotations

import asyncio

from server.queue.loops import raise_if_cancelling, stop_task


async def _library_call() -> None:
    """Like a client library that wraps whatever interrupts its I/O in its own error."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise RuntimeError("connection interrupted") from None


async def _loop(guarded: bool, rounds: list[int], release: asyncio.Event) -> None:
    while not release.is_set():
        rounds.append(1)
        try:
            await _library_call()
        except Exception:
            if guarded:
                raise_if_cancelling()
            await asyncio.sleep(0)


async def test_a_wrapped_cancellation_still_stops_a_loop() -> None:
    release = asyncio.Event()
    rounds: list[int] = []
    guarded = asyncio.create_task(_loop(True, rounds, release))
    await asyncio.sleep(0.01)
    await stop_task(guarded, timeout_s=2)
    assert guarded.cancelled() and len(rounds) == 1
    # Without the guard, the same loop swallows every request to stop and goes round again.
    rounds.clear()
    unguarded = asyncio.create_task(_loop(False, rounds, release))
    await asyncio.sleep(0.01)
    await stop_task(unguarded, timeout_s=0.3)  # gives up instead of waiting for ever
    assert not unguarded.done() and len(rounds) >= 2
    release.set()
    unguarded.cancel()
    await asyncio.wait([unguarded], timeout=2)
    assert unguarded.done()
