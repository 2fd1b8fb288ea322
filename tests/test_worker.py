"""The worker over both stores (issue 12): finishing that nothing interrupts, durable stops, waiters that never
hang, zero and byte retention, stdin budgets, one count per job, FIFO for any priority, replay from any instance,
and Redis outages, stalls, restarts and bursts on a private redis-server."""

from __future__ import annotations

import asyncio
import functools
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from server.errors import BackendUnavailable, Conflict, InputBacklog, NotFound, ShuttingDown
from server.queue import Worker
from server.queue.events import Event
from server.queue.jobs import ExecutionResult, Job, JobIO, JobStatus
from tests.conftest import free_port
from tests.queues import Gate, build_queue, eventually, job, started, status_of

MakeQueue = Callable[..., Any]


class SlowFinish:
    """Holds the store's FINISH until released: the window in which a stop or a shutdown used to kill it. On Redis
    a worker finishes through `finish_and_claim` (several at once, claiming the next): that is held too."""

    def __init__(self, queue: Worker) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self._finish = queue.store.finish
        queue.store.finish = self  # type: ignore[method-assign]
        store: Any = queue.store
        if hasattr(store, "finish_and_claim"):
            self._finish_and_claim = store.finish_and_claim
            store.finish_and_claim = self._held_finish_and_claim

    async def __call__(self, job: Job, status: JobStatus, result: ExecutionResult) -> bool:
        self.entered.set()
        await self.release.wait()
        return await self._finish(job, status, result)

    async def _held_finish_and_claim(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        await self.release.wait()
        return await self._finish_and_claim(*args, **kwargs)


# -- 1: a stop or a shutdown while the result is being stored ------------------------------------------------


async def test_a_stop_racing_the_finish_keeps_the_result(make_queue: MakeQueue, gate: Gate) -> None:
    queue = await make_queue(max_concurrent=1)
    slow = SlowFinish(queue)
    j = await queue.submit(job("done"))
    await started(gate, 1)
    gate.finish("done", ExecutionResult(exit_code=0, stdout="all of it"))
    await slow.entered.wait()
    stopping = asyncio.create_task(queue.stop(j.id))
    await asyncio.sleep(0)
    slow.release.set()
    try:
        stopped = await stopping
    except Conflict:  # the stop read the job only once the finish was stored (Redis: a few awaits in): too late
        stopped = await queue.get(j.id)
    assert stopped.status is JobStatus.COMPLETED and stopped.result.stdout == "all of it"
    assert (await queue.wait(j.id)).result.stdout == "all of it"


async def test_sigterm_during_a_finish_stores_the_result(make_queue: MakeQueue, gate: Gate, backend: str) -> None:
    queue = await make_queue(max_concurrent=1)
    slow = SlowFinish(queue)
    j = await queue.submit(job("done"))
    await started(gate, 1)
    gate.finish("done", ExecutionResult(exit_code=0, stdout="kept"))
    await slow.entered.wait()
    closing = asyncio.create_task(queue.close(grace_s=0))
    await asyncio.sleep(0)
    slow.release.set()
    await closing
    reader = await make_queue(max_concurrent=1, executor=Gate()) if backend == "redis" else queue
    done = await reader.get(j.id)
    assert done.status is JobStatus.COMPLETED and done.result.stdout == "kept"


# -- 2: a stop that lands before the claiming instance registered the job ------------------------------------


async def test_a_stop_before_the_claim_registers_is_not_lost(make_queue: MakeQueue, gate: Gate) -> None:
    queue = await make_queue(max_concurrent=1, lease_timeout_ms=1000)
    claim = queue.store.claim

    async def claim_then_stop(count: int, **kwargs: Any) -> Any:
        claimed = await claim(count, **kwargs)
        for j, _ in claimed:  # the job is running in the store, not yet here
            await queue.store.request_stop(j.id, "stopped")
        return claimed

    queue.store.claim = claim_then_stop
    j = await queue.submit(job("loop"))
    done = await queue.wait(j.id)
    assert done.status is JobStatus.CANCELLED and done.result.reason == "stopped"


async def test_a_stop_request_is_durable_state_read_at_renewal(make_queue: MakeQueue, gate: Gate) -> None:
    queue = await make_queue(max_concurrent=1, lease_timeout_ms=1000)
    queue.store.on_control = None  # the prompt notification is lost: the renewal still finds the request
    j = await queue.submit(job("loop"))
    await started(gate, 1)
    status, _ = await queue.store.request_stop(j.id, "stopped")
    assert status == "running"
    done = await queue.wait(j.id)
    assert done.status is JobStatus.CANCELLED and gate.cancelled == ["loop"]


async def test_the_embedded_store_tells_the_worker_of_work_without_its_claim_loop(gate: Gate) -> None:
    """On a store that settles at once, an enqueue is news to the worker itself (the claim loop stays asleep): with
    the claim loop gone, a job still starts, and one that found every slot taken starts as a slot frees, by the
    finish of a run or of one stopped before it began."""
    queue = build_queue("memory", executor=gate, max_concurrent=1)
    await queue.start()
    try:
        await asyncio.sleep(0)  # the claim loop's first look, then it is gone
        queue._loops[1].cancel()
        first = await queue.submit(job("first"))
        await started(gate, 1)
        second, third, fourth = [await queue.submit(job(code)) for code in ("second", "third", "fourth")]
        queue._on_control("_stop", second.id, "stopped")  # as a store's stop for a job not running here yet
        gate.finish("first")  # its finish claims the second, stopped before its run began
        assert (await queue.wait(second.id)).status is JobStatus.CANCELLED
        await started(gate, 2)
        gate.finish("third")
        await started(gate, 3)
        gate.finish("fourth")
        assert (await queue.wait(fourth.id)).status is JobStatus.COMPLETED
        assert gate.started == ["first", "third", "fourth"] and (await queue.wait(first.id)).status.finished
        assert (await queue.wait(third.id)).status is JobStatus.COMPLETED
    finally:
        await queue.close()


# -- 3, 13: waiters never hang -----------------------------------------------------------------------------


async def test_a_missed_terminal_event_does_not_hang_a_waiter(make_queue: MakeQueue, gate: Gate) -> None:
    queue = await make_queue()
    queue._unsubscribe()  # the waiter's wake-up never comes
    j = await queue.submit(job("x"))
    gate.finish("x")
    assert (await queue.wait(j.id)).status is JobStatus.COMPLETED


async def test_close_releases_every_waiter(make_queue: MakeQueue, gate: Gate, backend: str) -> None:
    queue = await make_queue(max_concurrent=1)
    running = await queue.submit(job("run"))
    await started(gate, 1)
    queued = await queue.submit(job("wait"))
    waiters = [asyncio.create_task(queue.wait(j.id)) for j in (running, queued)]
    await asyncio.sleep(0)
    await queue.close(grace_s=0)
    ran, waited = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(ran, Job)
    assert ran.status is JobStatus.CANCELLED and ran.result is not None and ran.result.reason == "shutdown"
    if backend == "memory":
        assert isinstance(waited, Job) and waited.status is JobStatus.CANCELLED
    else:  # still queued in Redis for another instance: the caller is told where to look
        assert isinstance(waited, ShuttingDown) and waited.body()["jobId"] == queued.id


async def test_close_wakes_an_idle_claim_loop_without_cancelling_the_stores_wait(make_queue: MakeQueue) -> None:
    """close() used to wait out the claim loop's wake-up (WAKE_TIMEOUT_S at every shutdown) and then cancel it
    inside the store's wait, which redis-py was seen to hang on. Here the store's wait lasts an hour: close() must
    end the loop by waking it, and the store's wait may end only once the store is closed."""
    queue = await make_queue(max_concurrent=1)
    order: list[str] = []
    entered = asyncio.Event()
    real_wait, real_close = queue.store.wait_for_work, queue.store.close

    async def long_wait(timeout: float) -> None:
        order.append("waiting")
        entered.set()
        try:
            await real_wait(3600)
        except asyncio.CancelledError:
            order.append("wait cancelled")
            raise
        except Exception:
            order.append("wait failed")  # Redis: the closed connection ends the blocking pop
            raise
        order.append("wait ended")

    async def close() -> None:
        order.append("store closed")
        await real_close()

    queue.store.wait_for_work = long_wait
    queue.store.close = close
    await entered.wait()
    claim_loop = queue._loops[1]
    await queue.close()
    assert claim_loop.done() and not claim_loop.cancelled()  # it returned: woken, not cancelled
    # One wait (the loop left at once, not after another round), ended only after the store closed.
    assert order[:2] == ["waiting", "store closed"] and len(order) == 3, order


async def test_a_waiter_of_a_job_the_store_lost_gets_an_answer(make_queue: MakeQueue, backend: str) -> None:
    queue = await make_queue(max_concurrent=1, worker_slots=0)
    j = await queue.submit(job("never runs"))
    waiter = asyncio.create_task(queue.wait(j.id))
    await asyncio.sleep(0)
    if backend == "redis":
        await queue.store._redis.flushall()  # what a Redis restart without persistence leaves
    else:
        queue.store._active.clear()
    with pytest.raises(NotFound):
        await waiter


# -- 4, 6: retention by zero, by bytes ---------------------------------------------------------------------


@pytest.mark.parametrize("zero", ["retention_seconds", "retention_count", "retention_bytes"])
async def test_zero_retention_still_delivers(make_queue: MakeQueue, backend: str, zero: str) -> None:
    seen: list[Event] = []
    queue = await make_queue(executor=_printer, **{zero: 0})
    queue.events.subscribe(seen.append)
    j = await queue.submit(job("x"))
    done = await queue.wait(j.id)
    assert done.status is JobStatus.COMPLETED and done.result.stdout == "x"
    await eventually(lambda: any(e["type"] == "completed" for e in seen))
    assert [j for j in await queue.recent() if j.status.finished] == []
    await queue.close()  # nobody runs jobs now: the next one stays queued
    idle = await make_queue(worker_slots=0, **{zero: 0})
    target = await idle.submit(job("z"))
    cancelled = await idle.cancel(target.id)  # no KeyError on a record retired at once
    assert cancelled.status is JobStatus.CANCELLED
    if backend == "redis":
        client = idle.store._redis
        for key in await client.keys("*:job:*") + await client.keys("*:log:*"):
            assert await client.ttl(key) > 0, key  # nothing left without a TTL


async def _printer(job: Job, io: JobIO) -> ExecutionResult:
    io.on_output("stdout", job.code)
    return ExecutionResult(exit_code=0, stdout=job.code)


async def test_retention_by_bytes(make_queue: MakeQueue) -> None:
    async def big(job: Job, io: JobIO) -> ExecutionResult:
        return ExecutionResult(exit_code=0, stdout=job.code * 100_000)  # 100 kB each

    queue = await make_queue(executor=big, retention_bytes=350_000)
    ids = []
    for code in "abcde":
        j = await queue.submit(job(code))
        await queue.wait(j.id)
        ids.append(j.id)
    listed = {j.id for j in await queue.recent()}
    # About three 100 kB records fit in 350 kB: the oldest went first, the newest stay.
    assert ids[-1] in listed and ids[-2] in listed and ids[0] not in listed and len(listed) <= 3


# -- 5: stdin in flight is bounded -------------------------------------------------------------------------


async def test_stdin_past_the_budget_is_refused_and_the_job_goes_on(make_queue: MakeQueue, backend: str) -> None:
    reading = asyncio.Event()

    async def slow_reader(job: Job, io: JobIO) -> ExecutionResult:
        assert io.stdin is not None
        await reading.wait()
        parts = []
        while (chunk := await io.stdin.get()) is not None:
            parts.append(chunk)
        return ExecutionResult(exit_code=0, stdout=str(sum(len(p) for p in parts)))

    queue = await make_queue(executor=slow_reader, max_stdin_bytes=1000)
    j = await queue.submit(job("x", interactive=True))
    await eventually(lambda: _running(queue, j.id))
    await queue.write_stdin(j.id, b"a" * 600)
    with pytest.raises(InputBacklog) as info:
        await queue.write_stdin(j.id, b"b" * 600)  # 1,200 bytes would wait: refused
    assert info.value.status == 429 and info.value.body()["maxBytes"] == 1000
    assert await status_of(queue, j.id) is JobStatus.RUNNING
    reading.set()
    await eventually(lambda: _accepts(queue, j.id, b"c" * 600))  # once read, the budget is back
    await queue.write_stdin(j.id, None)
    done = await queue.wait(j.id)
    assert done.status is JobStatus.COMPLETED and done.result.stdout == "1200"
    if backend == "redis":
        assert await queue.store._redis.exists(f"conveyor:stdin:{j.id}") == 0


async def test_stdin_for_a_queued_job_waits_within_the_budget(make_queue: MakeQueue, backend: str) -> None:
    async def echo(job: Job, io: JobIO) -> ExecutionResult:
        assert io.stdin is not None
        parts = []
        while (chunk := await io.stdin.get()) is not None:
            parts.append(chunk)
        return ExecutionResult(exit_code=0, stdout=b"".join(parts).decode())

    queue = await make_queue(executor=echo, max_stdin_bytes=1000, max_concurrent=1)
    blocker = await queue.submit(job("block", interactive=True))
    await eventually(lambda: _running(queue, blocker.id))
    waiting = await queue.submit(job("x", interactive=True))
    cancelled = await queue.submit(job("y", interactive=True))
    await queue.write_stdin(waiting.id, b"a" * 600)
    with pytest.raises(InputBacklog):
        await queue.write_stdin(waiting.id, b"b" * 600)  # the budget holds while it waits too
    await queue.write_stdin(waiting.id, None)
    await queue.write_stdin(cancelled.id, b"gone")
    await queue.cancel(cancelled.id)
    if backend == "redis":  # a cancelled job's waiting input goes with it
        assert await queue.store._redis.exists(f"conveyor:stdin:{cancelled.id}") == 0
    await queue.write_stdin(blocker.id, None)
    done = await queue.wait(waiting.id)
    assert done.status is JobStatus.COMPLETED and done.result is not None and done.result.stdout == "a" * 600


async def _running(queue: Worker, job_id: str) -> bool:
    return await status_of(queue, job_id) is JobStatus.RUNNING


async def _accepts(queue: Worker, job_id: str, data: bytes) -> bool:
    try:
        await queue.write_stdin(job_id, data)
    except InputBacklog:
        return False
    return True


# -- 9: positions and FIFO ---------------------------------------------------------------------------------


async def test_fifo_holds_for_every_priority(make_queue: MakeQueue, gate: Gate) -> None:
    queue = await make_queue(max_concurrent=1)
    await queue.submit(job("first"))
    await started(gate, 1)
    high = 2**40  # a double score of priority x 2^32 cannot keep arrival order from 2^21 up
    jobs = [await queue.submit(job(f"h{i}", priority=high)) for i in range(4)]
    jobs.append(await queue.submit(job("top", priority=high + 1)))
    places = await queue.positions([j.id for j in jobs])
    assert [places[j.id] for j in jobs] == [2, 3, 4, 5, 1]
    order = ["top", "h0", "h1", "h2", "h3"]
    gate.finish("first")
    for n, code in enumerate(order, 2):
        await started(gate, n)
        assert gate.started[-1] == code
        gate.finish(code)


# -- 8, 10: two instances on one Redis ---------------------------------------------------------------------


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[Worker, Worker, Gate]]:
    gate = Gate()
    front = build_queue("redis", redis_url, executor=gate, worker_slots=0)
    runner = build_queue("redis", redis_url, executor=gate, worker_slots=1)
    await front.start()
    await runner.start()
    yield front, runner, gate
    await front.close()
    await runner.close()


