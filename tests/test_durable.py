"""The durable embedded store: a killed server keeps what it handed out (results, share links, queued jobs), and its
journal keeps its bounds (retention, pending writes), survives a corrupt file and a full disk."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.queue import Worker
from server.queue.durable import DurableStore, Journal, checkpoints
from server.queue.durable import journal as journal_module
from server.queue.durable import rows as durable_rows
from server.queue.durable.rows import Recovered
from server.queue.jobs import ExecutionResult, Job, JobIO, JobStatus
from server.settings import Settings
from tests.conftest import free_port
from tests.servers import ROOT, ServerProcess

SLEEP = {"language": "python", "code": "import time\nprint('started', flush=True)\ntime.sleep(600)"}


class Server(ServerProcess):
    """One `python -m server` process on a data directory."""

    def __init__(self, tmp_path: Path, data_dir: Path, **env: str) -> None:
        super().__init__(
            tmp_path,
            **{
                "DURABLE": "1",
                "DATA_DIR": str(data_dir),
                "MAX_CONCURRENT_JOBS": "2",
                "JOB_TIMEOUT_MS": "600000",
                "SHUTDOWN_GRACE_MS": "0",
                "RATE_LIMIT_REQUESTS": "1000",
                "RATE_LIMIT_READ_REQUESTS": "100000",
                "WARM_POOL": "0",
                "CACHE_MAX_MB": "0",
                "LOG_LEVEL": "info",
                **env,
            },
        )


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Callable[..., Server]]:
    started: list[Server] = []

    def make(**env: str) -> Server:
        server = Server(tmp_path, tmp_path / "data", **env)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def post_run(session: aiohttp.ClientSession, server: Server, body: dict[str, Any], wait: bool) -> Any:
    async with session.post(f"{server.url}/run?wait={str(wait).lower()}", json=body) as resp:
        assert resp.status == (200 if wait else 202), await resp.text()
        return await resp.json()


async def wait_status(session: aiohttp.ClientSession, server: Server, job_id: str, statuses: set[str]) -> Any:
    while (job := await get_json(session, f"{server.url}/queue/job/{job_id}"))["status"] not in statuses:
        await asyncio.sleep(0.05)
    return job


async def journaled(server: Server, states: dict[str, str]) -> None:
    """Until the server's journal holds each job in the given state (read beside it: WAL lets a reader in)."""
    path = Path(server.env["DATA_DIR"]) / "jobs.db"
    while True:
        with sqlite3.connect(path) as db:
            found = dict(db.execute("SELECT id, state FROM jobs").fetchall())
        if all(found.get(job_id) == state for job_id, state in states.items()):
            return
        await asyncio.sleep(0.05)


async def seen_until_output(ws: aiohttp.ClientWebSocketResponse, job_id: str, text: str) -> int:
    """Subscribe to a job and read its events until its stdout holds `text` (in one event or several: a loaded
    machine may split one print); returns the highest seq seen."""
    await ws.send_json({"type": "subscribe", "jobId": job_id})
    highest, stdout = 0, ""
    while text not in stdout:
        message = await ws.receive_json()
        if message.get("jobId") == job_id and isinstance(message.get("seq"), int):
            highest = max(highest, message["seq"])
            stdout += message.get("data", "") if message["type"] == "output" else ""
    return highest


