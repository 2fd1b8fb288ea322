"""The worker: one implementation of the queue for every store. Claims jobs, runs each in its own task, finishes
where no stop can interrupt it, with retries, and owns stop requests, stdin budgets, waiters and shutdown."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any

from ...errors import BackendUnavailable, Conflict, NotFound, ShuttingDown
from ..base import InstanceRecord, SettlesAtOnce, Store, backstop_s
from ..events import Event, EventEmitter
from ..jobs import ExecutionResult, Executor, Job, JobStatus
from ..loops import stop_task
from .claiming import WAKE_TIMEOUT_S, ClaimLoop
from .deadlines import Deadlines
from .handoff import Claimed, ClaimsOnFinish, FinishBatcher, store_result
from .leases import Leases
from .running import Running, RunState, StdinChannel
from .waiters import Waiters

logger = logging.getLogger(__name__)

TERMINAL = frozenset(s.value for s in JobStatus if s.finished)
# Stop notifications for jobs not (yet) registered here: a claim in flight registers them on arrival.
EARLY_STOPS = 1024


class Worker:
    """A `QueueBackend` over a `Store`: runs at most `slots` jobs here; `max_concurrent` is the store-wide bound."""

    def __init__(
        self,
        store: Store,
        *,
        executor: Executor,
        max_concurrent: int = 5,
        max_queue_size: int = 100,
        slots: int | None = None,
        lease_timeout_ms: int = 15_000,
        retry_lost_jobs: bool = False,
        timeout_grace_ms: float = 0.0,
        max_stdin_bytes: int = 1_048_576,
    ) -> None:
        self.store = store
        self.events: EventEmitter = store.events
        self.max_concurrent = max_concurrent
        self.max_queue_size = max_queue_size
        self._executor = executor
        self._slots = max_concurrent if slots is None else slots
        self._lease_ms = lease_timeout_ms
        self._retry = retry_lost_jobs
        self._grace_s = timeout_grace_ms / 1000.0
        self._stdin_budget = max_stdin_bytes
        self._running: dict[str, Running] = {}
        self._leases = Leases(store, self._running, slots=self._slots, lease_ms=lease_timeout_ms, retry=retry_lost_jobs)
        self._deadlines = Deadlines(self._running)
        self._finishing: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._waiters = Waiters()
        self._early_stops: OrderedDict[str, str] = OrderedDict()
        self._loops: list[asyncio.Task[None]] = []
        self._closing = False
        self._claims = ClaimLoop(
            store, free=self._free, fill=self._fill, drained=self._drained, fill_now=self._fill_now
        )
        self._unsubscribe: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop, from start(): one lookup less a job
        # Slots promised to a claim in flight: two claims at once (the loop's, a finish's) never take the same slot.
        self._reserved = 0
        # A store that claims at once (memory) is claimed from right after a finish without awaiting it, and on its
        # news of work (`ClaimLoop.news`) without the claim loop's task.
        self._settles = store if isinstance(store, SettlesAtOnce) else None
        self._claim_now = self._settles.claim_now if self._settles is not None else None
        self._append_now = self._settles.append_event_now if self._settles is not None else None
        # A store that can claim as it finishes (Redis) gets its finishes batched, and claims with them.
        self._batcher: FinishBatcher | None = None
        if isinstance(store, ClaimsOnFinish):
            self._batcher = FinishBatcher(
                store,
                reserve=self._reserve_for_finish,
                unreserve=self._unreserve,
                start=self._start_claimed_on_finish,
                lease_ms=lease_timeout_ms,
                max_concurrent=max_concurrent,
            )

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.store.on_control = self._on_control
        if self._settles is not None:
            self._settles.on_work = self._claims.news
        self._unsubscribe = self.events.subscribe(self._waiters.on_terminal, types=TERMINAL)
        await self.store.start()
        with suppress(BackendUnavailable):
            await self._leases.heartbeat()  # in the instances view from the start, not after the first lease interval
        self._loops.append(asyncio.create_task(self._leases.run(), name="conveyor-leases"))
        if self._slots > 0:
            self._loops.append(asyncio.create_task(self._claims.run(), name="conveyor-claim"))

    async def close(self, grace_s: float = 0.0) -> None:
        if self._closing:
            return
        self._closing = True
        # Take no new work. The claim loop is woken, not cancelled (cancelling redis-py inside a blocking pop was
        # seen to hang): it leaves the store's wait pending, and store.close() below ends that wait. A claim in
        # flight registers its jobs first, so they are stopped below with the others.
        self._claims.close()
        if len(self._loops) > 1:
            await asyncio.wait(self._loops[1:], timeout=WAKE_TIMEOUT_S + 1)
        with suppress(Exception):
            await self.store.abandon_queued("shutdown")
        runs = [r.task for r in self._running.values() if r.task is not None]
        if runs and grace_s > 0:
            await asyncio.wait(runs, timeout=grace_s)
        for run in list(self._running.values()):
            run.stop("shutdown")
        await self._finish_all()
        with suppress(Exception):
            await self.store.drain(2.0)  # our terminal events reach the hub before it closes the sockets
        self._waiters.wake_all()
        self._deadlines.close()
        await self._stop_tasks()

    async def _finish_all(self) -> None:
        """Wait for every run and finish, so each job's terminal state is stored (finishes retry). If the store
        stays unreachable, give up after a lease: the job then ends as worker_lost elsewhere."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lease_ms / 1000.0 + 5
        while (self._running or self._finishing) and loop.time() < deadline:
            pending: list[asyncio.Task[Any]] = [r.task for r in self._running.values() if r.task and not r.task.done()]
            pending += list(self._finishing)
            if pending:
                await asyncio.wait(pending, timeout=1.0)
            else:
                await asyncio.sleep(0.01)

    async def _stop_tasks(self) -> None:
        for task in [*self._loops, *self._background]:
            task.cancel()
        if self._unsubscribe is not None:
            self._unsubscribe()
        # Closing the store's connections is what interrupts a blocking wait for work (redis-py may hold on to a
        # cancellation until its socket answers).
        await self.store.close()
        left = [*self._loops, *self._background]
        if self._claims.store_wait is not None:
            left.append(self._claims.store_wait)
        for task in left:
            await stop_task(task)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the queue's public side -----------------------------------------------------------------------------

    def submit(self, job: Job) -> Coroutine[Any, Any, Job]:
        """`QueueBackend.submit`: the store's enqueue itself, awaited by the caller (no coroutine of its own)."""
        if self._closing:
            raise ShuttingDown("The server is shutting down; try another instance or retry shortly.", retryAfter=5)
        return self.store.enqueue(job, max_queue_size=self.max_queue_size, max_concurrent=self.max_concurrent)

    async def get(self, job_id: str) -> Job | None:
        return await self.store.get(job_id)

    async def position(self, job: Job) -> int | None:
        if job.status is not JobStatus.QUEUED:
            return None
        return (await self.store.positions([job.id])).get(job.id)

    async def positions(self, job_ids: list[str]) -> dict[str, int | None]:
        return await self.store.positions(job_ids)

    async def recent(self, limit: int = 100, *, whole: bool = True) -> list[Job]:
        return await self.store.recent(limit, whole=whole)

    async def listing(self, finished: int) -> list[Job]:
        return await self.store.listing(finished)

    async def instances(self) -> list[InstanceRecord]:
        return await self.store.instances()

    async def stats(self) -> dict[str, Any]:
        stats = await self.store.stats(max_concurrent=self.max_concurrent, max_queue_size=self.max_queue_size)
        return stats

    def note_rate_limited(self) -> None:
        self.store.note_rate_limited()

    async def read_events(self, job_id: str, since: int) -> list[Event]:
        return await self.store.read_events(job_id, since)

    async def cancel(self, job_id: str) -> Job:
        status, job = await self.store.cancel(job_id, "cancelled")
        if status == "missing" or job is None:
            raise NotFound(f"No job with id {job_id!r}.")
        if status != "queued":
            raise Conflict(f"Job {job_id} is {status}; only queued jobs can be cancelled.", status=status)
        return job

    async def stop(self, job_id: str, reason: str = "stopped") -> Job:
        status, job = await self.store.request_stop(job_id, reason)
        if status == "missing" or job is None:
            raise NotFound(f"No job with id {job_id!r}.")
        if status == "queued":
            return job
        if status != "running":
            raise Conflict(f"Job {job_id} is already {status}.", status=status)
        run = self._running.get(job_id)
        if run is not None:
            run.stop(reason)
        # The instance running it tears the process tree down and records the final status. It may be gone: then
        # the lease lapses and the job ends as worker_lost; the caller gets the job as it is, never a 500.
        try:
            async with asyncio.timeout(self._lease_ms * 4 / 3000.0 + self._grace_s + 5):
                return await self.wait(job_id)
        except TimeoutError:
            return await self.store.get(job_id) or job

    async def wait(self, job_id: str) -> Job:
        """Wait for the final state. Never on one event alone: on every wake-up and every WAIT_RECHECK_S the store
        is read again, and close() wakes every waiter."""
        return await self._waiters.wait(job_id, self.store.get, lambda: self._closing and job_id not in self._running)

    # -- stdin -----------------------------------------------------------------------------------------------

    async def write_stdin(self, job_id: str, data: bytes | None) -> None:
        await self.store.push_stdin(job_id, data, self._stdin_budget)

    async def _deliver_stdin(self, job_id: str) -> None:
        run = self._running.get(job_id)
        if run is not None:
            await run.take_input(self.store.take_stdin)

    def _ack_stdin(self, job_id: str, size: int) -> None:
        self._spawn(self._ack_quietly(job_id, size))

    async def _ack_quietly(self, job_id: str, size: int) -> None:
        with suppress(Exception):
            await self.store.ack_stdin(job_id, size)

    # -- control from the store ------------------------------------------------------------------------------

    def _on_control(self, kind: str, job_id: str, reason: str | None) -> None:
        if kind == "_stdin":
            if job_id in self._running:
                self._spawn(self._deliver_stdin(job_id))
        elif kind == "_stop":
            run = self._running.get(job_id)
            if run is not None:
                run.stop(reason or "stopped")
            else:
                # Perhaps ours, between the claim and its registration here: the claim reads it on arrival.
                self._early_stops[job_id] = reason or "stopped"
                while len(self._early_stops) > EARLY_STOPS:
                    self._early_stops.popitem(last=False)

    # -- claiming and running --------------------------------------------------------------------------------

    def _free(self) -> int:
        return self._slots - len(self._running) - self._reserved

    def _drained(self) -> bool:
        if self._batcher is None or not self._batcher.drained:
            return False
        self._batcher.drained = False
        return True

    def _reserve_for_finish(self, finishing: int) -> int:
        """Jobs a finish of `finishing` runs (still registered here) may claim: the slots they free and the free
        ones, none while closing."""
        count = 0 if self._closing else max(0, self._free() + finishing)
        self._reserved += count
        return count

    def _unreserve(self, count: int) -> None:
        self._reserved -= count

    def _start_claimed_on_finish(self, jobs: Claimed) -> None:
        # A finish-and-claim sent before close() began can answer after close() stopped the running jobs (close()
        # waits for the claim loop, not for finishes): what it claimed is stopped too, not left running (and
        # `running` in the store, its lease unrenewed) while the worker goes away.
        for job, stop in jobs:
            self._start(job, stop or ("shutdown" if self._closing else None))

    async def _fill(self) -> bool:
        """Claim as many jobs as there are free slots here and start them; True when it filled them all (more
        may be waiting). Called by the claim loop, and right after a finish on a store that does not claim then."""
        free = self._slots - len(self._running) - self._reserved  # _free(), once per job
        if free <= 0 or self._closing:
            return False
        self._reserved += free
        try:
            jobs = await self.store.claim(free, lease_ms=self._lease_ms, max_concurrent=self.max_concurrent)
        finally:
            self._reserved -= free
        for job, stop in jobs:
            self._start(job, stop)
        return len(jobs) == free

    def _fill_now(self, claim_now: Callable[..., Claimed] | None = None) -> None:
        """`_fill` on a store that settles at once: the same claim, without awaiting it."""
        claim_now = claim_now or self._claim_now
        free = self._slots - len(self._running) - self._reserved
        if free > 0 and not self._closing and claim_now is not None:
            for job, stop in claim_now(free, lease_ms=self._lease_ms, max_concurrent=self.max_concurrent):
                self._start(job, stop)

    def _start(self, job: Job, stop: str | None) -> None:
        run = Running(job, self.store.append_event, self._append_now)
        self._running[job.id] = run
        if job.interactive:
            # Live input only: the runner writes the submission's stdin first, then this channel.
            run.stdin = StdinChannel(lambda size: self._ack_stdin(job.id, size))
        after = functools.partial(self._after_run, run)  # removed by identity; lighter than a closure
        loop = self._loop or asyncio.get_running_loop()
        run.task = loop.create_task(run.run(self._executor, self._finish, after), name=f"job-{job.id}")
        run.task.add_done_callback(after)
        # backstop_s() for a job without tests (most), without its two calls.
        seconds = backstop_s(job, self._grace_s) if job.tests else job.timeout_ms / 1000.0 + self._grace_s
        self._deadlines.watch(run, seconds, loop)
        if not stop and self._early_stops:
            stop = self._early_stops.pop(job.id, None)
        if stop:
            run.stop(stop)
        if job.interactive:
            self._spawn(self._deliver_stdin(job.id))  # input written before the claim is waiting in the store

    def _after_run(self, run: Running, _task: object = None) -> None:
        """The job's task ended. If it ended before its finish was stored (cancelled from outside, or a failure),
        finish in a task of its own under shield, so nothing else can interrupt storing the result."""
        task = run.task
        if self._running.get(run.job.id) is not run or task is None:
            return  # finished and released
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("finishing job %s failed; finishing again", run.job.id, exc_info=error)
        run.state = RunState.FINISHING
        task = asyncio.ensure_future(self._finish_again(run))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish_again(self, run: Running) -> None:
        assert run.task is not None
        try:
            if run.outcome is None:
                run.outcome = JobStatus.CANCELLED, ExecutionResult(reason=run.stop_reason or "shutdown")
            await asyncio.shield(self._finish(run, *run.outcome))
        except Exception:
            logger.exception("finishing job %s failed", run.job.id)
        finally:
            self._release(run)

    async def _finish(self, run: Running, status: JobStatus, result: ExecutionResult) -> None:
        """Output events out, then the result stored (retried), then the freed slot takes the next job at once: in
        the same call on Redis (finish-and-claim), else by a claim right after."""
        job = run.job
        if run.outputs is not None:
            await run.output_sent()  # output events go out before the terminal one
        if self._batcher is not None:
            if await store_result(self.store, self._batcher, job, status, result):
                self._waiters.finished(job)
            self._release(run)
            return
        try:  # the first attempt made here (one coroutine less a job); store_result retries
            stored = await self.store.finish(job, status, result)
        except Exception as exc:
            logger.warning("job %s: storing the result failed (%s); retrying", job.id, exc)
            stored = await store_result(self.store, None, job, status, result)
        else:
            if not stored:
                logger.warning("job %s: lease lost before its result was stored", job.id)
                stored = True  # as store_result answers it: finished here, by whoever holds it now
        if stored:
            self._waiters.finished(job)
        if self._closing:
            self._release(run)
            return
        # The claim loop is woken only if the claim right after leaves a slot free (never on a store that settles
        # at once: its news of work comes to `ClaimLoop.news`): a busy worker's slots pass from job to job here, and the
        # loop sleeps. A stored result's terminal event, emitted as it was stored here, has woken the job's
        # waiters already.
        self._release(run, wake_claims=False, wake_waiters=not stored)
        try:
            if self._claim_now is not None:
                self._fill_now(self._claim_now)
                return
            await self._fill()
        except Exception:
            pass  # the claim loop, woken below, tries again
        if self._slots - len(self._running) - self._reserved > 0:  # _free()
            self._claims.freed()

    def _release(self, run: Running, *, wake_claims: bool = True, wake_waiters: bool = True) -> None:
        if self._running.get(run.job.id) is run:
            del self._running[run.job.id]
            if wake_claims:
                self._claims.freed()
        if wake_waiters:
            self._waiters.wake(run.job.id)
