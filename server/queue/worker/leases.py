"""Leases: a worker's hold on the jobs it runs, renewed while they run, and its heartbeat in the instances view."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from ...errors import BackendUnavailable
from ..base import Store
from ..loops import raise_if_cancelling
from .running import Running

logger = logging.getLogger(__name__)


class Leases:
    """Renews the leases of `runs` (reading the stop requests recorded on those jobs), reclaims the expired leases
    of instances that died, and beats this instance's heartbeat, every third of a lease."""

    def __init__(self, store: Store, runs: Mapping[str, Running], *, slots: int, lease_ms: int, retry: bool) -> None:
        self._store = store
        self._runs = runs
        self._slots = slots
        self._lease_ms = lease_ms
        self._retry = retry

    async def heartbeat(self) -> None:
        """This instance's record (its slots), alive for one lease: an instance that stops beating for that long
        has lost its leases too."""
        await self._store.heartbeat(slots=self._slots, ttl_ms=self._lease_ms)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000.0)
            try:
                await self._keep()
            except BackendUnavailable as exc:
                raise_if_cancelling()
                logger.warning("lease renewal, reclaim or heartbeat failed: %s", exc.message)
            except Exception:
                raise_if_cancelling()
                logger.exception("lease renewal, reclaim or heartbeat failed")

    async def _keep(self) -> None:
        if self._runs:
            stops = await self._store.renew(list(self._runs), lease_ms=self._lease_ms)
            for job_id, reason in stops.items():
                run = self._runs.get(job_id)
                if run is not None:
                    run.stop(reason)
        lost = await self._store.reclaim(retry=self._retry, lease_ms=self._lease_ms)
        for job_id in lost:
            logger.warning("job %s lost its worker (lease expired)", job_id)
        await self.heartbeat()  # last: a view's record never delays keeping leases
