"""The embedded queue, driven by fake executors (the sandbox has its own suite)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from server.errors import BackendUnavailable, Conflict, NotFound, QueueFull, SettingsError, ShuttingDown
from server.events import Event
from server.jobs import ExecutionResult, Job, JobIO, JobStatus
from server.queue import Worker
from tests.conftest import free_port
from tests.queues import Clock, Gate, build_queue, eventually, job, memory_queue, settle, started, status_of


async def test_priority_order_then_fifo(make_queue: Callable[..., Any], gate: Gate) -> None:
    queue = await make_queue(max_concurrent=1)
    await queue.submit(job("first"))
    await started(gate, 1)
    for code, priority in [("low-a", 0), ("high-a", 5), ("low-b", 0), ("mid", 2), ("high-b", 5)]:
        await queue.submit(job(code, priority))
    order = ["first", "high-a", "high-b", "mid", "low-a", "low-b"]
    for n, code in enumerate(order, 1):
        await started(gate, n)
        assert gate.started[-1] == code
        gate.finish(code)
    await started(gate, len(order))
    assert gate.started == order


async def test_concurrency_bound_and_freed_slot_starts_next(make_queue: Callable[..., Any], gate: Gate) -> None:
    queue = await make_queue(max_concurrent=5)
    jobs = [await queue.submit(job(f"j{i}")) for i in range(10)]
    await started(gate, 5)
    await settle()
    assert len(gate.started) == 5
    assert [await status_of(queue, j.id) for j in jobs] == [JobStatus.RUNNING] * 5 + [JobStatus.QUEUED] * 5
    stats = await queue.stats()
    assert stats["runningCount"] == 5 and stats["queueLength"] == 5
    assert [await queue.position(j) for j in jobs[5:]] == [1, 2, 3, 4, 5]
    gate.finish("j0")
    done = await queue.wait(jobs[0].id)
    assert done.status is JobStatus.COMPLETED
    await started(gate, 6)
    assert await status_of(queue, jobs[5].id) is JobStatus.RUNNING


async def test_memory_queue_starts_the_next_job_in_the_same_turn() -> None:
    gate = Gate()
    queue = memory_queue(executor=gate, max_concurrent=1)
    await queue.start()
    first, second = await queue.submit(job("a")), await queue.submit(job("b"))
    await settle()
    gate.finish("a")
    await queue.wait(first.id)
    # No polling: finishing the first job dispatched the second before anyone else ran.
    assert second.status is JobStatus.RUNNING
    await queue.close()


async def test_queue_full_is_refused_and_counted(make_queue: Callable[..., Any]) -> None:
    queue = await make_queue(max_concurrent=1, max_queue_size=3)
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


async def test_timeout_kills_the_executor(make_queue: Callable[..., Any], gate: Gate) -> None:
    queue = await make_queue(max_concurrent=1)
    slow = await queue.submit(job("forever", timeout_ms=50))
    done = await queue.wait(slow.id)
    assert done.status is JobStatus.TIMEOUT
    assert done.result is not None and done.result.reason == "timeout"
    assert gate.cancelled == ["forever"]
    assert (await queue.stats())["totalTimeout"] == 1


async def test_executor_reported_timeout_maps_to_timeout(make_queue: Callable[..., Any], gate: Gate) -> None:
    queue = await make_queue()
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
    make_queue: Callable[..., Any], gate: Gate, result: ExecutionResult, status: JobStatus, reason: str | None
) -> None:
    queue = await make_queue()
    j = await queue.submit(job("x"))
    gate.finish("x", result)
    done = await queue.wait(j.id)
    assert done.status is status
    assert done.result is not None and done.result.reason == reason


async def test_executor_crash_is_internal_error_and_queue_goes_on(make_queue: Callable[..., Any]) -> None:
    calls = 0

    async def flaky(job: Job, io: JobIO) -> ExecutionResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return ExecutionResult(exit_code=0)

    queue = await make_queue(executor=flaky, max_concurrent=1)
    a = await queue.submit(job("a"))
    b = await queue.submit(job("b"))
    failed = await queue.wait(a.id)
    assert failed.status is JobStatus.FAILED
    assert failed.result is not None and failed.result.reason == "internal_error"
    assert (await queue.wait(b.id)).status is JobStatus.COMPLETED


async def test_cancel_rules(make_queue: Callable[..., Any], gate: Gate) -> None:
    queue = await make_queue(max_concurrent=1)
    running = await queue.submit(job("run"))
    await started(gate, 1)
    queued = await queue.submit(job("wait"))
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


async def test_stop_kills_a_running_job(make_queue: Callable[..., Any], gate: Gate) -> None:
    queue = await make_queue(max_concurrent=1)
    running = await queue.submit(job("loop"))
    await started(gate, 1)
    nxt = await queue.submit(job("next"))
    stopped = await queue.stop(running.id)
    assert stopped.status is JobStatus.CANCELLED
    assert stopped.result is not None and stopped.result.reason == "stopped"
    assert gate.cancelled == ["loop"]
    await started(gate, 2)
    assert await status_of(queue, nxt.id) is JobStatus.RUNNING


async def test_events_in_order_and_a_raising_listener_breaks_nothing(make_queue: Callable[..., Any]) -> None:
    seen: list[Event] = []

    def bad(event: Event) -> None:
        raise ValueError("listener bug")

    async def talker(job: Job, io: JobIO) -> ExecutionResult:
        io.on_output("stdout", "a")
        io.on_output("stderr", "b")
        return ExecutionResult(exit_code=0)

    queue = await make_queue(executor=talker)
    queue.events.subscribe(bad)
    queue.events.subscribe(seen.append)
    j = await queue.submit(job("x"))
    await queue.wait(j.id)
    await eventually(lambda: any(e["type"] == "completed" for e in seen))
    assert [e["type"] for e in seen] == ["queued", "running", "output", "output", "completed"]
    assert [e["seq"] for e in seen] == [1, 2, 3, 4, 5]
    assert [(e.get("stream"), e.get("data")) for e in seen[2:4]] == [("stdout", "a"), ("stderr", "b")]
    assert all(e["jobId"] == j.id for e in seen)


async def test_interactive_stdin_channel(make_queue: Callable[..., Any]) -> None:
    async def echo(job: Job, io: JobIO) -> ExecutionResult:
        assert io.stdin is not None
        parts = [job.stdin.encode()]  # as the runner does: the submission's stdin, then the live channel
        while (chunk := await io.stdin.get()) is not None:
            parts.append(chunk)
        return ExecutionResult(exit_code=0, stdout=b"".join(parts).decode())

    queue = await make_queue(executor=echo)
    j = await queue.submit(job("x", interactive=True, stdin="pre "))
    await eventually(lambda: status_of(queue, j.id))
    await eventually(lambda: _is_running(queue, j.id))
    await queue.write_stdin(j.id, b"hello ")
    await queue.write_stdin(j.id, b"world")
    await queue.write_stdin(j.id, None)
    done = await queue.wait(j.id)
    assert done.result is not None and done.result.stdout == "pre hello world"
    with pytest.raises(Conflict):
        await queue.write_stdin(j.id, b"late")


async def _is_running(queue: Any, job_id: str) -> bool:
    return await status_of(queue, job_id) is JobStatus.RUNNING


async def test_statistics(make_queue: Callable[..., Any], gate: Gate) -> None:
    queue = await make_queue(max_concurrent=2, max_queue_size=10)
    jobs = [await queue.submit(job(f"j{i}")) for i in range(4)]
    for n, j in enumerate(jobs, 1):
        await started(gate, n)
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


async def test_retention_by_count(make_queue: Callable[..., Any], gate: Gate) -> None:
    queue = await make_queue(retention_count=3)
    ids = []
    for i in range(5):
        j = await queue.submit(job(f"j{i}"))
        gate.finish(f"j{i}")
        await queue.wait(j.id)
        ids.append(j.id)
    assert [await queue.get(i) is not None for i in ids] == [False, False, True, True, True]


async def test_memory_retention_by_age(gate: Gate) -> None:
    clock = Clock()
    queue = memory_queue(executor=gate, retention_seconds=60, clock=clock)
    await queue.start()
    first = await queue.submit(job("a"))
    gate.finish("a")
    await queue.wait(first.id)
    clock.now += 61
    second = await queue.submit(job("b"))
    gate.finish("b")
    await queue.wait(second.id)
    assert await queue.get(first.id) is None and await queue.get(second.id) is not None
    await queue.close()


async def test_close_gives_running_a_grace(make_queue: Callable[..., Any], gate: Gate, backend: str) -> None:
    queue = await make_queue(max_concurrent=2)
    quick = await queue.submit(job("quick"))
    stuck = await queue.submit(job("stuck"))
    await started(gate, 2)
    waiting = await queue.submit(job("waiting"))
    closing = asyncio.create_task(queue.close(grace_s=0.3))
    await settle()
    with pytest.raises(ShuttingDown):
        await queue.submit(job("late"))
    gate.finish("quick")
    await closing
    if backend == "redis":  # the queue's own connection is closed: look through a new one
        queue = await make_queue(max_concurrent=0 + 1, executor=Gate())
    assert await status_of(queue, quick.id) is JobStatus.COMPLETED
    stuck_job = await queue.get(stuck.id)
    assert stuck_job.status is JobStatus.CANCELLED and stuck_job.result.reason == "shutdown"
    waiting_job = await queue.get(waiting.id)
    if backend == "memory":
        assert waiting_job.status is JobStatus.CANCELLED and waiting_job.result.reason == "shutdown"
    else:  # queued jobs survive in Redis for the other (or restarted) instances
        assert waiting_job.status in (JobStatus.QUEUED, JobStatus.RUNNING)


async def test_many_cancellations_keep_the_heap_small(gate: Gate) -> None:
    queue = memory_queue(executor=gate, max_concurrent=1, max_queue_size=10_000)
    await queue.start()
    jobs = [await queue.submit(job("j0"))]
    await started(gate, 1)
    jobs += [await queue.submit(job(f"j{i}")) for i in range(1, 1000)]
    for j in jobs[1:-1]:
        await queue.cancel(j.id)
    assert len(queue.store._heap) < 200  # type: ignore[attr-defined]
    assert await queue.position(jobs[-1]) == 1
    await queue.close()


async def test_redis_outage_is_a_clear_error(tmp_path: Any) -> None:
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        queue = build_queue("redis", url, executor=Gate())
        await eventually(lambda: _started(queue))
        server.kill()
        server.wait()
        with pytest.raises(BackendUnavailable) as info:
            await queue.submit(job("x"))
        assert info.value.status == 503 and info.value.body()["retryAfter"] == 5
        await queue.close()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    with pytest.raises(SettingsError, match="REDIS_URL"):
        await build_queue("redis", f"redis://127.0.0.1:{port}/0", executor=Gate()).start()


async def _started(queue: Worker) -> bool:
    try:
        await queue.start()
    except SettingsError:
        return False
    return True
