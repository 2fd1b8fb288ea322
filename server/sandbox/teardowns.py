"""Teardowns: each run's cleanup (Run.cleanup) in a task of its own, awaited by the run, or after its result."""

from __future__ import annotations

import asyncio
import functools
import logging

from .execution import Run

logger = logging.getLogger(__name__)

# Runs whose teardown may still be pending after their result (Run.teardown_after): past these a run's result waits
# for its own, so a kernel slow to end sandboxes slows the jobs instead of piling them up.
TEARDOWNS_AFTER = 16


class Teardowns:
    """The runs' cleanups, each in a task that a second cancellation cannot interrupt; `after` of them may go on once
    their runs have answered (0: none, for a sandbox whose runs are on event loops that end: see Sandbox.create)."""

    def __init__(self, after: int = 0) -> None:
        self.after = after
        self._pending: set[asyncio.Task[None]] = set()

    async def end(self, run: Run) -> None:
        """Kill the run's tree (synchronously), then clean up; wait for that unless its result is whole already
        (Run.teardown_after) and fewer than `after` teardowns are pending."""
        run.kill()
        cleanup = asyncio.ensure_future(run.cleanup())
        self._pending.add(cleanup)
        cleanup.add_done_callback(self._pending.discard)
        if not run.teardown_after or len(self._pending) > self.after:
            await asyncio.shield(cleanup)
        else:  # nobody awaits it: its failure is told here
            cleanup.add_done_callback(functools.partial(_told, run.name))

    async def finished(self) -> None:
        """Until the teardowns begun on this event loop are done (another loop's cannot be waited for here)."""
        loop = asyncio.get_running_loop()
        pending = [task for task in self._pending if task.get_loop() is loop]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def _told(name: str, task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error("%s: tearing its sandbox down after its result failed", name, exc_info=error)
