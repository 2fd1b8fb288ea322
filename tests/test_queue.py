"""The embedded queue, driven by fake executors (the sandbox has its own suite)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
import redis

from server.errors import BackendUnavailable, Conflict, NotFound, QueueFull, SettingsError, ShuttingDown
from server.queue import MemoryStore, Worker
from server.queue import base as queue_base
from server.queue.allocator import Trimmer
from server.queue.base import OutputCoalescer
from server.queue.events import Event
from server.queue.jobs import ExecutionResult, Job, JobIO, JobStatus, Limits, SourceFile, TestCase
from server.queue.records import JOB_FIELDS
from server.queue.stats import seconds_until_a_place
from server.queue.worker.running import Running
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


async def test_every_submission_field_comes_back_as_submitted(make_queue: Callable[..., Any]) -> None:
    """Set or left at its default: the Redis store leaves a job's default fields out of its hash."""
    queue = await make_queue()
    full = Job(
        language="python",
        code="print(1)",
        stdin="in",
        args=["a"],
        priority=3,
        owner="k1",
        timeout_ms=1234,
        interactive=True,
        files=[SourceFile("m.py", "x")],
        limits=Limits(cpu_time_ms=5),
        compiler_options=["-O"],
        expected_output="1",
        tests=[TestCase("t", "u")],
        callback_url="http://127.0.0.1:9/",
        output_encoding="base64",
        dialect={"language_id": 71},
    )
    for sent in (full, Job(language="python", code="")):
        await queue.submit(sent)
        back = await queue.get(sent.id)
        assert back is not None
        for name in set(JOB_FIELDS) - {"created_at", "started_at", "finished_at"}:  # the store's own clock's
            assert getattr(back, name) == getattr(sent, name), name


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


async def test_memory_retention_is_counted_in_the_bytes_it_holds() -> None:
    """Past its byte bound, the embedded store keeps no more than the bound in real bytes (tracemalloc), whatever
    the output's characters cost: here 4 bytes each, in the result and again in the event log."""
    bound = 1024 * 1024
    store = MemoryStore(retention_bytes=bound, retention_count=100_000, trimmer=Trimmer(trim=None))
    await store.start()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):  # about 8 MB of output in all: eight times the bound
            await _finish_one(store, f"{i:06d}" + "\N{GRINNING FACE}" * 5000)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    retained = len(store._retention)
    await store.close()
    assert 0 < retained < 200
    assert held <= bound * 1.05, f"{retained} jobs hold {held} bytes against a bound of {bound}"
    assert held >= bound * 0.8  # and the bound is used, not overcounted


async def _finish_one(store: MemoryStore, text: str) -> None:
    one = job("x")
    await store.enqueue(one, max_queue_size=10, max_concurrent=1)
    assert [j for j, _ in await store.claim(1, lease_ms=1000, max_concurrent=1)] == [one]
    await store.append_event(one, {"type": "output", "jobId": one.id, "stream": "stdout", "data": text})
    assert await store.finish(one, JobStatus.COMPLETED, ExecutionResult(exit_code=0, stdout=text))


async def test_retry_after_on_a_full_queue_is_the_wait_for_one_place(gate: Gate) -> None:
    """A place frees when the next job leaves the waiting room: about one gap between recent finishes (2 s here),
    not the whole queue's drain over a minute's average for a burst 8 s old (it said 60 s, the cap)."""
    clock = Clock()
    queue = memory_queue(executor=gate, max_concurrent=1, max_queue_size=3, clock=clock)
    await queue.start()
    for i in range(4):
        one = await queue.submit(job(f"w{i}"))
        clock.now += 2
        gate.finish(f"w{i}")
        await queue.wait(one.id)
    for i in range(4):  # one running, three waiting: full
        await queue.submit(job(f"f{i}"))
    with pytest.raises(QueueFull) as info:
        await queue.submit(job("overflow"))
    assert info.value.body()["retryAfter"] == 2 and info.value.headers["Retry-After"] == "2"
    await queue.close()


