"""Build cache: a second identical compile costs nothing, and a bad entry is rebuilt, never run.

The compile-cache tests go through POST /run on a real sandbox with the cache on (in a temp dir); every response
is checked against openapi.json. The bound and the on-disk format are tested on BuildCache directly.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.judging.executor import Judge
from server.keys import RUNNER
from server.queue.jobs import Runner
from server.sandbox.buildcache import HASH_LINE, SUFFIX, BuildCache, CachedBuild, build_key
from tests.clients import Client, call
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parent.parent


def hello_c(marker: str, text: str = "hello") -> str:
    """A C program unique to `marker` (so tests never share entries) that prints `text`."""
    return f'#include <stdio.h>\n/* {marker} */\nint main(void) {{ puts("{text}"); return 0; }}\n'


@pytest.fixture
async def cclient(aiohttp_client: Any, cached_sandbox: Runner) -> AsyncIterator[Client]:
    client: TestClient[web.Request, web.Application] = await aiohttp_client(
        create_app(make_settings(cache_max_mb=64), runner=cached_sandbox)
    )
    yield client


async def run(client: Client, **body: Any) -> Any:
    return await call(client, "POST", "/run", 200, json=body)


def sandbox_of(client: Client) -> Judge:
    runner = client.app[RUNNER]
    assert isinstance(runner, Judge) and runner.sandbox.cache is not None
    return runner


def entries(sandbox: Judge) -> set[Path]:
    assert sandbox.sandbox.cache is not None
    return set(sandbox.sandbox.cache.root.rglob(f"*{SUFFIX}"))


async def test_a_second_identical_run_skips_the_compile(cclient: Client) -> None:
    sandbox = sandbox_of(cclient)
    code = hello_c(secrets.token_hex(8)).replace("int main", '#warning "kept-warning"\nint main')
    builds, before = sandbox.sandbox.builds, entries(sandbox)
    first = await run(cclient, language="c", code=code)
    assert first["status"] == "completed" and first["stdout"] == "hello\n", first
    assert first["compileCached"] is False and first["compileTimeMs"] > 0 and first["compileCpuTimeMs"] > 0
    assert sandbox.sandbox.builds == builds + 1 and len(entries(sandbox) - before) == 1
    second = await run(cclient, language="c", code=code)
    assert second["status"] == "completed" and second["stdout"] == "hello\n", second
    assert second["compileCached"] is True and second["compileCpuTimeMs"] is None
    assert sandbox.sandbox.builds == builds + 1  # no compile-and-pack sandbox this time
    # The compile stage's result is kept as it was: the compiler's warning is shown again.
    assert "kept-warning" in first["compileOutput"] and second["compileOutput"] == first["compileOutput"]


async def test_changed_options_files_or_toolchain_version_miss(
    cclient: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = sandbox_of(cclient)
    code = hello_c(secrets.token_hex(8))
    assert (await run(cclient, language="c", code=code))["compileCached"] is False
    assert (await run(cclient, language="c", code=code))["compileCached"] is True
    job = await run(cclient, language="c", code=code, compilerOptions=["-DX=1"])
    assert job["compileCached"] is False
    files = [{"name": "main.c", "content": code}, {"name": "extra.h", "content": "/* unused */\n"}]
    assert (await run(cclient, language="c", files=files))["compileCached"] is False
    # A new compiler (the version the sandbox detected at start-up) invalidates every build of it.
    monkeypatch.setitem(sandbox.sandbox._versions, "c", "999.0.0")
    job = await run(cclient, language="c", code=code)
    assert job["compileCached"] is False and job["stdout"] == "hello\n"
    assert (await run(cclient, language="c", code=code))["compileCached"] is True


async def test_a_poisoned_entry_is_detected_deleted_and_rebuilt_never_run(cclient: Client) -> None:
    sandbox = sandbox_of(cclient)
    assert sandbox.sandbox.cache is not None
    honest_code, before = hello_c(secrets.token_hex(8), "honest"), entries(sandbox)
    await run(cclient, language="c", code=honest_code)
    (honest,) = entries(sandbox) - before
    before = entries(sandbox)
    await run(cclient, language="c", code=hello_c(secrets.token_hex(8), "POISONED"))
    (poison,) = entries(sandbox) - before
    # The attack: the honest key's file now holds the other program's build under the honest entry's hash line.
    honest.write_bytes(honest.read_bytes()[:HASH_LINE] + poison.read_bytes()[HASH_LINE:])
    corrupt, builds = sandbox.sandbox.cache.corrupt, sandbox.sandbox.builds
    job = await run(cclient, language="c", code=honest_code)
    assert job["stdout"] == "honest\n" and job["compileCached"] is False, job
    assert sandbox.sandbox.cache.corrupt == corrupt + 1 and sandbox.sandbox.builds == builds + 1
    # Rebuilt: the entry is whole again and the next run is a hit.
    job = await run(cclient, language="c", code=honest_code)
    assert job["stdout"] == "honest\n" and job["compileCached"] is True


async def test_a_truncated_entry_is_rebuilt(cclient: Client) -> None:
    sandbox = sandbox_of(cclient)
    code, before = hello_c(secrets.token_hex(8)), entries(sandbox)
    await run(cclient, language="c", code=code)
    (entry,) = entries(sandbox) - before
    entry.write_bytes(entry.read_bytes()[:-100])
    job = await run(cclient, language="c", code=code)
    assert job["stdout"] == "hello\n" and job["compileCached"] is False
    assert (await run(cclient, language="c", code=code))["compileCached"] is True


async def test_tests_compiled_once_share_the_cache(cclient: Client) -> None:
    sandbox = sandbox_of(cclient)
    code = (
        f"#include <stdio.h>\n/* {secrets.token_hex(8)} */\n"
        'int main(void) { int a, b; if (scanf("%d %d", &a, &b) != 2) return 3; printf("%d\\n", a + b); return 0; }\n'
    )
    tests = [{"stdin": "1 2", "expectedOutput": "3"}, {"stdin": "2 2", "expectedOutput": "4"}]
    first = await run(cclient, language="c", code=code, tests=tests)
    builds = sandbox.sandbox.builds
    second = await run(cclient, language="c", code=code, tests=tests)
    assert first["verdict"] == second["verdict"] == "accepted", second
    assert (first["compileCached"], second["compileCached"]) == (False, True) and sandbox.sandbox.builds == builds
    # A one-shot run of the same program finds the build the tests made.
    assert (await run(cclient, language="c", code=code, stdin="20 22"))["stdout"] == "42\n"


async def test_compile_errors_and_interpreted_languages_are_not_cached(cclient: Client) -> None:
    sandbox = sandbox_of(cclient)
    code, before, builds = "int main(void) { return missing; }\n", entries(sandbox), sandbox.sandbox.builds
    for _ in range(2):
        job = await run(cclient, language="c", code=code)
        assert job["reason"] == "compile_error" and job["compileCached"] is False and "missing" in job["compileOutput"]
    assert sandbox.sandbox.builds == builds + 2 and entries(sandbox) == before
    job = await run(cclient, language="python", code="print(6 * 7)")
    assert job["stdout"] == "42\n" and job["compileCached"] is False and entries(sandbox) == before


async def test_two_identical_jobs_at_once_leave_one_whole_entry(cclient: Client) -> None:
    sandbox = sandbox_of(cclient)
    assert sandbox.sandbox.cache is not None
    code, before, corrupt = hello_c(secrets.token_hex(8)), entries(sandbox), sandbox.sandbox.cache.corrupt
    jobs = await asyncio.gather(*(run(cclient, language="c", code=code) for _ in range(2)))
    assert [job["stdout"] for job in jobs] == ["hello\n"] * 2
    assert len(entries(sandbox) - before) == 1 and not list(sandbox.sandbox.cache.root.glob(".tmp-*"))
    assert (await run(cclient, language="c", code=code))["compileCached"] is True
    assert sandbox.sandbox.cache.corrupt == corrupt


async def test_cache_status_and_metrics_count_hits_and_misses(cclient: Client) -> None:
    code = hello_c(secrets.token_hex(8))
    before = (await call(cclient, "GET", "/cache/status", 200))["builds"]
    await run(cclient, language="c", code=code)
    await run(cclient, language="c", code=code)
    after = (await call(cclient, "GET", "/cache/status", 200))["builds"]
    assert after["enabled"] is True and after["maxBytes"] == 64 << 20
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (1, 1)
    assert after["entries"] == before["entries"] + 1 and after["bytes"] > before["bytes"]
    text = await (await cclient.get("/metrics")).text()
    assert f"conveyor_build_cache_hits_total {float(after['hits'])}" in text
    assert f"conveyor_build_cache_entries {float(after['entries'])}" in text


async def test_cache_status_when_the_cache_is_off(client: Client) -> None:
    status = await call(client, "GET", "/cache/status", 200)
    assert status["builds"]["enabled"] is False and status["builds"]["entries"] == 0


# -- the store itself ----------------------------------------------------------------------------------------------


def build(size: int, seed: bytes = b"x") -> CachedBuild:
    return CachedBuild(compile_output=b"warning: " + seed, artifact=(seed * size)[:size])


def test_the_bound_evicts_the_least_recently_used(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path, max_bytes=3500)
    for name in "abc":
        assert cache.put(name, build(1000, name.encode()))
    assert cache.get("a") is not None  # now b is the least recently used
    assert cache.put("d", build(1000, b"d"))
    assert cache.get("b") is None and cache.evictions == 1
    assert [cache.get(name) is not None for name in "acd"] == [True, True, True]
    stats = cache.stats()
    assert stats["entries"] == 3 and stats["bytes"] <= 3500 and stats["evictions"] == 1
    # A build larger than the whole bound is not stored (and evicts nothing).
    assert not cache.put("huge", build(4000)) and cache.stats()["entries"] == 3


def test_entries_round_trip_and_any_flipped_byte_is_caught(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path, max_bytes=1 << 20)
    original = build(5000, b"tar!")
    cache.put("k", original)
    assert cache.get("k") == original
    (path,) = tmp_path.rglob(f"k{SUFFIX}")
    data = bytearray(path.read_bytes())
    for offset in (0, HASH_LINE + 3, len(data) // 2, len(data) - 1):
        cache.put("k", original)
        flipped = bytearray(data)
        flipped[offset] ^= 0x01
        path.write_bytes(bytes(flipped))
        assert cache.get("k") is None and not path.exists()
    assert cache.corrupt == 4


def test_the_key_covers_every_input() -> None:
    base: dict[str, Any] = {
        "language": "c",
        "version": "12.2.0",
        "compile_argv": ["gcc", "-O2", "main.c"],
        "env": {},
        "files": [("main.c", b"int main;")],
    }
    key = build_key(**base)
    changes: list[dict[str, Any]] = [
        {"language": "cpp"},
        {"version": "12.2.1"},
        {"compile_argv": ["gcc", "-O3", "main.c"]},
        {"env": {"X": "1"}},
        {"files": [("main.c", b"int main; ")]},
        {"files": [("other.c", b"int main;")]},
        {"files": [("main.c", b"int main;"), ("a.h", b"")]},
    ]
    assert len({key, *(build_key(**{**base, **change}) for change in changes)}) == len(changes) + 1
    assert build_key(**base) == key


def test_cache_clear_command(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "builds", max_bytes=1 << 20)
    for name in "ab":
        cache.put(name, build(100))
    (cache.root / ".tmp-crashed").write_bytes(b"half")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CACHE_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "server", "cache", "clear"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "removed 2 cached builds" in proc.stdout, proc.stderr
    assert list(cache.root.iterdir()) == []
    proc = subprocess.run(
        [sys.executable, "-m", "server", "cache", "nonsense"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "usage" in proc.stderr


async def test_a_build_is_reused_for_its_owner_only(cclient: Client) -> None:
    # The attack: compile a guess and read `compileCached`. A cached build of another owner answered True, an oracle
    # for "someone compiled exactly this" (a classmate's solution, a leaked exam answer).
    code = hello_c(secrets.token_hex(8))
    victim, attacker = ({"X-Owner-Token": secrets.token_urlsafe(32)} for _ in range(2))
    first = await call(cclient, "POST", "/run", 200, json={"language": "c", "code": code}, headers=victim)
    assert first["compileCached"] is False
    guess = await call(cclient, "POST", "/run", 200, json={"language": "c", "code": code}, headers=attacker)
    assert guess["compileCached"] is False and guess["stdout"] == "hello\n"
    again = await call(cclient, "POST", "/run", 200, json={"language": "c", "code": code}, headers=victim)
    assert again["compileCached"] is True  # the owner's own builds are still reused


def test_one_owner_cannot_flush_everyone_elses_builds(tmp_path: Path) -> None:
    # 33 builds of 15 MB flushed the whole cache for everyone; now the largest holder loses its own oldest first.
    cache = BuildCache(tmp_path, max_bytes=3500)
    assert cache.put("mine", build(1000, b"m"), owner="anon:victim")
    for i in range(8):
        assert cache.put(f"flood{i}", build(1000, str(i).encode()), owner="anon:flooder")
    assert cache.get("mine", owner="anon:victim") is not None
    assert [cache.get(f"flood{i}", owner="anon:flooder") is not None for i in range(8)] == [False] * 6 + [True] * 2
    assert cache.stats()["bytes"] <= 3500
    assert cache.get("mine", owner="anon:flooder") is None  # and keys are per owner