async def test_each_job_is_counted_once_across_instances(pair: tuple[Worker, Worker, Gate]) -> None:
    front, runner, gate = pair
    counted: dict[str, list[str]] = {"front": [], "runner": []}
    for name, queue in (("front", front), ("runner", runner)):
        queue.events.subscribe(functools.partial(_append_type, counted[name]), here_only=True)
    j = await front.submit(job("x"))
    gate.finish("x")
    await front.wait(j.id)
    await eventually(lambda: "completed" in counted["runner"])
    assert counted["front"] == ["queued"] and counted["runner"] == ["running", "completed"]


def _append_type(kinds: list[str], event: Event) -> None:
    kinds.append(event["type"])


async def test_since_replays_on_any_instance(pair: tuple[Worker, Worker, Gate]) -> None:
    front, runner, gate = pair

    async def talker(job: Job, io: JobIO) -> ExecutionResult:
        io.on_output("stdout", "one ")
        io.on_output("stderr", "two")
        return ExecutionResult(exit_code=0)

    runner._executor = talker
    j = await front.submit(job("x"))
    await front.wait(j.id)
    events = await front.read_events(j.id, 1)
    assert [e["type"] for e in events] == ["running", "output", "output", "completed"]
    assert [e["seq"] for e in events] == [2, 3, 4, 5]
    assert [e["seq"] for e in await front.read_events(j.id, 3)] == [4, 5]


