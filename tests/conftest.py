"""Shared fixtures: test settings, the real sandbox (detected once per session) and app clients."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import hashlib
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Browser, async_playwright

from bench import redisserver
from server.app import create_app
from server.queue.jobs import Runner
from server.sandbox import command
from server.sandbox.spec import RunSpec
from server.settings import Settings
from tests.browser import Pages, ServerFactory, launch
from tests.queues import Gate, build_queue

AppClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]

# How much slower than a normal machine this one is: the cgroup v2 test machine runs under qemu's software emulation
# (docs/vm.md) and sets it. It stretches every wall-time wait and limit the tests set (pytest-timeout's, the
# waits' and the sandboxes' wall times) through `scaled`, never a CPU-time limit: those are what the tests test.
TIME_SCALE = float(os.environ.get("CONVEYOR_TEST_TIME_SCALE") or 1)
# Servers the tests start (`python -m server`) keep jobs in memory unless a test asks otherwise: parallel ones
# would otherwise share, and lock, the user's default DATA_DIR.
os.environ.setdefault("DURABLE", "0")


def scaled(seconds: float) -> float:
    """A wall-time wait of `seconds` on a normal machine, on this one."""
    return seconds * TIME_SCALE


def scaled_ms(ms: int) -> int:
    """A wall-time limit in milliseconds on a normal machine, on this one."""
    return round(ms * TIME_SCALE)


# Fixtures that live on the session's event loop (one Chromium per worker): a test using one runs on that loop too,
# and so does this file's `serve`, which every browser test takes with `pages` (tests/test_edge.py has a `serve` of
# its own, on the test's loop).
SESSION_LOOP_FIXTURES = frozenset({"browser", "pages"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Puts the browser tests on the session's event loop, and stretches each test's pytest-timeout (its own
    marker's, else the configured one) by TIME_SCALE."""
    for item in items:
        if SESSION_LOOP_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)
    if TIME_SCALE == 1:
        return
    configured = float(config.getoption("timeout", None) or config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        timeout = float(marker.args[0] if marker and marker.args else configured)
        if timeout > 0:
            item.add_marker(pytest.mark.timeout(timeout * TIME_SCALE), append=False)


# State the server keeps on disk (the callback outbox): each app of a test session in a directory of its own here,
# made when the app first writes to it, never the user's `~/.local/state/conveyor`.
_DATA_ROOT = Path(tempfile.mkdtemp(prefix="conveyor-test-data-"))
atexit.register(shutil.rmtree, _DATA_ROOT, ignore_errors=True)


def make_settings(**overrides: Any) -> Settings:
    """Small, fast limits for tests; anything can be overridden."""
    base = Settings(
        data_dir=str(_DATA_ROOT / uuid.uuid4().hex),
        job_timeout_ms=scaled_ms(5000),
        compile_timeout_ms=scaled_ms(20_000),
        max_concurrent_jobs=2,
        max_queue_size=20,
        rate_limit_requests=1000,
        rate_limit_read_requests=1000,
        stats_interval_ms=50,
        shutdown_grace_ms=500,
        cache_max_mb=0,  # off, so that compile figures are a compile's; tests/test_buildcache.py turns it on
        durable=False,  # memory only: tests/test_durable.py turns the journal on, each test in its own DATA_DIR
    )
    return dataclasses.replace(base, **overrides)


def keys_file(directory: Path, keys: dict[str, tuple[str, bool]]) -> str:
    """An API_KEYS_FILE in `directory` with `{name: (key, admin)}`; returns its path."""
    path = directory / "keys.toml"
    path.write_text(
        "".join(
            f'[[keys]]\nname = "{name}"\nsha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
            f"admin = {str(admin).lower()}\n"
            for name, (key, admin) in keys.items()
        )
    )
    return str(path)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Runner]:
    """The real bubblewrap sandbox, detected once (toolchain probing takes a few seconds)."""
    from server.judging.executor import Judge

    runner = asyncio.run(Judge.create(make_settings()))
    yield runner
    asyncio.run(runner.close())


