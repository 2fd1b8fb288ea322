"""A warm run answers before its sandbox is torn down (Run.teardown_after, sandbox/teardowns.py) on a sandbox whose runs
and close are on one event loop, as the server's are: its output whole, its teardown still done, and bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.app import create_app
from server.judging.executor import Judge
from server.keys import RUNNER
from server.queue.jobs import Job
from server.sandbox.execution import Run
from tests.conftest import make_settings, scaled
from tests.test_pool import until, warm_run


@pytest.fixture
async def one_loop() -> AsyncIterator[Judge]:
    sandbox = await Judge.create(make_settings(warm_pool=2), languages=("python",), one_loop=True)
    yield sandbox
    await sandbox.close()


class Teardowns:
    """Which runs answered with their teardown still to come (`after`, in order), and, with `hold`, those teardowns
    held until `release` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, hold: bool) -> None:
        self.release = asyncio.Event()
        self.after: list[bool] = []
        self.held = 0
        cleanup = Run.cleanup

        async def watched(run: Run) -> None:
            self.after.append(run.teardown_after)
            if hold and run.teardown_after:
                self.held += 1
                await self.release.wait()
            await cleanup(run)

        monkeypatch.setattr(Run, "cleanup", watched)


async def test_a_warm_run_answers_before_its_sandbox_is_torn_down(
    one_loop: Judge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The teardown (pid 1 ended, its monitor reaped, the pipes at their end) goes on after the result: the pool
    counts the sandbox in use until it is done."""
    teardowns = Teardowns(monkeypatch, hold=True)
    job = Job(language="python", code="print('hi')")
    result = await asyncio.wait_for(warm_run(one_loop, job), scaled(30))
    assert (result.stdout, result.exit_code, teardowns.held) == ("hi\n", 0, 1), result
    assert one_loop.sandbox.pool_status()["inUse"] == 1
    teardowns.release.set()
    await one_loop.sandbox.released()
    assert one_loop.sandbox.pool_status()["inUse"] == 0


async def test_past_the_bound_a_run_waits_for_its_own_teardown(
    one_loop: Judge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most `after` teardowns go on after their results: past that a run answers once its own is done, so a
    kernel slow to end sandboxes slows the jobs rather than piling them up."""
    teardowns = Teardowns(monkeypatch, hold=True)
    one_loop.sandbox.teardowns.after = 1
    first = await asyncio.wait_for(warm_run(one_loop, Job(language="python", code="print(1)")), scaled(30))
    assert first.stdout == "1\n"
    second = asyncio.ensure_future(warm_run(one_loop, Job(language="python", code="print(2)")))
    await until(lambda: teardowns.held == 2)
    await asyncio.sleep(0.3)
    assert not second.done()
    teardowns.release.set()
    assert (await asyncio.wait_for(second, scaled(30))).stdout == "2\n"


async def test_a_run_answered_before_its_teardown_has_all_its_output(
    one_loop: Judge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read as far as it goes at the program's end: what it wrote past a pipe's size and after its input."""
    teardowns = Teardowns(monkeypatch, hold=False)
    code = (
        "import sys\ndata = sys.stdin.read()\nsys.stdout.write('x' * 300_000)\nprint(len(data))\n"
        "print('e', file=sys.stderr)\n"
    )
    result = await warm_run(one_loop, Job(language="python", code=code, stdin="y" * 100_000 + "tail\n"))
    await one_loop.sandbox.released()  # its teardown has begun by then
    assert teardowns.after[-1] is True
    assert (result.stdout, result.stderr, result.exit_code) == ("x" * 300_000 + "100005\n", "e\n", 0)


async def test_a_run_leaving_a_process_behind_is_torn_down_before_it_answers(
    one_loop: Judge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background process of the program's (pid 1's child once the program is gone) could still write to its
    output: that run's result waits for the tree to be gone, as every run's did."""
    teardowns = Teardowns(monkeypatch, hold=False)
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(30)\nprint('parent')\n"
    result = await warm_run(one_loop, Job(language="python", code=code))
    await one_loop.sandbox.released()
    assert teardowns.after[-1] is False
    assert (result.stdout, result.exit_code) == ("parent\n", 0)


async def test_a_teardown_failing_after_the_result_is_logged_with_its_run(
    one_loop: Judge, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody awaits a teardown that follows its result: its failure is logged there, with the run's name."""
    cleanup = Run.cleanup

    async def failing(run: Run) -> None:
        await cleanup(run)
        if run.teardown_after:
            raise RuntimeError("the teardown broke")

    monkeypatch.setattr(Run, "cleanup", failing)
    result = await warm_run(one_loop, Job(language="python", code="print(1)"))
    await one_loop.sandbox.released()
    assert result.stdout == "1\n"
    assert "tearing its sandbox down after its result failed" in caplog.text and "the teardown broke" in caplog.text


async def test_the_editors_run_with_stdin_on_the_servers_own_sandbox(aiohttp_client: Any) -> None:
    """The user's path with the early answer on: an app whose sandbox is its own (one loop), the editor's Run over the
    WebSocket with stdin and then live input, twice (the second in a warm sandbox): each sees its input once, whole."""
    app = create_app(make_settings(warm_pool=2, languages=("python",)))
    client = await aiohttp_client(app)
    code = "print(input())\nprint(input())\n"
    for attempt in range(2):
        async with client.ws_connect("/ws") as ws:
            await ws.receive_json()  # hello
            await ws.send_json(
                {"type": "run", "language": "python", "code": code, "stdin": "first\n", "interactive": True}
            )
            job_id, out, end = None, "", None
            while end is None:
                event = await ws.receive_json(timeout=scaled(30))
                if event["type"] == "queued":
                    job_id = event["jobId"]
                    await ws.send_json({"type": "stdin", "jobId": job_id, "data": f"live {attempt}\n"})
                elif event["type"] == "output":
                    out += event["data"]
                elif event["type"] in ("completed", "failed", "timeout", "cancelled", "error"):
                    end = event
            assert (end["type"], out) == ("completed", f"first\nlive {attempt}\n"), (end, out)
        await until(lambda: app[RUNNER].pool_status()["languages"].get("python", {}).get("ready", 0) > 0)
    assert app[RUNNER].pool_status()["hits"] >= 1
