"""Package layers: installed once per session from PyPI and npm by the real command, imported by real sandboxed jobs
that cannot write them. Every response is checked against openapi.json."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.judging.executor import Judge
from server.sandbox.packages import MANIFEST, load_packages_file
from server.settings import Settings
from tests.clients import Client, call
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parent.parent
# Small, pure: termcolor has no dependencies; is-odd brings is-number (dependencies are listed too).
PACKAGES = 'python = ["termcolor==3.3.0"]\njavascript = ["is-odd@3.0.1"]\n'


def install(cache_dir: Path, packages_file: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CACHE_DIR": str(cache_dir), "PACKAGES_FILE": str(packages_file)}
    return subprocess.run(
        [sys.executable, "-m", "server", "packages", "install"],
        env=env,
        cwd=cache_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="session")
def installed() -> Iterator[Settings]:
    """PACKAGES installed once by `python -m server packages install` into a cache dir the sandbox user can reach."""
    cache_dir = Path(tempfile.mkdtemp(prefix="conveyor-test-packages-"))
    cache_dir.chmod(0o755)
    packages_file = cache_dir / "packages.toml"
    packages_file.write_text(PACKAGES)
    proc = install(cache_dir, packages_file)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[1/2] python" in proc.stdout and "done: termcolor 3.3.0" in proc.stdout, proc.stdout
    assert "[2/2] javascript" in proc.stdout and "is-odd 3.0.1" in proc.stdout, proc.stdout
    yield make_settings(cache_dir=str(cache_dir), packages_file=str(packages_file))
    subprocess.run(["chmod", "-R", "u+w", str(cache_dir)], check=True)
    shutil.rmtree(cache_dir)


@pytest.fixture(scope="module")
def layered(installed: Settings) -> Iterator[Judge]:
    runner = asyncio.run(Judge.create(installed, languages=("python", "javascript")))
    yield runner
    asyncio.run(runner.close())


@pytest.fixture
async def pclient(aiohttp_client: Any, layered: Judge) -> AsyncIterator[Client]:
    client: TestClient[web.Request, web.Application] = await aiohttp_client(create_app(make_settings(), runner=layered))
    yield client


async def run(client: Client, language: str, code: str) -> Any:
    return await call(client, "POST", "/run", 200, json={"language": language, "code": code})


async def test_jobs_import_the_packages(pclient: Client) -> None:
    code = "import importlib.metadata, termcolor\nprint(importlib.metadata.version('termcolor'), termcolor.__file__)"
    job = await run(pclient, "python", code)
    assert job["status"] == "completed" and job["stdout"].startswith("3.3.0 /packages/termcolor/"), job
    job = await run(pclient, "javascript", "const isOdd = require('is-odd'); console.log(isOdd(3), isOdd(4))")
    assert job["status"] == "completed" and job["stdout"] == "true false\n", job


async def test_jobs_cannot_write_the_layer(pclient: Client) -> None:
    code = """
import os, termcolor
target = os.path.dirname(termcolor.__file__)
for attempt in (lambda: open(termcolor.__file__, 'a'), lambda: open(os.path.join(target, 'evil.py'), 'w'),
                lambda: os.unlink(termcolor.__file__), lambda: os.mkdir('/packages/evil'),
                lambda: os.chmod(termcolor.__file__, 0o777)):
    try:
        attempt()
        print('written')
    except OSError as exc:
        print(exc.strerror)
"""
    job = await run(pclient, "python", code)
    # Two walls: the files are read-only for everyone, and the layer is a read-only mount (either may answer first).
    lines = job["stdout"].splitlines()
    assert len(lines) == 5 and set(lines) <= {"Permission denied", "Read-only file system"}, job


async def test_runtimes_list_each_languages_packages(pclient: Client) -> None:
    runtimes = {r["language"]: r for r in await call(pclient, "GET", "/runtimes", 200)}
    assert runtimes["python"]["packages"] == [{"name": "termcolor", "version": "3.3.0"}]
    assert runtimes["javascript"]["packages"] == [
        {"name": "is-number", "version": "6.0.0"},
        {"name": "is-odd", "version": "3.0.1"},
    ]


async def test_cache_status_and_metrics_show_the_layers(pclient: Client) -> None:
    layers = (await call(pclient, "GET", "/cache/status", 200))["packages"]
    assert (layers["layers"], layers["packages"]) == (2, 3) and layers["bytes"] > 0
    assert sorted(layers["versions"]) == ["javascript", "python"]
    text = await (await pclient.get("/metrics")).text()
    assert "conveyor_package_layers 2.0" in text and f"conveyor_package_layer_bytes {float(layers['bytes'])}" in text


async def test_without_packages_jobs_do_not_see_them(client: Client) -> None:
    job = await run(client, "python", "import termcolor")
    assert job["reason"] == "runtime_error" and "No module named 'termcolor'" in job["stderr"]
    runtimes = await call(client, "GET", "/runtimes", 200)
    assert all(r["packages"] == [] for r in runtimes)
    assert (await call(client, "GET", "/cache/status", 200))["packages"]["layers"] == 0


async def test_a_changed_file_is_a_new_layer_and_running_servers_keep_theirs(
    installed: Settings, pclient: Client
) -> None:
    cache_dir, packages_file = Path(installed.cache_dir), Path(installed.packages_file)
    layers = cache_dir / "packages" / "python"
    (old,) = layers.iterdir()
    again = install(cache_dir, packages_file)
    assert again.returncode == 0 and "up to date" in again.stdout and list(layers.iterdir()) == [old]
    changed = cache_dir / "changed.toml"
    changed.write_text('python = ["termcolor>=3.3,<4"]\n')
    assert install(cache_dir, changed).returncode == 0
    new = set(layers.iterdir()) - {old}
    assert len(new) == 1 and (old / MANIFEST).exists() and (next(iter(new)) / MANIFEST).exists()
    # This server found its layer at start-up: its jobs keep importing from it, whole.
    job = await run(pclient, "python", "import termcolor; print('ok')")
    assert job["stdout"] == "ok\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('rust = ["serde"]', "packages are supported for python, javascript"),
        ('python = "numpy"', "expected a list"),
        ('python = ["--index-url=https://evil.example/simple"]', "expected a list"),
        ('python = ["https://evil.example/pkg.whl"]', "expected a list"),
        ("python = [", "Invalid value"),
    ],
)
def test_bad_packages_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "packages.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_packages_file(path)
    proc = install(tmp_path, path)
    assert proc.returncode == 2 and message in proc.stdout and "Traceback" not in proc.stderr