# -- 7, 12, 14: a Redis of our own to stop, stall and restart ----------------------------------------------


class PrivateRedis:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = ["redis-server", "--port", str(self.port), "--save", "", "--dir", str(tmp_path)]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()


async def _start(queue: Worker, url: str) -> Worker:
    client = aioredis.Redis.from_url(url)
    try:
        await eventually(lambda: _pings(client))
    finally:
        await client.aclose()
    await queue.start()
    return queue


async def test_a_stalled_redis_is_a_503_within_the_timeout_and_recovery_is_automatic(
    private_redis: PrivateRedis,
) -> None:
    queue = await _start(build_queue("redis", private_redis.url, executor=Gate(), timeout_ms=300), private_redis.url)
    try:
        private_redis.signal(signal.SIGSTOP)
        for _ in range(3):
            with pytest.raises(BackendUnavailable):
                await queue.submit(job("x"))
            with pytest.raises(BackendUnavailable):
                await queue.get("nope")
        private_redis.signal(signal.SIGCONT)
        await eventually(lambda: _submits(queue))
    finally:
        await queue.close()


async def _submits(queue: Worker) -> bool:
    try:
        await queue.submit(job("again"))
    except BackendUnavailable:
        return False
    return True


async def test_a_burst_past_the_pool_is_a_503_never_another_error(private_redis: PrivateRedis) -> None:
    url = private_redis.url
    queue = await _start(build_queue("redis", url, executor=Gate(), pool_size=2, timeout_ms=200), url)
    try:
        private_redis.signal(signal.SIGSTOP)  # every connection stays busy: the pool runs dry
        results = await asyncio.gather(*(queue.get(f"id{i}") for i in range(50)), return_exceptions=True)
        private_redis.signal(signal.SIGCONT)
        assert {type(r) for r in results} == {BackendUnavailable}
        await eventually(lambda: _submits(queue))
    finally:
        await queue.close()


