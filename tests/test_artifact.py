"""Artifact: a build reaches its sandbox as plain files (modes kept) and directories, warm or cold, and a tar member
that is not a regular file or directory inside the work dir is never given to one.

The user's path first (C, C++, Java in a package and Rust through POST /run, twice: the second is a cache hit with
the same output), then a crafted cache entry (its content hash valid, as a build that made a link would leave it),
then unpack() itself.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.judging.executor import Judge
from server.queue.jobs import Job, JobIO
from server.sandbox.artifact import MAX_ENTRIES, Artifact, ArtifactRefused, WorkFile, unpack
from server.sandbox.buildcache import CachedBuild, _decode, _encode
from server.sandbox.spec import RunSpec
from tests.clients import Client, call
from tests.conftest import make_settings
from tests.test_buildcache import entries, run
from tests.test_buildcache import sandbox_of as judge_of

LANGUAGES = ("c", "cpp", "java", "rust")
# Prints its work dir as the program finds it: its own mode, its source's, and what a crafted build may add.
PORTRAIT_C = r"""#include <stdio.h>
#include <sys/stat.h>
/* %s */
static void show(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) { printf("%%s missing\n", path); return; }
    printf("%%s %%s %%o\n", path, S_ISDIR(st.st_mode) ? "dir" : "file", st.st_mode & 07777);
}
int main(void) {
    show("main"); show("main.c"); show("empty"); show("sub"); show("sub/deep"); show("sub/deep/data.txt");
    FILE *f = fopen("sub/deep/data.txt", "r");
    char line[64];
    if (f != NULL && fgets(line, sizeof line, f) != NULL) printf("data %%s", line);
    return 0;
}
"""
JAVA_MAIN = (
    'public class Main {{ public static void main(String[] a) {{ System.out.println(Greeter.greet("{m}")); }} }}\n'
)
JAVA_GREETER = 'public class Greeter {{ public static String greet(String m) {{ return "java " + m; }} }}\n'
HELLOS = {
    "cpp": [("main.cpp", '#include <iostream>\n// {m}\nint main() {{ std::cout << "cpp {m}" << std::endl; }}\n')],
    "rust": [("main.rs", 'fn main() {{ println!("rust {m}"); }}\n')],
    "java": [
        ("Main.java", "import app.util.Greeter;\n" + JAVA_MAIN),
        ("app/util/Greeter.java", "package app.util;\n" + JAVA_GREETER),
    ],
}


@pytest.fixture(scope="module", params=["warm", "cold"])
def judge(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Judge]:
    """A real sandbox with the build cache on: a warm pool (a cache hit is written by conveyor-run wait), or none
    (by bwrap)."""
    settings = make_settings(
        cache_dir=str(tmp_path_factory.mktemp("cache")), cache_max_mb=64, warm_pool=4 if request.param == "warm" else 0
    )
    runner = asyncio.run(Judge.create(settings, languages=LANGUAGES))
    yield runner
    asyncio.run(runner.close())


@pytest.fixture
async def client(aiohttp_client: Any, judge: Judge) -> AsyncIterator[Client]:
    test_client: TestClient[web.Request, web.Application] = await aiohttp_client(
        create_app(make_settings(cache_max_mb=64), runner=judge)
    )
    yield test_client


async def rerun(client: Client, **body: Any) -> Any:
    """The job again, after a run that left its build in the cache. With a warm pool, in a warm sandbox (waited for):
    the files are then written by the warm driver; without one, by bwrap."""
    pool = judge_of(client).sandbox.pool
    if pool is None:
        return await run(client, **body)
    for _ in range(500):
        if pool.stats()["languages"].get(body["language"], {}).get("ready", 0) > 0:
            break
        await asyncio.sleep(0.02)
    hits = pool.stats()["hits"]
    job = await run(client, **body)
    assert pool.stats()["hits"] == hits + 1, "the cache hit did not run in a warm sandbox"
    return job


async def twice(client: Client, **body: Any) -> tuple[Any, Any]:
    """The job, then the same job again: the second takes the first's build from the cache."""
    first = await run(client, **body)
    second = await rerun(client, **body)
    assert first["compileCached"] is False and second["compileCached"] is True, (first, second)
    return first, second


async def test_a_cached_c_build_runs_with_its_files_as_a_compile_in_place_leaves_them(client: Client) -> None:
    """The executable keeps its mode, the source its own; the run from the cache sees what the compiled run saw."""
    code = PORTRAIT_C % secrets.token_hex(8)
    first, second = await twice(client, language="c", code=code)
    assert first["status"] == second["status"] == "completed", (first, second)
    assert second["stdout"] == first["stdout"]
    lines = second["stdout"].splitlines()
    assert lines[:3] == ["main file 755", "main.c file 666", "empty missing"], second["stdout"]