@pytest.mark.timeout(300)
async def test_a_killed_server_keeps_every_result_runs_every_queued_job_and_ends_every_running_one(
    servers: Callable[..., Server],
) -> None:
    # Memory keeps two finished jobs: the older ones answer from the journal on disk.
    first = await servers(JOB_RETENTION_COUNT="2").start()
    async with aiohttp.ClientSession() as session:
        finished = {}
        for n in range(4):
            job = await post_run(session, first, {"language": "python", "code": f"print('done {n}')"}, wait=True)
            finished[job["id"]] = job
        async with session.post(
            f"{first.url}/judge0/submissions?wait=true",
            json={"language_id": 71, "source_code": "print(input())", "stdin": "hi", "expected_output": "hi"},
        ) as resp:
            token = (await resp.json())["token"]
        running, seen = [], {}
        async with session.ws_connect(f"{first.url}/ws") as ws:
            for _ in range(2):
                job_id = (await post_run(session, first, SLEEP, wait=False))["jobId"]
                running.append(job_id)
                seen[job_id] = await seen_until_output(ws, job_id, "started\n")
        queued: dict[str, dict[str, Any]] = {
            "reversed": {
                "language": "python",
                "code": "print(input()[::-1])",
                "stdin": "olleh",
                "cpuTimeLimitMs": 2000,
            },
            "tests": {
                "language": "python",
                "code": "print(int(input()) * 2)",
                "tests": [{"stdin": "2", "expectedOutput": "4"}, {"stdin": "5", "expectedOutput": "10"}],
            },
            "files": {
                "language": "python",
                "files": [
                    {"name": "main.py", "content": "import sys, helper\nprint(helper.X, *sys.argv[1:])"},
                    {"name": "helper.py", "content": "X = 42"},
                ],
                "args": ["and", "more"],
            },
        }
        waiting = {}
        for name, body in queued.items():
            answer = await post_run(session, first, body, wait=False)
            assert answer["status"] == "queued"
            waiting[name] = answer["jobId"]
        await journaled(first, {**dict.fromkeys(finished, "finished"), **dict.fromkeys(running, "running")})
        await journaled(first, dict.fromkeys(waiting.values(), "queued"))
        first.kill()

        second = await servers(JOB_RETENTION_COUNT="2").start()
        # Every finished result and share link answers, Judge0's token too.
        for job_id, before in finished.items():
            after = await get_json(session, f"{second.url}/queue/job/{job_id}")
            assert (after["status"], after["stdout"], after["code"]) == ("completed", before["stdout"], before["code"])
            async with session.get(f"{second.url}/?job={job_id}") as page:
                assert page.status == 200
        listed = await get_json(session, f"{second.url}/runs?ids={','.join(finished)}")
        assert [job["stdout"] for job in listed["jobs"]] == [job["stdout"] for job in finished.values()]
        submission = await get_json(session, f"{second.url}/judge0/submissions/{token}")
        assert (submission["status"]["id"], submission["stdout"]) == (3, "hi\n")
        # Every running job ended worker_lost, its terminal event numbered above what its watchers saw.
        async with session.ws_connect(f"{second.url}/ws") as ws:
            for job_id in running:
                job = await get_json(session, f"{second.url}/queue/job/{job_id}")
                assert (job["status"], job["reason"]) == ("failed", "worker_lost")
                await ws.send_json({"type": "subscribe", "jobId": job_id, "since": seen[job_id]})
                while (message := await ws.receive_json()).get("jobId") != job_id or "seq" not in message:
                    pass
                assert (message["type"], message["reason"]) == ("failed", "worker_lost")
                assert message["seq"] > seen[job_id]
        # Every queued job ran, with everything it was submitted with.
        done = {
            name: await wait_status(session, second, job_id, {"completed", "failed"})
            for name, job_id in waiting.items()
        }
        assert (done["reversed"]["stdout"], done["reversed"]["cpuTimeLimitMs"]) == ("hello\n", 2000)
        assert done["tests"]["summary"] == {"passed": 2, "total": 2}
        assert done["files"]["stdout"] == "42 and more\n"
        assert "lost its worker" in second.log.read_text()