async def test_a_redis_stall_longer_than_the_lease_does_not_lose_finished_work(private_redis: PrivateRedis) -> None:
    gate = Gate()
    url = private_redis.url
    queue = await _start(build_queue("redis", url, executor=gate, lease_timeout_ms=1000), url)
    try:
        j = await queue.submit(job("x"))
        await started(gate, 1)
        private_redis.signal(signal.SIGSTOP)
        gate.finish("x", ExecutionResult(exit_code=0, stdout="survived"))
        await asyncio.sleep(2.5)  # the stall: two and a half leases with nobody reaching Redis
        private_redis.signal(signal.SIGCONT)
        done = await queue.wait(j.id)
        assert done.result is not None and (done.status, done.result.stdout) == (JobStatus.COMPLETED, "survived")
    finally:
        await queue.close()


async def test_the_limiter_failure_mode_is_a_setting(private_redis: PrivateRedis) -> None:
    from server.access.identity import anonymous
    from server.access.ratelimit import RateLimiter
    from tests.conftest import make_settings

    await _start_nothing(private_redis.url)
    closed = RateLimiter(make_settings(redis_url=private_redis.url, redis_timeout_ms=300))
    opened = RateLimiter(
        make_settings(redis_url=private_redis.url, redis_timeout_ms=300, rate_limit_redis_failure="open")
    )
    try:
        assert (await closed.hit(anonymous("1.2.3.4"), "submit")).allowed
        private_redis.signal(signal.SIGSTOP)
        with pytest.raises(BackendUnavailable):
            await closed.hit(anonymous("1.2.3.4"), "submit")
        assert (await opened.hit(anonymous("1.2.3.4"), "submit")).allowed
        private_redis.signal(signal.SIGCONT)
        await eventually(lambda: _allowed(closed))
    finally:
        await closed.close()
        await opened.close()