def test_seconds_until_a_place() -> None:
    now = 10_000.0
    assert seconds_until_a_place([], now) == 5  # nothing to go by
    assert seconds_until_a_place([now - 1], now) == 5
    assert seconds_until_a_place([now - 6, now - 4, now - 2], now) == 2
    assert seconds_until_a_place([now - 0.3, now - 0.2, now - 0.1], now) == 1  # at least a second
    assert seconds_until_a_place([now - 3000, now - 1500, now - 1], now) == 5  # outside the minute: unknown
    assert seconds_until_a_place([now - 59, now - 1], now) == 58
    now_ms = now * 1000
    assert seconds_until_a_place([now_ms - 30_000, now_ms - 20_000], now_ms, unit_s=0.001) == 10  # Redis: ms


@pytest.mark.redis
async def test_retry_after_on_a_full_redis_queue_is_the_wait_for_one_place(redis_url: str) -> None:
    """On Redis too, from the cluster's latest finishes (it said 5 s, whatever the pace)."""
    queue = build_queue("redis", redis_url, executor=Gate(), max_concurrent=1, max_queue_size=2)
    await queue.start()
    try:
        with redis.Redis.from_url(redis_url) as direct:
            secs, micros = direct.time()
            now_ms = secs * 1000 + micros // 1000
            direct.lpush("conveyor:finish_times", *(now_ms - ago for ago in (9000, 6000, 3000)))  # one each 3 s
        for i in range(3):
            await queue.submit(job(f"f{i}"))
        with pytest.raises(QueueFull) as info:
            await queue.submit(job("overflow"))
        assert info.value.body()["retryAfter"] == 3 and info.value.headers["Retry-After"] == "3"
    finally:
        await queue.close()


async def test_output_merges_writes_but_a_line_after_a_quiet_spell_goes_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """print() writes the text, then the newline: one event. A whole line after a quiet spell goes at once; what
    follows within the merge window (an hour here) waits for it, or for a flush (the run's end); a prompt without
    its newline waits too."""
    monkeypatch.setattr(queue_base, "COALESCE_S", 3600.0)
    emitted: list[tuple[str, str]] = []
    merge = OutputCoalescer(lambda stream, text: emitted.append((stream, text)))
    merge("stdout", "1")
    assert emitted == []
    merge("stdout", "\n")
    assert emitted == [("stdout", "1\n")]
    merge("stdout", "2\n")
    merge("stdout", "Name? ")
    merge("stderr", "warn\n")  # stdout and stderr stay apart and in order
    assert emitted == [("stdout", "1\n"), ("stdout", "2\nName? ")]
    merge.flush()
    assert emitted[-1] == ("stderr", "warn\n") and len(emitted) == 3
    merge("stderr", "again\n")  # a line, but an event went within the window: it waits (one event per window)
    assert len(emitted) == 3
    merge("stderr", "x" * queue_base.MAX_CHUNK)  # past a chunk: at once, split
    assert [len(text) for _, text in emitted[3:]] == [queue_base.MAX_CHUNK, len("again\n")]


async def test_a_finished_run_is_freed_without_the_garbage_collector() -> None:
    """A run that printed (coalescer, output queue, publisher) holds no reference cycle: its result goes as soon as
    the worker lets go of it, not at the next full collection (a cycle kept ~50 MiB of results in bench_memory)."""

    async def chatty(j: Job, io: JobIO) -> ExecutionResult:
        for _ in range(3):
            io.on_output("stdout", "x" * 1000)
            await asyncio.sleep(0)
        return ExecutionResult(exit_code=0, stdout="x" * 3000)

    queue = Worker(MemoryStore(), executor=chatty, max_concurrent=2, max_queue_size=10)
    await queue.start()
    gc.collect()
    gc.disable()
    try:
        submitted = [await queue.submit(job("print")) for _ in range(5)]
        for j in submitted:
            assert (await queue.wait(j.id)).status is JobStatus.COMPLETED
        await asyncio.sleep(0)
        # This test's runs only: one of an earlier test in the same process (still referenced there) is not ours.
        ids = {j.id for j in submitted}
        assert [o for o in gc.get_objects() if isinstance(o, Running) and o.job.id in ids] == []
    finally:
        gc.enable()
        await queue.close()