@pytest.mark.parametrize("language", sorted(HELLOS))
async def test_a_cached_build_runs_the_same_program(client: Client, language: str) -> None:
    """C++ and Rust binaries, and Java classes in a package directory (app/util/Greeter.class)."""
    marker = secrets.token_hex(8)
    files = [{"name": name, "content": text.format(m=marker)} for name, text in HELLOS[language]]
    first, second = await twice(client, language=language, files=files)
    assert first["stdout"] == second["stdout"] == f"{language} {marker}\n", (first, second)
    assert second["status"] == "completed" and second["compileOutput"] == first["compileOutput"]


def tar_of(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, content in members:
            info.size = len(content) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return out.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    return info


def members_of(tar: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    found = []
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for info in archive:
            content = archive.extractfile(info) if info.isreg() else None
            found.append((info, content.read() if content is not None else b""))
    return found


async def crafted(client: Client, code: str, extra: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """Build `code` once, then rewrite its cache entry: its tar with `extra` members added, under a valid content
    hash (as a build that left them would have stored it). Returns the entry's path."""
    judge = judge_of(client)
    before = entries(judge)
    assert (await run(client, language="c", code=code))["compileCached"] is False
    (path,) = entries(judge) - before
    stored = _decode(path.read_bytes())
    assert stored is not None
    tar = tar_of(members_of(stored.artifact) + extra)
    path.write_bytes(_encode(CachedBuild(compile_output=stored.compile_output, artifact=tar)))
    return path


async def test_a_cache_hit_brings_directories_empty_ones_too_and_file_modes(client: Client) -> None:
    code = PORTRAIT_C % secrets.token_hex(8)
    extra = [
        (member("./empty", tarfile.DIRTYPE, 0o700), b""),
        (member("./sub", tarfile.DIRTYPE, 0o755), b""),
        (member("./sub/deep", tarfile.DIRTYPE, 0o755), b""),
        (member("./sub/deep/data.txt", mode=0o640), b"crafted\n"),
    ]
    await crafted(client, code, extra)
    second = await rerun(client, language="c", code=code)
    assert second["compileCached"] is True, second
    # Directories as bwrap --dir makes them (0755), files with their own mode.
    assert second["stdout"].splitlines()[2:] == [
        "empty dir 755",
        "sub dir 755",
        "sub/deep dir 755",
        "sub/deep/data.txt file 640",
        "data crafted",
    ], second["stdout"]


HOSTILE = {
    "a path out of the work dir": [(member("../escape"), b"x")],
    "an absolute path": [(member("/tmp/escape"), b"x")],
    "a symbolic link out": [(member("./link", tarfile.SYMTYPE, link="/etc/shadow"), b"")],
    "a symbolic link in": [(member("./link", tarfile.SYMTYPE, link="main"), b"")],
    "a hard link": [(member("./hard", tarfile.LNKTYPE, link="./main"), b"")],
    "a device": [(member("./dev", tarfile.CHRTYPE), b"")],
    "a fifo": [(member("./fifo", tarfile.FIFOTYPE), b"")],
    "a file named twice": [(member("./main", mode=0o755), b"#!/bin/sh\necho replaced\n")],
    "the sandbox's tmp": [(member("./tmp/x"), b"x")],
}
# Why unpack() refuses each (its message), so that a refusal for another reason does not pass for this one.
REASONS = {
    "a path out of the work dir": "relative path inside",
    "an absolute path": "relative path inside",
    "a file named twice": "listed twice",
    "the sandbox's tmp": "keeps for itself",
}


@pytest.mark.parametrize("name", HOSTILE)
async def test_a_cached_build_with_a_member_no_sandbox_is_given_is_rebuilt_never_run(client: Client, name: str) -> None:
    """The entry passes its content check, but its tar holds something other than regular files and directories
    inside the work dir: deleted, counted corrupt, rebuilt from the source (the honest program runs), and the next
    run is a hit again."""
    judge = judge_of(client)
    assert judge.sandbox.cache is not None
    code = PORTRAIT_C % secrets.token_hex(8)
    path = await crafted(client, code, HOSTILE[name])
    corrupt, builds = judge.sandbox.cache.corrupt, judge.sandbox.builds
    job = await run(client, language="c", code=code)
    assert job["status"] == "completed" and job["compileCached"] is False, job
    assert job["stdout"].splitlines()[:2] == ["main file 755", "main.c file 666"], job["stdout"]
    assert judge.sandbox.cache.corrupt == corrupt + 1 and judge.sandbox.builds == builds + 1
    stored = _decode(path.read_bytes())  # rebuilt: the honest build again
    assert stored is not None and sorted(info.name for info, _ in members_of(stored.artifact)) == [
        ".",
        "./main",
        "./main.c",
    ]
    assert (await run(client, language="c", code=code))["compileCached"] is True


def pax_header(payload: bytes) -> bytes:
    """A pax extended header (kind `x`) carrying `payload`, as its blocks in a tar."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(payload)
    return info.tobuf(tarfile.USTAR_FORMAT) + payload + bytes(-len(payload) % 512)


# 100 KB of digits: CPython's tarfile before 3.11.10 parses it with a regular expression that backtracks
# quadratically (CVE-2024-6232): 16.8 s on this host's 3.11.7 (at load 12), holding the GIL (the event loop with it).
SLOW_PAX = pax_header(b"1" * 100_000)


async def test_a_cached_build_with_a_pax_header_is_refused_before_it_is_parsed_while_the_server_answers(
    client: Client,
) -> None:
    """The entry's tar begins with a pathological pax header (under a valid content hash): refused by its kind before
    tarfile reads it, counted corrupt and rebuilt, while a request made at the same time is answered."""
    judge = judge_of(client)
    assert judge.sandbox.cache is not None
    code = PORTRAIT_C % secrets.token_hex(8)
    path = await crafted(client, code, [])
    stored = _decode(path.read_bytes())
    assert stored is not None
    path.write_bytes(_encode(CachedBuild(compile_output=stored.compile_output, artifact=SLOW_PAX + stored.artifact)))
    corrupt = judge.sandbox.cache.corrupt
    job, health = await asyncio.gather(run(client, language="c", code=code), call(client, "GET", "/health", 200))
    assert job["status"] == "completed" and job["compileCached"] is False, job
    assert judge.sandbox.cache.corrupt == corrupt + 1 and health["status"] == "ok", health


# -- unpack() itself -----------------------------------------------------------------------------------------------


def test_unpack_keeps_modes_and_directories_and_drops_the_work_dir_itself() -> None:
    tar = tar_of(
        [
            (member(".", tarfile.DIRTYPE, 0o755), b""),
            (member("./main", mode=0o4755), b"\x7fELF"),
            (member("./pkg", tarfile.DIRTYPE), b""),
            (member("./pkg/A.class", mode=0o600), b"cafe"),
            (member("./pkg/empty/", tarfile.DIRTYPE), b""),
        ]
    )
    # The set-uid bit is dropped (nothing in a sandbox may carry it); directories parents first.
    assert unpack(tar) == Artifact(
        files=(WorkFile("main", b"\x7fELF", 0o755), WorkFile("pkg/A.class", b"cafe", 0o600)),
        dirs=("pkg", "pkg/empty"),
    )


@pytest.mark.parametrize("name", HOSTILE)
def test_unpack_refuses(name: str) -> None:
    honest = [(member("./main", mode=0o755), b"\x7fELF")]
    with pytest.raises(ArtifactRefused, match=REASONS.get(name, "not a regular file or a directory")):
        unpack(tar_of(honest + HOSTILE[name]))


def test_unpack_refuses_a_file_where_a_directory_must_be_and_what_is_not_a_tar() -> None:
    with pytest.raises(ArtifactRefused, match="directory"):
        unpack(tar_of([(member("./a"), b"x"), (member("./a/b"), b"y")]))
    with pytest.raises(ArtifactRefused, match="not a tar"):
        unpack(b"\x00garbage" * 100)
    whole = tar_of([(member("./main"), b"x" * 4096)])
    with pytest.raises(ArtifactRefused):
        unpack(whole[:1024])  # cut inside the file's content


def test_unpack_refuses_every_header_kind_but_files_directories_and_long_names_before_parsing() -> None:
    honest = tar_of([(member("./main", mode=0o755), b"\x7fELF")])
    with pytest.raises(ArtifactRefused, match="kind b'x': not a regular file"):
        unpack(SLOW_PAX + honest)
    with pytest.raises(ArtifactRefused, match="kind b'g': not a regular file"):
        unpack(_global_header() + honest)
    long_dir = "./" + "d" * 150  # GNU's long-name headers (kind L), as the pack stage writes them
    long_tar = tar_of([(member(long_dir, tarfile.DIRTYPE), b""), (member(f"{long_dir}/main"), b"x")])
    assert [f.name for f in unpack(long_tar).files] == [f"{long_dir[2:]}/main"]
    base256 = bytearray(honest)
    base256[124:136] = b"\x80" + bytes(10) + b"\x01"  # GNU's binary size: refused, not read
    base256[148:156] = b"%06o\0 " % (sum(base256[:148]) + 8 * 32 + sum(base256[156:512]))
    with pytest.raises(ArtifactRefused, match="octal"):
        unpack(bytes(base256))


def _global_header() -> bytes:
    info = tarfile.TarInfo("pax_global_header")
    info.type = tarfile.XGLTYPE
    return info.tobuf(tarfile.USTAR_FORMAT)


def test_unpack_refuses_more_entries_than_the_warm_driver_takes() -> None:
    dirs = [(member(f"./d{i}", tarfile.DIRTYPE), b"") for i in range(MAX_ENTRIES + 1)]
    with pytest.raises(ArtifactRefused, match="entries"):
        unpack(tar_of(dirs))
    assert len(unpack(tar_of(dirs[:MAX_ENTRIES])).dirs) == MAX_ENTRIES


async def test_a_bubblewrap_without_perms_still_gives_a_builds_files_their_modes(tmp_path: Path) -> None:
    """bwrap older than 0.5 has no --perms: a cold sandbox's files are all 0666, and a build's program would not be
    executable. Here a real bwrap is told to be such a one (its --help without --perms): the run of the build sets
    its files' modes in a stage of its own first, and the program runs with the modes a compile in place leaves."""
    settings = make_settings(cache_dir=str(tmp_path), cache_max_mb=64, warm_pool=0)
    runner = await Judge.create(settings, languages=("c",))
    try:
        sandbox = runner.sandbox
        sandbox._bwrap_help = sandbox._bwrap_help.replace("--perms", "--no-perms-here")
        sandbox._host, sandbox._specs = sandbox._current_host(), sandbox._current_specs()
        code = PORTRAIT_C % secrets.token_hex(8)
        for _ in range(2):  # compiled and run, then from the cache
            result = await runner(Job(language="c", code=code), JobIO(on_output=lambda stream, text: None))
            assert result.exit_code == 0, result
            assert result.stdout.splitlines()[:2] == ["main file 755", "main.c file 666"], result.stdout
        assert sandbox.cache is not None and sandbox.cache.hits == 1
    finally:
        await runner.close()


def raw_header(name: bytes, kind: bytes, size: int) -> bytes:
    """One tar header block, as written, whatever it says (a valid checksum)."""
    block = bytearray(512)
    block[: len(name)] = name
    block[100:108], block[124:136], block[156:157], block[257:265] = b"0000755\0", b"%011o\0" % size, kind, b"ustar  \0"
    block[148:156] = b"%06o\0 " % (sum(block[:148]) + 8 * 32 + sum(block[156:]))
    return bytes(block)


def test_unpack_refuses_headers_hidden_in_a_directorys_data() -> None:
    """tarfile skips no data after a directory's header: one that claims some would hide the headers in it from the
    walk (here the pathological pax header and a symbolic link), and tarfile would then read them."""
    for hidden in (SLOW_PAX + raw_header(b"./evil", b"0", 0), raw_header(b"./link", b"2", 0)):
        for directory in (raw_header(b"./d/", b"5", len(hidden)), raw_header(b"./d/", b"\0", len(hidden))):
            with pytest.raises(ArtifactRefused, match="a directory with content"):
                unpack(directory + hidden + bytes(1024))


def test_unpack_refuses_long_names_in_a_row_and_past_the_longest_name() -> None:
    """tarfile reads the member after a GNU long name by recursion: a chain of them raised RecursionError, which the
    build cache did not take for a refused entry."""
    chain = b"".join(raw_header(b"././@LongLink", b"L", 0) for _ in range(2000)) + raw_header(b"./f", b"0", 0)
    with pytest.raises(ArtifactRefused, match="two in a row"):
        unpack(chain + bytes(1024))
    with pytest.raises(ArtifactRefused, match="past the longest name taken"):
        unpack(tar_of([(member("./" + "n" * 4097), b"x")]))


def test_unpack_takes_a_deep_tree_and_a_run_gets_its_directories() -> None:
    """A tree 1,500 directories deep (names up to 3,000 bytes), as GNU tar packs it, parents first. Each entry's
    check and each directory a run needs are found once: a prefix of every path at every depth was cubic in the
    depth (a 2,000-deep tree took 11 s to unpack and 11 s more to list, each holding the GIL)."""
    paths = ["/".join(["d"] * depth) for depth in range(1, 1501)]
    tar = tar_of([(member(f"./{path}", tarfile.DIRTYPE), b"") for path in paths] + [(member(f"./{paths[-1]}/f"), b"x")])
    artifact = unpack(tar)
    assert artifact.dirs == tuple(paths) and artifact.files == (WorkFile(f"{paths[-1]}/f", b"x", 0o644),)
    spec = RunSpec(name="deep", run=("true",), files=artifact.files, dirs=artifact.dirs)
    assert spec.directories == paths
    with pytest.raises(ArtifactRefused, match="to be a directory of the build"):
        unpack(tar_of([(member("./a/b"), b"x")]))  # its directory not packed
