"""Reaper: what is left of an ended run once its result is out, released by a thread of its own."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable

from .cgroups import JobCgroup

logger = logging.getLogger(__name__)

# Ended runs waiting for their release, at most: past it a run releases its own (on the event loop, as before the
# reaper), so a reaper held up (v1 rmdirs queue on one kernel mutex) slows the jobs instead of piling up their
# cgroups and descriptors.
MAX_PENDING = 256


class Reaper:
    """Releases what ended runs leave: their cgroups (and a warm sandbox's mount namespace), in a thread of its own
    after the result has gone out. The run is over when it is handed here (its pid 1 reaped, its pipes at EOF): what
    is left is the kernel's teardown, which would otherwise sit on the result's path and block the event loop (a cold
    run's three v1 rmdirs held the loop for 2.2 ms a job under load).

    - The mount namespace (held by a descriptor since the sandbox was ready, see warm.start_warm): pid 1, its last
      process, would otherwise unmount the sandbox's filesystems as it exits (an RCU wait among them), and its pipes
      reach EOF only after that.
    - The cgroups: a v1 rmdir waits for cgroup_mutex, which a sandbox starting meanwhile (the pool's refill joining its
      cgroups) holds across an RCU grace period: 1-2 ms back to back, ~10 ms after a quiet spell.

    `then` runs once both are gone (the pool counts the sandbox in use until then), and close() waits for everything
    handed in before it."""

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[tuple[JobCgroup | None, list[int], Callable[[], None]] | None]
        self._work = queue.SimpleQueue()
        # Handed in (by the event loop) and released (by the thread): each written by one thread only.
        self._handed = self._released = 0
        self._thread = threading.Thread(target=self._loop, name="conveyor-reaper", daemon=True)
        self._thread.start()

    def release(self, cgroup: JobCgroup | None, held: list[int], then: Callable[[], None]) -> bool:
        """Close `held` (descriptors that keep the sandbox's namespaces), remove `cgroup`, then call `then`; False
        (nothing taken) past MAX_PENDING waiting."""
        if self._handed - self._released >= MAX_PENDING:
            return False
        self._handed += 1
        self._work.put((cgroup, held, then))
        return True

    def caught_up(self) -> threading.Event:
        """An event set once everything handed in before this call is released."""
        done = threading.Event()
        self._handed += 1
        self._work.put((None, [], done.set))
        return done

    def _loop(self) -> None:
        while (item := self._work.get()) is not None:
            cgroup, held, then = item
            try:
                for fd in held:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                if cgroup is not None:
                    cgroup.remove_now()
            except Exception:
                logger.exception("releasing an ended sandbox failed")
            finally:
                self._released += 1
                then()

    def close(self) -> None:
        """Finish what was handed in so far and stop the thread."""
        self._work.put(None)
        self._thread.join()