async def _start_nothing(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await eventually(lambda: _pings(client))
    finally:
        await client.aclose()


async def _pings(client: Any) -> bool:
    try:
        return bool(await client.ping())
    except Exception:
        return False


async def _allowed(limiter: Any) -> bool:
    from server.access.identity import anonymous

    try:
        return bool((await limiter.hit(anonymous("1.2.3.4"), "submit")).allowed)
    except BackendUnavailable:
        return False


# -- retention shared fairly per owner ------------------------------------------------------------------------


async def _big(job: Job, io: JobIO) -> ExecutionResult:
    return ExecutionResult(exit_code=0, stdout=job.code[:1] * (100_000 if job.code.startswith("big") else 10))


@pytest.mark.parametrize("bound", [{"retention_bytes": 350_000}, {"retention_count": 3}])
async def test_one_owner_cannot_evict_everyone_elses_finished_jobs(
    make_queue: MakeQueue, bound: dict[str, int]
) -> None:
    # Five submissions of one (anonymous) owner evicted every other owner's finished jobs: the budget was one queue.
    # Now the owner holding the most (bytes, or jobs) gives up its own oldest first.
    queue = await make_queue(executor=_big, **bound)
    mine = await queue.submit(job("small", owner="owner-victim"))
    await queue.wait(mine.id)
    flood = []
    for i in range(5):
        j = await queue.submit(job(f"big{i}", owner="owner-flood"))
        await queue.wait(j.id)
        flood.append(j.id)
    assert await queue.get(mine.id) is not None  # the victim's one job stays
    kept = [await queue.get(i) is not None for i in flood]
    assert kept[-1] and not kept[0] and sum(kept) <= 3, kept
    listed = {j.id for j in await queue.recent()}
    assert mine.id in listed and flood[0] not in listed
