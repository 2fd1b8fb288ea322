"""Shared fixtures: test settings, the real sandbox (detected once per session) and app clients."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from server.sandbox import Sandbox

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
    runner = asyncio.run(Sandbox.create(make_settings()))
    yield runner
    asyncio.run(runner.close())


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
