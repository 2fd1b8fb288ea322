"""The embedded queue, driven by fake executors (the sandbox has its own suite)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from server.errors import Conflict, NotFound, QueueFull, ShuttingDown
from server.events import Event
from server.jobs import ExecutionResult, Job, JobIO, JobStatus
from server.queue import MemoryQueue


class Gate:
    """A fake executor whose jobs run until released; records the order they started in."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.cancelled: list[str] = []
        self.results: dict[str, ExecutionResult] = {}

    async def __call__(self, job: Job, io: JobIO) -> ExecutionResult:
        self.started.append(job.code)
        event = self.release.setdefault(job.code, asyncio.Event())
        try:
            await event.wait()
        except asyncio.CancelledError:
            self.cancelled.append(job.code)
            raise
        return self.results.get(job.code, ExecutionResult(exit_code=0, stdout=job.code))

    def finish(self, code: str, result: ExecutionResult | None = None) -> None:
        if result is not None:
            self.results[code] = result
        self.release.setdefault(code, asyncio.Event()).set()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
async def make_queue(gate: Gate) -> AsyncIterator[Callable[..., MemoryQueue]]:
    queues: list[MemoryQueue] = []

    def make(**kwargs: Any) -> MemoryQueue:
        kwargs.setdefault("executor", gate)
        queue = MemoryQueue(**kwargs)
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        await queue.close()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def job(code: str, priority: int = 0, **kwargs: Any) -> Job:
    return Job(language="python", code=code, priority=priority, **kwargs)


async def test_priority_order_then_fifo(make_queue: Callable[..., MemoryQueue], gate: Gate) -> None:
    queue = make_queue(max_concurrent=1)
    await queue.submit(job("first"))
    for code, priority in [("low-a", 0), ("high-a", 5), ("low-b", 0), ("mid", 2), ("high-b", 5)]:
        await queue.submit(job(code, priority))
    await settle()
    for code in ["first", "high-a", "high-b", "mid", "low-a", "low-b"]:
        assert gate.started[-1] == code
        gate.finish(code)
        await settle()
    assert gate.started == ["first", "high-a", "high-b", "mid", "low-a", "low-b"]


async def test_concurrency_bound_and_freed_slot_starts_next_at_once(
    make_queue: Callable[..., MemoryQueue], gate: Gate
) -> None:
    queue = make_queue(max_concurrent=5)
    jobs = [await queue.submit(job(f"j{i}")) for i in range(10)]
    await settle()
    assert len(gate.started) == 5
    assert [j.status for j in jobs] == [JobStatus.RUNNING] * 5 + [JobStatus.QUEUED] * 5
    stats = await queue.stats()
    assert stats["runningCount"] == 5 and stats["queueLength"] == 5
    assert [await queue.position(j) for j in jobs[5:]] == [1, 2, 3, 4, 5]
    gate.finish("j0")
    done = await queue.wait(jobs[0].id)
    assert done.status is JobStatus.COMPLETED
    # No polling: the next job was started in the same turn that finished the previous one.
    assert jobs[5].status is JobStatus.RUNNING
    await settle()
    assert len(gate.started) == 6


async def test_queue_full_is_refused_and_counted(make_queue: Callable[..., MemoryQueue]) -> None:
    queue = make_queue(max_concurrent=1, max_queue_size=3)
    for i in range(4):
        await queue.submit(job(f"j{i}"))
    with pytest.raises(QueueFull) as info:
        await queue.submit(job("overflow"))
    body = info.value.body()
    assert body["error"] == "Queue full"
    assert body["retryAfter"] >= 1
    assert info.value.headers["Retry-After"] == str(body["retryAfter"])
    stats = await queue.stats()
    assert stats["totalRejected"] == 1
    assert stats["totalQueued"] == 4


async def test_timeout_kills_the_executor(make_queue: Callable[..., MemoryQueue], gate: Gate) -> None:
    queue = make_queue(max_concurrent=1)
    slow = await queue.submit(job("forever", timeout_ms=50))
    done = await queue.wait(slow.id)
    assert done.status is JobStatus.TIMEOUT
    assert done.result is not None and done.result.reason == "timeout"
    assert gate.cancelled == ["forever"]
    assert (await queue.stats())["totalTimeout"] == 1


