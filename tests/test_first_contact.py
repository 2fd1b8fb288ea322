"""First contact with `python -m server`: --host/--port, the start-up banner, a port already taken, .env typos;
and what the pages' assets carry (long-lived caching of versioned URLs, compressed small scripts)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from server.__main__ import _flags, banner, env_file_warnings
from server.settings import Settings
from tests.conftest import AppClientFactory, free_port
from tests.test_main import ROOT


def test_flags_are_read_wherever_they_are() -> None:
    assert _flags(["--port", "8081", "--host=0.0.0.0"]) == ({"port": 8081, "host": "0.0.0.0"}, [])
    assert _flags(["cache", "status", "--port=9"]) == ({"port": 9}, ["cache", "status"])
    for bad in (["--port"], ["--port", "http"], ["--port=70000"], ["--host="]):
        with pytest.raises(ValueError):
            _flags(bad)


def test_the_banner_names_the_pages_the_rate_limit_and_the_pool() -> None:
    lines = banner(Settings(host="0.0.0.0", port=8081, rate_limit_requests=10, max_concurrent_jobs=4, warm_pool=2))
    assert lines[0] == "Conveyor listening on http://0.0.0.0:8081"
    assert [line.split()[-1] for line in lines[1:4]] == [
        "http://localhost:8081/",
        "http://localhost:8081/dashboard",
        "http://localhost:8081/docs",
    ]
    assert "10 runs per 60 s per client" in lines[4]
    assert "4 jobs at once, 100 more may wait, 2 sandboxes kept warm" in lines[5]


def test_env_typos_are_named_with_the_closest_setting(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("PORT=3005\nMAX_CONCURENT_JOBS=4\nrate_limit_request=5\nWHATEVER_ELSE=1\n")
    assert env_file_warnings(env) == [
        f"{env}: MAX_CONCURENT_JOBS is not a setting and is ignored; did you mean MAX_CONCURRENT_JOBS?",
        f"{env}: rate_limit_request is not a setting and is ignored; did you mean RATE_LIMIT_REQUESTS?",
        f"{env}: WHATEVER_ELSE is not a setting and is ignored (python -m server --help lists them)",
    ]
    assert env_file_warnings(tmp_path / "missing") == []


async def test_a_started_server_says_where_and_takes_its_port_from_the_flag(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / ".env").write_text("LOG_LEVL=debug\n")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port)],
            env={**os.environ, "PYTHONPATH": str(ROOT), "PORT": "1", "LOG_LEVEL": "info"},  # the flag wins
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        async with aiohttp.ClientSession() as session:
            while True:  # until it answers (pytest-timeout bounds a server that never does)
                assert proc.poll() is None, log.read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert f"Conveyor listening on http://127.0.0.1:{port}" in text
    assert f"dashboard  http://127.0.0.1:{port}/dashboard" in text
    assert "LOG_LEVL is not a setting and is ignored; did you mean LOG_LEVEL?" in text


def test_a_port_in_use_says_how_to_choose_another(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "server", "--port", str(port)],
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "LOG_LEVEL": "warning", "DURABLE": "0"},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert re.search(rf"cannot listen on 127\.0\.0\.1:{port}: .*another program has that port: choose another with "
                     r"PORT=3001 \(or --port 3001\)", result.stderr), result.stderr  # fmt: skip


async def test_versioned_assets_are_cached_for_long_and_small_scripts_compressed(
    app_client: AppClientFactory,
) -> None:
    client = await app_client()
    page = await (await client.get("/")).text()
    versioned = re.findall(r'src="(/static/[^"]+\?v=[^"]+)"', page)
    assert any("editor.js" in url for url in versioned) and any("vendor/codemirror.js" in url for url in versioned)
    for url in versioned:
        resp = await client.get(url, headers={"Accept-Encoding": "gzip"})
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable", url
        assert resp.headers.get("Content-Encoding") == "gzip", url
    # The same file without its version may change under the same URL: revalidated every time.
    plain = await client.get("/static/editor.js")
    assert plain.headers["Cache-Control"] == "no-cache"
