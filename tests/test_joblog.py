"""The job log: one info line per finished job, from the queue's terminal events."""

from __future__ import annotations

import logging

import pytest

from server.queue.events import EventEmitter
from server.queue.joblog import format_finished, log_finished_jobs
from tests.conftest import AppClientFactory


def test_format_names_the_job_and_only_the_figures_it_has() -> None:
    line = format_finished(
        {
            "type": "failed",
            "jobId": "ab12",
            "language": "c",
            "reason": "compile_error",
            "exitCode": None,
            "waitTimeMs": 3.4,
            "compileTimeMs": 120.6,
            "executionTimeMs": None,
        }
    )
    assert line == "job ab12 failed language=c reason=compile_error wait=3ms compile=121ms"
    full = format_finished(
        {
            "type": "completed",
            "jobId": "cd34",
            "language": "python",
            "exitCode": 0,
            "executionTimeMs": 25,
            "cpuTimeMs": 19.5,
            "memoryPeakBytes": 9_437_184,
        }
    )
    assert full == "job cd34 completed language=python reason=- exit=0 exec=25ms cpu=20ms memory=9437184B"


def test_only_terminal_events_are_logged_and_unsubscribe_stops_it(caplog: pytest.LogCaptureFixture) -> None:
    events = EventEmitter()
    unsubscribe = log_finished_jobs(events)
    with caplog.at_level(logging.INFO, logger="server.queue.joblog"):
        events.emit({"type": "queued", "jobId": "a1"})
        events.emit({"type": "running", "jobId": "a1"})
        events.emit({"type": "output", "jobId": "a1", "data": "x"})
        events.emit({"type": "timeout", "jobId": "a1", "language": "bash", "reason": "timeout"})
        unsubscribe()
        events.emit({"type": "completed", "jobId": "b2"})
    assert [r.getMessage() for r in caplog.records] == ["job a1 timeout language=bash reason=timeout"]
    assert len(events) == 0


async def test_a_run_through_the_api_logs_its_submission_and_its_finish(
    app_client: AppClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await app_client()
    with caplog.at_level(logging.INFO, logger="server.queue.joblog"):
        resp = await client.post("/run", json={"language": "bash", "code": "exit 3"})
        job = await resp.json()
    lines = [r.getMessage() for r in caplog.records if r.name == "server.queue.joblog"]
    assert len(lines) == 2
    assert lines[0] == f"job {job['id']} submitted language=bash user=anonymous door=rest"
    assert lines[1].startswith(f"job {job['id']} failed language=bash reason=runtime_error exit=3 wait=")
    assert " exec=" in lines[1] and lines[1].endswith(" user=anonymous door=rest")