async def test_executor_reported_timeout_maps_to_timeout(make_queue: Callable[..., MemoryQueue], gate: Gate) -> None:
    queue = make_queue()
    j = await queue.submit(job("t"))
    gate.finish("t", ExecutionResult(reason="timeout", signal="SIGKILL"))
    assert (await queue.wait(j.id)).status is JobStatus.TIMEOUT


@pytest.mark.parametrize(
    ("result", "status", "reason"),
    [
        (ExecutionResult(exit_code=0), JobStatus.COMPLETED, None),
        (ExecutionResult(exit_code=3), JobStatus.FAILED, "runtime_error"),
        (ExecutionResult(signal="SIGSEGV"), JobStatus.FAILED, "signal"),
        (ExecutionResult(exit_code=137, reason="memory_limit"), JobStatus.FAILED, "memory_limit"),
        (ExecutionResult(exit_code=1, reason="compile_error"), JobStatus.FAILED, "compile_error"),
    ],
)
async def test_outcomes_map_to_statuses(
    make_queue: Callable[..., MemoryQueue], gate: Gate, result: ExecutionResult, status: JobStatus, reason: str | None
) -> None:
    queue = make_queue()
    j = await queue.submit(job("x"))
    gate.finish("x", result)
    done = await queue.wait(j.id)
    assert done.status is status
    assert done.result is not None and done.result.reason == reason


async def test_executor_crash_is_internal_error_and_queue_goes_on(make_queue: Callable[..., MemoryQueue]) -> None:
    calls = 0

    async def flaky(job: Job, io: JobIO) -> ExecutionResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return ExecutionResult(exit_code=0)

    queue = make_queue(executor=flaky, max_concurrent=1)
    a = await queue.submit(job("a"))
    b = await queue.submit(job("b"))
    assert (await queue.wait(a.id)).status is JobStatus.FAILED
    assert a.result is not None and a.result.reason == "internal_error"
    assert (await queue.wait(b.id)).status is JobStatus.COMPLETED


