"""The claim loop: a worker's search for work while it has free slots, and its rest while it has none."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..base import Store
from ..loops import raise_if_cancelling, settle

logger = logging.getLogger(__name__)

# A store's wake-up may be missed (a Redis blip): an idle worker looks for work at least this often.
WAKE_TIMEOUT_S = 1.0


class ClaimLoop:
    """Claims jobs whenever the worker has free slots (`fill`), waits for the store's news of work when it found
    none, and for a freed slot when it has none. A busy worker's slots pass from job to job in its finishes, so
    this loop mostly sleeps; `close()` wakes it wherever it idles, and it returns."""

    def __init__(
        self,
        store: Store,
        *,
        free: Callable[[], int],
        fill: Callable[[], Awaitable[bool]],
        drained: Callable[[], bool],
        fill_now: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._free = free
        self._fill = fill
        self._drained = drained
        self._fill_now = fill_now
        self._news: asyncio.Handle | None = None  # a claim on news of work, due on the loop's next turn
        self.closing = False
        # Plain futures rather than Events: waiting on an Event takes a task each time, and the loop idles once or
        # twice per job. Done by freed(), made when the loop waits for a slot.
        self._freed: asyncio.Future[None] | None = None
        # Done by close(): wakes the loop wherever it idles, so shutdown does not wait out WAKE_TIMEOUT_S.
        self._close_requested: asyncio.Future[None] | None = None
        # The store's wait for work, in a task of its own so the loop can leave it without cancelling it.
        self.store_wait: asyncio.Task[None] | None = None

    def freed(self) -> None:
        """A slot is free (and the worker found no job for it): look for work."""
        settle(self._freed)

    def news(self) -> None:
        """News of work from a store that settles at once (its `on_work`): claimed with `fill_now` on the loop's
        next turn, once the step that brought it is done (an enqueue is journaled before its job's claim), with
        this loop left asleep (a job costs three task steps, a task and two timers fewer). News that finds every
        slot taken is dropped: a slot frees only in a finish, which claims right after storing its result."""
        if self._news is None and self._fill_now is not None and self._free() > 0 and not self.closing:
            self._news = asyncio.get_running_loop().call_soon(self._claim_news)

    def _claim_news(self) -> None:
        self._news = None
        try:
            if self._fill_now is not None:
                self._fill_now()
        except Exception:
            logger.exception("claiming jobs failed; the claim loop tries again")

    def close(self) -> None:
        self.closing = True
        settle(self._close_requested)

    async def run(self) -> None:
        while not self.closing:
            if self._free() <= 0:
                self._freed = asyncio.get_running_loop().create_future()
                await self._idle(self._freed, WAKE_TIMEOUT_S, cancel=True)
                continue
            try:
                # A finish that just claimed found the queue empty: wait for news rather than ask again.
                filled = False if self._drained() else await self._fill()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelling()
                if self.closing:
                    return
                logger.warning("claiming jobs failed (%s); retrying", exc)
                await self._idle(None, 1.0)
                continue
            if not filled:
                try:
                    await self._wait_for_work()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    raise_if_cancelling()
                    await self._idle(None, WAKE_TIMEOUT_S)

    async def _wait_for_work(self) -> None:
        """The store's wait for work, or less: close() ends it at once for this loop. The store's own wait is left
        running then (never cancelled here: see Worker.close()), and the next call waits on the same one."""
        if self.store_wait is None:
            self.store_wait = asyncio.create_task(self._store.wait_for_work(WAKE_TIMEOUT_S), name="conveyor-wake")
        await self._idle(self.store_wait, WAKE_TIMEOUT_S + 1)
        if self.store_wait.done():
            done, self.store_wait = self.store_wait, None
            done.result()  # the store's error goes to the loop's handler

    async def _idle(self, waiting: asyncio.Future[Any] | None, timeout: float, *, cancel: bool = False) -> None:
        """Wait for `waiting` (or only the time, when None) at most `timeout` seconds, ending early when close()
        begins. `cancel` cancels `waiting` if it is still pending then; otherwise it is left to its owner."""
        closing = self._close_requested
        if closing is None:
            closing = self._close_requested = asyncio.get_running_loop().create_future()
            if self.closing:
                closing.set_result(None)
        aws: list[asyncio.Future[Any]] = [closing] if waiting is None else [closing, waiting]
        try:
            await asyncio.wait(aws, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if cancel and waiting is not None:
                waiting.cancel()