@pytest.mark.timeout(120)
async def test_a_stopped_server_keeps_its_queue_and_a_second_one_may_not_share_its_directory(
    servers: Callable[..., Server],
) -> None:
    first = await servers().start()
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            await post_run(session, first, SLEEP, wait=False)
        waiting = (await post_run(session, first, {"language": "python", "code": "print(6 * 7)"}, wait=False))["jobId"]
        # A second server on the same directory: one line saying why, exit 2, no traceback (and no restart loop:
        # deploy/conveyor.service does not restart on 2).
        other = Server(first.log.parent, Path(first.env["DATA_DIR"]))
        result = subprocess.run(
            [sys.executable, "-m", "server"], env=other.env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2, result.stderr
        assert f"another Conveyor server (pid {first.proc.pid if first.proc else 0})" in result.stderr
        assert "Traceback" not in result.stderr
        assert first.proc is not None
        first.proc.send_signal(signal.SIGTERM)  # a deploy: the queue waits in the journal
        assert first.proc.wait(timeout=60) == 0
        second = await servers().start()
        job = await wait_status(session, second, waiting, {"completed", "failed", "cancelled"})
        assert (job["status"], job["stdout"]) == ("completed", "42\n")


async def test_a_job_is_journaled_before_its_submission_is_answered(servers: Callable[..., Server]) -> None:
    # An accepted job (a 202) must survive a crash that comes right after the answer: the journal wrote its jobs
    # 20 ms after they were accepted, so a SIGKILL then lost every job of those 20 ms.
    first = await servers().start()
    async with aiohttp.ClientSession() as session:
        busy = [(await post_run(session, first, SLEEP, wait=False))["jobId"] for _ in range(2)]
        for job_id in busy:  # both slots: what follows waits in the queue
            await wait_status(session, first, job_id, {"running"})
        accepted = []
        for i in range(5):
            body = {"language": "python", "code": f"print({i} * 7)"}
            accepted.append((await post_run(session, first, body, wait=False))["jobId"])
        first.kill()  # at once: no waiting for the journal
        second = await servers().start()
        final = {"completed", "failed", "cancelled"}
        ended = [await wait_status(session, second, job_id, final) for job_id in accepted]
    assert [(job["status"], job["stdout"]) for job in ended] == [("completed", f"{i * 7}\n") for i in range(5)]


def test_an_unusable_data_dir_stops_start_up_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    server = Server(tmp_path, blocker / "data")
    result = subprocess.run(
        [sys.executable, "-m", "server"], env=server.env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert f"DATA_DIR={blocker / 'data'}: cannot keep the job journal there" in result.stderr
    assert "DURABLE=0" in result.stderr and "Traceback" not in result.stderr


# -- the store and its journal in this process (real SQLite files) ---------------------------------------------


async def echo(job: Job, io: JobIO) -> ExecutionResult:
    return ExecutionResult(exit_code=0, stdout=job.code)


def make_worker(directory: Path, *, memory_count: int = 10_000, slots: int = 2, **journal: Any) -> Worker:
    options: dict[str, Any] = {"retention_seconds": 3600, "max_bytes": 1 << 30, **journal}
    store = DurableStore(Journal(directory, **options), retention_count=memory_count)
    return Worker(store, executor=echo, max_concurrent=2, slots=slots, max_queue_size=1000)


def journal_of(worker: Worker) -> Journal:
    store = worker.store
    assert isinstance(store, DurableStore)
    return store.journal


def rows(directory: Path) -> int:
    with sqlite3.connect(directory / "jobs.db") as db:
        (count,) = db.execute("SELECT count(*) FROM jobs").fetchone()
        return int(count)


async def run_all(worker: Worker, count: int, *, owner: str = "", size: int = 0) -> list[str]:
    ids = [
        (await worker.submit(Job(language="python", code="x" * size or f"{n}", owner=owner))).id for n in range(count)
    ]
    for job_id in ids:
        await worker.wait(job_id)
    return ids


async def flushed(journal: Journal) -> None:
    """Until the writer has taken everything pending (it commits what it takes, or keeps it on a failure)."""
    while True:
        with journal._lock:
            if not journal._pending and not journal._inflight:
                return
        await asyncio.sleep(0.01)


async def swept(journal: Journal) -> None:
    """Until a retention sweep has run over everything written so far (one runs every SWEEP_S)."""
    await flushed(journal)
    before = journal.stats.sweeps
    while journal.stats.sweeps == before:
        await asyncio.sleep(0.05)


async def test_results_evicted_from_memory_are_read_back_from_the_journal(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, memory_count=1)
    await worker.start()
    ids = await run_all(worker, 5)
    await flushed(journal_of(worker))
    for job_id in ids:
        job = await worker.get(job_id)
        assert job is not None and job.result is not None and job.result.stdout == job.code
        assert [e["type"] for e in await worker.read_events(job_id, 0)] == ["queued", "running", "completed"]
    assert await worker.get("0" * 32) is None and await worker.read_events("0" * 32, 0) == []
    await worker.close()


async def test_retention_deletes_rows_by_age_and_past_the_disk_bound_from_the_largest_holder(tmp_path: Path) -> None:
    now = [time.time()]
    worker = make_worker(tmp_path, clock=lambda: now[0], max_bytes=64 * 1024)
    journal = journal_of(worker)
    await worker.start()
    flood = await run_all(worker, 40, owner="flooder", size=4096)  # ~160 KB: past the 64 KB bound
    modest = await run_all(worker, 2, owner="modest", size=100)
    await swept(journal)
    with sqlite3.connect(tmp_path / "jobs.db") as db:
        kept = dict(db.execute("SELECT owner, SUM(size) FROM jobs GROUP BY owner").fetchall())
        newest = {row[0] for row in db.execute("SELECT id FROM jobs WHERE owner = 'flooder'")}
    assert sum(kept.values()) <= 64 * 1024 and kept["modest"] > 0  # the flood evicted its own, oldest first
    assert newest and newest <= set(flood[-len(newest) :])
    now[0] += 3601  # an hour later every finished row is past its age
    await swept(journal)
    assert rows(tmp_path) == 0 and await worker.get(modest[0]) is not None  # memory keeps its own budget
    await worker.close()


async def test_pending_writes_are_bounded_while_the_disk_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each submission waits for its write this long before it is answered anyway: the same path, in less time.
    monkeypatch.setattr(journal_module, "ACK_TIMEOUT_S", 0.2)
    worker = make_worker(tmp_path, max_pending=8)
    journal = journal_of(worker)
    await worker.start()
    await run_all(worker, 1)
    await flushed(journal)
    # Another connection holds the database: every commit waits its busy timeout, then fails and is retried.
    blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    ids = await run_all(worker, 30)
    assert journal.stats.dropped > 0
    # Past the bound only the jobs journaled before it was reached still write (their end): at most the bound again.
    with journal._lock:
        assert len(journal._pending) + journal._inflight <= 2 * 8
    blocker.execute("ROLLBACK")
    blocker.close()
    await flushed(journal)
    await worker.close()
    assert 0 < 31 - rows(tmp_path) <= journal.stats.dropped  # what was taken was written; what was not, was said
    for job_id in ids:
        assert (await worker.get(job_id)) is not None  # memory served them all along


async def test_a_submission_is_answered_without_waiting_for_a_large_finished_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that printed a megabyte finishes as another is submitted: both land in one batch, and the submission's
    answer must not wait for the large row (10-25 ms to write here; held below until the answer came)."""
    monkeypatch.setattr(journal_module, "GATHER_S", 5.0)  # the writer waits for the submission: one batch, always
    held = threading.Event()
    write_batch = durable_rows.write_batch

    def slow_large_rows(db: sqlite3.Connection, batch: dict[str, durable_rows.Op], **options: Any) -> int:
        if any(op.state == durable_rows.FINISHED and op.job and len(op.job.code) > 1000 for op in batch.values()):
            assert held.wait(10)
        return write_batch(db, batch, **options)

    monkeypatch.setattr(durable_rows, "write_batch", slow_large_rows)
    worker = make_worker(tmp_path, slots=0)
    journal = journal_of(worker)
    await worker.start()
    try:
        large = Job(language="python", code="x" * (1 << 20))
        assert await journal.written(journal.queued(large) or 0)
        large.status, large.finished_at = JobStatus.COMPLETED, time.time() * 1000.0
        large.result = ExecutionResult(exit_code=0, stdout=large.code)
        journal.finished(large, b"")
        number = journal.queued(Job(language="python", code="print(1)"))
        assert number is not None
        assert await journal.written(number)  # answered while the large row is still being written
        assert rows(tmp_path) == 2
    finally:
        held.set()
    await flushed(journal)
    monkeypatch.undo()  # the usual gathering again, for the close
    await worker.close()
    with sqlite3.connect(tmp_path / "jobs.db") as db:
        states = sorted(state for (state,) in db.execute("SELECT state FROM jobs"))
    assert states == ["finished", "queued"]


def wal_bytes(directory: Path) -> int:
    wal = directory / "jobs.db-wal"
    return wal.stat().st_size if wal.exists() else 0


class StalledCheckpoints:
    """The checkpointer's connection, each checkpoint held until `release` (a slow disk)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        connect = sqlite3.connect
        monkeypatch.setattr(checkpoints, "_connect", lambda path: self._Held(connect(path), self.release))

    class _Held:
        def __init__(self, db: sqlite3.Connection, release: threading.Event) -> None:
            self.db, self.release = db, release

        def execute(self, sql: str) -> Any:
            self.release.wait(30)
            return self.db.execute(sql)

        def close(self) -> None:
            self.db.close()


async def test_the_log_is_copied_into_the_database_beside_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large results past SQLite's own checkpoint point (1,000 pages, 4 MiB): the writer's commits no longer copy the
    log into the database (a commit that did held every submission behind it 10-20 ms), the checkpointer's thread
    does. Held here: the database file does not grow until it is let go."""
    monkeypatch.setattr(checkpoints, "CHECKPOINT_BYTES", 256 << 10)
    stalled = StalledCheckpoints(monkeypatch)
    worker = make_worker(tmp_path)
    journal = journal_of(worker)
    await worker.start()
    database = tmp_path / "jobs.db"
    try:
        await run_all(worker, 1)
        await flushed(journal)
        before = database.stat().st_size
        for _ in range(20):
            await run_all(worker, 2, size=64 << 10)  # a job's row holds its code and its echo
            await flushed(journal)
        assert wal_bytes(tmp_path) > 4 << 20  # past the point where SQLite would have copied it in the commit
        assert database.stat().st_size == before
    finally:
        stalled.release.set()
    assert journal.checkpointer is not None
    while journal.checkpointer.checkpoints == 0:
        await asyncio.sleep(0.01)
    assert database.stat().st_size > before + (2 << 20)
    await worker.close()
    assert rows(tmp_path) == 41 and wal_bytes(tmp_path) == 0  # a clean close folds the log in


async def test_a_stalled_checkpointer_leaves_the_log_bounded_by_the_writers_own_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpointer stalls (a slow disk): past WAL_MAX_PAGES SQLite's own checkpoint runs in the writer's
    commit, as it always did past its default, and the log stays bounded."""
    monkeypatch.setattr(checkpoints, "CHECKPOINT_BYTES", 64 << 10)
    monkeypatch.setattr(checkpoints, "WAL_MAX_PAGES", 256)  # 1 MiB
    stalled = StalledCheckpoints(monkeypatch)
    worker = make_worker(tmp_path)
    journal = journal_of(worker)
    await worker.start()
    try:
        largest = 0
        for _ in range(10):
            await run_all(worker, 2, size=64 << 10)
            await flushed(journal)
            largest = max(largest, wal_bytes(tmp_path))
        assert journal.checkpointer is not None and journal.checkpointer.checkpoints == 0  # still stalled
        assert largest < (1 << 20) + (1 << 20)  # the bound and one batch: 4 MiB of rows were written
    finally:
        stalled.release.set()
    await worker.close()
    assert rows(tmp_path) == 20


async def test_a_full_disk_degrades_to_memory_and_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(tmp_path)
    journal = journal_of(worker)
    await worker.start()
    await run_all(worker, 1)
    await flushed(journal)
    assert journal._db is not None
    (pages,) = journal._db.execute("PRAGMA page_count").fetchone()
    journal._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL, as on a full disk
    with caplog.at_level(logging.ERROR):
        ids = await run_all(worker, 3, size=64 * 1024)
        while not journal.stats.failing:
            await asyncio.sleep(0.01)
    assert "database or disk is full" in caplog.text
    for job_id in ids:
        job = await worker.get(job_id)
        assert job is not None and job.status is JobStatus.COMPLETED
    journal._db.execute("PRAGMA max_page_count = 1073741823")
    while journal.stats.failing:
        journal._wake.set()
        await asyncio.sleep(0.05)
    await flushed(journal)
    await worker.close()
    assert rows(tmp_path) == 4


@pytest.mark.parametrize("damage", ["not a database", "a damaged page"])
async def test_a_corrupt_journal_is_set_aside_and_a_new_one_started(tmp_path: Path, damage: str) -> None:
    worker = make_worker(tmp_path)
    await worker.start()
    lost = await run_all(worker, 50, size=1000)
    await worker.close()
    with (tmp_path / "jobs.db").open("r+b") as db:
        if damage == "not a database":
            db.write(b"this is not a database" * 512)
        else:
            db.seek(3 * 4096)  # a page of the table or an index, past the header SQLite checks first
            db.write(b"\xff" * 4096)
    worker = make_worker(tmp_path)
    await worker.start()
    ids = await run_all(worker, 2)
    await worker.close()
    assert sum(p.name.startswith("jobs.db.corrupt-") for p in tmp_path.iterdir()) == 1
    worker = make_worker(tmp_path)
    await worker.start()
    assert all([(await worker.get(job_id)) is not None for job_id in ids])
    assert not any([(await worker.get(job_id)) is not None for job_id in lost])
    await worker.close()


async def test_queued_jobs_come_back_in_their_order_with_their_priorities(tmp_path: Path) -> None:
    # Closed before it claims anything (no slots): the queue stays in the journal as a deploy would leave it.
    worker = make_worker(tmp_path, slots=0)
    await worker.start()
    ids = [(await worker.submit(Job(language="python", code=f"{n}", priority=n % 2))).id for n in range(6)]
    await flushed(journal_of(worker))
    await worker.close()
    started: list[str] = []

    async def record(job: Job, io: JobIO) -> ExecutionResult:
        started.append(job.id)
        return ExecutionResult(exit_code=0)

    store = DurableStore(Journal(tmp_path, retention_seconds=3600, max_bytes=1 << 30))
    again = Worker(store, executor=record, max_concurrent=1, max_queue_size=100)
    await again.start()
    for job_id in ids:
        await again.wait(job_id)
    await again.close()
    assert started == [ids[1], ids[3], ids[5], ids[0], ids[2], ids[4]]


def test_durability_is_the_default_and_its_directory_follows_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env({}, env_file=None)
    assert settings.durable and settings.data_max_mb == 1024
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert settings.data_path == Path("/var/lib/conveyor")  # systemd's StateDirectory=conveyor
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", "/home/u/.state")
    assert settings.data_path == Path("/home/u/.state/conveyor")
    chosen = Settings.from_env({"DATA_DIR": "/srv/conveyor", "DURABLE": "0"}, env_file=None)
    assert chosen.data_path == Path("/srv/conveyor") and not chosen.durable
    assert "StateDirectory=conveyor" in (ROOT / "deploy" / "conveyor.service").read_text()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("existing", [False, True])
async def test_other_local_users_cannot_read_the_data_dir(
    servers: Callable[..., Server], tmp_path: Path, existing: bool
) -> None:
    # Under the common umask 022, with the callback outbox (which creates its database as umask allows) beside the
    # journal: code, output and callback payloads are the users'. A directory made beforehand by an operator
    # (`mkdir`, 0755) is made private too.
    data = tmp_path / "data"
    if existing:
        data.mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        server = await servers(CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8").start()
    finally:
        os.umask(old)
    async with aiohttp.ClientSession() as session:
        body = {"language": "python", "code": "print('secret')", "callbackUrl": f"http://127.0.0.1:{free_port()}/"}
        job_id = (await post_run(session, server, body, wait=True))["id"]
        await journaled(server, {job_id: "finished"})
    modes = {str(path.relative_to(data)): path.stat().st_mode & 0o777 for path in data.rglob("*")}
    assert {"jobs.db", "callbacks.sqlite3"} <= set(modes), modes
    assert data.stat().st_mode & 0o077 == 0, oct(data.stat().st_mode)


async def test_a_large_journal_is_read_back_within_the_memory_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40 results of ~64 KB each on disk (within DATA_MAX_MB); memory may hold 256 KB of finished jobs. At start the
    # journal must not read all 40 (with the defaults: up to DATA_MAX_MB, a GB, read at once) only to evict them.
    worker = make_worker(tmp_path)
    await worker.start()
    ids = await run_all(worker, 40, size=64 * 1024)
    await flushed(journal_of(worker))
    await worker.close()
    read: list[Recovered] = []
    real = durable_rows.recover

    def spy(*args: Any, **kwargs: Any) -> Recovered:
        read.append(real(*args, **kwargs))
        return read[-1]

    monkeypatch.setattr(durable_rows, "recover", spy)
    budget = 256 * 1024
    store = DurableStore(Journal(tmp_path, retention_seconds=3600, max_bytes=1 << 30), retention_bytes=budget)
    again = Worker(store, executor=echo, max_concurrent=2, max_queue_size=1000)
    await again.start()
    (recovered,) = read
    held = sum(len(job.code) + len(job.result.stdout if job.result else "") for job, _ in recovered.finished)
    assert 0 < held <= budget, held
    assert [job.id for job, _ in recovered.finished] == ids[-len(recovered.finished) :]  # the newest, oldest first
    assert (await again.get(ids[0])) is not None  # the rest are read from disk when asked
    await again.close()