async def test_cancel_rules(make_queue: Callable[..., MemoryQueue], gate: Gate) -> None:
    queue = make_queue(max_concurrent=1)
    running = await queue.submit(job("run"))
    queued = await queue.submit(job("wait"))
    await settle()
    cancelled = await queue.cancel(queued.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.finished_at is not None and cancelled.wait_time_ms is not None
    with pytest.raises(Conflict):
        await queue.cancel(running.id)
    with pytest.raises(Conflict):
        await queue.cancel(queued.id)
    with pytest.raises(NotFound):
        await queue.cancel("nope")
    gate.finish("run")
    await queue.wait(running.id)
    with pytest.raises(Conflict):
        await queue.cancel(running.id)
    stats = await queue.stats()
    assert stats["totalCancelled"] == 1 and stats["totalProcessed"] == 1 and stats["queueLength"] == 0
    # The cancelled job never ran.
    assert gate.started == ["run"]


async def test_stop_kills_a_running_job(make_queue: Callable[..., MemoryQueue], gate: Gate) -> None:
    queue = make_queue(max_concurrent=1)
    running = await queue.submit(job("loop"))
    nxt = await queue.submit(job("next"))
    await settle()
    stopped = await queue.stop(running.id)
    assert stopped.status is JobStatus.CANCELLED
    assert stopped.result is not None and stopped.result.reason == "stopped"
    assert gate.cancelled == ["loop"]
    await settle()
    assert nxt.status is JobStatus.RUNNING


async def test_events_in_order_and_a_raising_listener_breaks_nothing(
    make_queue: Callable[..., MemoryQueue], gate: Gate
) -> None:
    queue = make_queue()
    seen: list[Event] = []

    def bad(event: Event) -> None:
        raise ValueError("listener bug")

    queue.events.subscribe(bad)
    queue.events.subscribe(seen.append)

    async def talker(job: Job, io: JobIO) -> ExecutionResult:
        io.on_output("stdout", "a")
        io.on_output("stderr", "b")
        return ExecutionResult(exit_code=0)

    queue2 = make_queue(executor=talker, events=queue.events)
    j = await queue2.submit(job("x"))
    await queue2.wait(j.id)
    assert [e["type"] for e in seen] == ["queued", "running", "output", "output", "completed"]
    assert [e["seq"] for e in seen] == [1, 2, 3, 4, 5]
    assert [(e.get("stream"), e.get("data")) for e in seen[2:4]] == [("stdout", "a"), ("stderr", "b")]
    assert all(e["jobId"] == j.id for e in seen)


async def test_interactive_stdin_channel(make_queue: Callable[..., MemoryQueue]) -> None:
    async def echo(job: Job, io: JobIO) -> ExecutionResult:
        assert io.stdin is not None
        parts = []
        while (chunk := await io.stdin.get()) is not None:
            parts.append(chunk)
        return ExecutionResult(exit_code=0, stdout=b"".join(parts).decode())

    queue = make_queue(executor=echo)
    j = await queue.submit(job("x", interactive=True))
    await settle()
    await queue.write_stdin(j.id, b"hello ")
    await queue.write_stdin(j.id, b"world")
    await queue.write_stdin(j.id, None)
    done = await queue.wait(j.id)
    assert done.result is not None and done.result.stdout == "hello world"
    with pytest.raises(Conflict):
        await queue.write_stdin(j.id, b"late")


async def test_statistics(make_queue: Callable[..., MemoryQueue], gate: Gate) -> None:
    queue = make_queue(max_concurrent=2, max_queue_size=10)
    jobs = [await queue.submit(job(f"j{i}")) for i in range(4)]
    await settle()
    for j in jobs:
        gate.finish(j.code, ExecutionResult(exit_code=0 if j.code != "j3" else 1))
    for j in jobs:
        await queue.wait(j.id)
    stats = await queue.stats()
    assert stats["totalQueued"] == 4
    assert stats["totalProcessed"] == 4
    assert stats["totalFailed"] == 1
    assert stats["maxConcurrent"] == 2 and stats["maxQueueSize"] == 10
    assert stats["jobsPerSecond"] == round(4 / 60, 3)
    assert set(stats["waitTime"]) == {"p50", "p95", "p99"}
    assert stats["averageExecutionTime"] >= 0


async def test_retention_by_count_and_age(make_queue: Callable[..., MemoryQueue], gate: Gate) -> None:
    clock = Clock()
    queue = make_queue(retention_count=3, retention_seconds=60, clock=clock)
    ids = []
    for i in range(5):
        j = await queue.submit(job(f"j{i}"))
        gate.finish(f"j{i}")
        await queue.wait(j.id)
        ids.append(j.id)
    assert [await queue.get(i) is not None for i in ids] == [False, False, True, True, True]
    clock.now += 61
    j = await queue.submit(job("late"))
    gate.finish("late")
    await queue.wait(j.id)
    assert [await queue.get(i) is not None for i in ids] == [False] * 5
    assert await queue.get(j.id) is not None


async def test_close_cancels_queued_and_gives_running_a_grace(
    make_queue: Callable[..., MemoryQueue], gate: Gate
) -> None:
    queue = make_queue(max_concurrent=2)
    quick = await queue.submit(job("quick"))
    stuck = await queue.submit(job("stuck"))
    waiting = await queue.submit(job("waiting"))
    await settle()
    closing = asyncio.create_task(queue.close(grace_s=0.2))
    await settle()
    with pytest.raises(ShuttingDown):
        await queue.submit(job("late"))
    gate.finish("quick")
    await closing
    assert quick.status is JobStatus.COMPLETED
    assert stuck.status is JobStatus.CANCELLED and stuck.result is not None and stuck.result.reason == "shutdown"
    assert waiting.status is JobStatus.CANCELLED and waiting.result is not None
    assert waiting.result.reason == "shutdown"


async def test_many_cancellations_keep_the_heap_small(make_queue: Callable[..., MemoryQueue]) -> None:
    queue = make_queue(max_concurrent=1, max_queue_size=10_000)
    jobs = [await queue.submit(job(f"j{i}")) for i in range(1000)]
    for j in jobs[1:-1]:
        await queue.cancel(j.id)
    assert len(queue._heap) < 200
    assert await queue.position(jobs[-1]) == 1
