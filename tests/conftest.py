"""Shared fixtures: test settings, the real sandbox (detected once per session) and app clients."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.jobs import Runner
from server.settings import Settings

AppClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


def make_settings(**overrides: Any) -> Settings:
    """Small, fast limits for tests; anything can be overridden."""
    base = Settings(
        job_timeout_ms=5000,
        compile_timeout_ms=20_000,
        max_concurrent_jobs=2,
        max_queue_size=20,
        rate_limit_requests=1000,
        rate_limit_read_requests=1000,
        stats_interval_ms=50,
        shutdown_grace_ms=500,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Runner]:
    """The real bubblewrap sandbox, detected once (toolchain probing takes a few seconds)."""
    from server.sandbox import Sandbox

    runner = asyncio.run(Sandbox.create(make_settings()))
    yield runner
    asyncio.run(runner.close())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port with a temp dir, for the whole session; yields its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(binary):
        pytest.fail("redis-server is not installed (make test installs it: apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    try:
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
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
