"""Deadlines: the queue's backstop timeout for every run of a worker, kept by one loop timer."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping

from .running import Running, RunState


class Deadlines:
    """One timer for all the runs of a worker, armed at the earliest deadline among them: when it fires it expires
    the runs past theirs (`Running.expire`) and is armed again at the next one. A timer per run (asyncio.timeout)
    cost a no-op job 8 of its 36 µs here, mostly in cancelling it; deadlines arrive in about the order jobs start,
    so this one fires about once per timeout and looks at the runs of this worker (its slots) only then."""

    def __init__(self, runs: Mapping[str, Running]) -> None:
        self._runs = runs
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf

    def watch(self, run: Running, seconds: float, loop: asyncio.AbstractEventLoop) -> None:
        """`run` (registered in `runs`) expires `seconds` from now (by `loop`, the running one) unless it has ended
        by then."""
        run.deadline = deadline = loop.time() + seconds
        if deadline < self._at:
            self._arm(loop, deadline)

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = deadline
        self._timer = loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer, self._at = None, math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        nearest = math.inf
        for run in list(self._runs.values()):
            if run.state is not RunState.RUNNING:
                continue
            if run.deadline <= now:
                run.expire()
            elif run.deadline < nearest:
                nearest = run.deadline
        if nearest < math.inf:
            self._arm(loop, nearest)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._at = None, math.inf