@pytest.fixture(scope="session")
def cached_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """A real sandbox with the build cache on (in a temp dir); C and Python only, to probe quickly."""
    from server.judging.executor import Judge

    settings = make_settings(cache_dir=str(tmp_path_factory.mktemp("cache")), cache_max_mb=64)
    runner = asyncio.run(Judge.create(settings, languages=("c", "python")))
    yield runner
    asyncio.run(runner.close())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A real redis-server on a free port with a temp dir, for the whole session; yields its URL."""
    if not redisserver.available():
        pytest.fail("redis-server is not installed (make test installs it: apt-get install redis-server)")
    with redisserver.redis_server() as url:
        yield url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    redisserver.flush(redis_server)
    return redis_server


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def app_client(aiohttp_client: Any, sandbox: Runner) -> AsyncIterator[AppClientFactory]:
    """Factory: `await app_client(**setting_overrides)` gives a client of a fresh app on the real sandbox."""

    async def make(**overrides: Any) -> TestClient[web.Request, web.Application]:
        client: TestClient[web.Request, web.Application] = await aiohttp_client(
            create_app(make_settings(**overrides), runner=sandbox)
        )
        return client

    yield make


@pytest.fixture
async def client(app_client: AppClientFactory) -> TestClient[web.Request, web.Application]:
    return await app_client()


# -- browser tests: one Chromium per worker on the session's loop, fresh contexts and a fresh server per test -------


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, launched once per worker (41 launches cost a minute); each test opens its own contexts."""
    async with async_playwright() as playwright:
        chromium = await launch(playwright)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(loop_scope="session")
async def pages(browser: Browser) -> AsyncIterator[Pages]:
    opened = Pages(browser)
    yield opened
    await opened.close()
    # Every test also proves the pages stayed on their own server, threw no script errors and broke no CSP rule.
    for recorder, origin in opened.recorders.values():
        assert recorder.outside(origin) == []
        assert recorder.errors == []
        assert recorder.csp == []


@pytest_asyncio.fixture(loop_scope="session")
async def serve(sandbox: Runner) -> AsyncIterator[ServerFactory]:
    """Factory: a real server on 127.0.0.1 (the browser connects over TCP) running a fresh app, on the real
    sandbox unless `runner` is given; stopped when the test ends."""
    servers: list[TestServer] = []

    async def make(*, port: int | None = None, runner: Runner | None = None, **overrides: Any) -> TestServer:
        app = create_app(make_settings(**overrides), runner=runner or sandbox)
        server = TestServer(app, host="127.0.0.1", port=port)
        servers.append(server)
        await server.start_server()
        return server

    yield make
    while servers:
        await servers.pop().close()


# -- queue suites: every test runs on both backends (Redis on the session's real redis-server) ---------------


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_queue(gate: Gate, backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Any]]:
    """Factory of started queues of the parametrized backend; Redis ones share the test's real redis-server."""
    queues: list[Any] = []
    url = request.getfixturevalue("redis_url") if backend == "redis" else ""

    async def make(**kwargs: Any) -> Any:
        kwargs.setdefault("executor", gate)
        queue: Any = build_queue(backend, url, **kwargs)
        await queue.start()
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        await queue.close()


@pytest.fixture
def messages(monkeypatch: pytest.MonkeyPatch) -> list[tuple[RunSpec, bytes]]:
    """Every job message a warm sandbox was sent, with its spec (command.job_message, itself, recorded): for the tests
    of the pre-started interpreters."""
    sent: list[tuple[RunSpec, bytes]] = []
    real = command.job_message

    def recording(host: command.Host, spec: RunSpec, **kwargs: Any) -> bytes:
        message = real(host, spec, **kwargs)
        sent.append((spec, message))
        return message

    monkeypatch.setattr(command, "job_message", recording)
    return sent
