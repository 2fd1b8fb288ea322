"""Build cache: compiled work dirs on the host's disk, keyed by everything that decides them, verified on read."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..settings import Settings
from .artifact import Artifact, ArtifactRefused, unpack

logger = logging.getLogger(__name__)

SUFFIX = ".build"
# An entry is one file: the sha256 of the rest (64 hex digits and a newline), the compiler's output length (8 bytes,
# big-endian), the compiler's output, and the packed work dir. One file, so one atomic rename publishes it whole.
HASH_LINE = 65
LENGTH_BYTES = 8
# Bumped when the entry format or the way builds are made changes: old entries then simply miss.
FORMAT = 1
# What stats() reports besides `enabled`.
BUILD_COUNTERS = ("hits", "misses", "evictions", "corrupt", "entries", "bytes", "maxBytes")


@dataclass(slots=True)
class CachedBuild:
    """A successful compile: what the compiler printed and the packed work dir (a tar) it left."""

    compile_output: bytes
    artifact: bytes


def build_key(
    *,
    language: str,
    version: str,
    compile_argv: Iterable[str],
    env: Mapping[str, str],
    files: Iterable[tuple[str, bytes]],
    owner: str = "",
) -> str:
    """The cache key: sha256 over the language, its toolchain version, the compile command as templated (options,
    heap size and file names included), the language's environment, every file's name and content, and the job's
    owner: a build is reused for its owner only, so `compileCached` never tells anyone what another compiled."""
    parts = {
        "format": FORMAT,
        "owner": owner,
        "language": language,
        "version": version,
        "compile": list(compile_argv),
        "env": sorted(env.items()),
        "files": sorted((name, hashlib.sha256(content).hexdigest()) for name, content in files),
    }
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()


def builds_dir(settings: Settings) -> Path:
    """Where the server keeps its builds: `builds/` under CACHE_DIR."""
    return settings.cache_path / "builds"


class BuildCache:
    """Builds by key, one directory per owner, at most `max_bytes` of them in all. Past the bound the owner holding
    the most bytes loses its least recently used build first: one owner's many large builds cannot flush everyone
    else's.

    Every read checks the entry's content hash: a corrupt or tampered entry is deleted and reported as a miss, so it
    is rebuilt and never run. Writes go to a temp file renamed into place, so two identical jobs finishing at once
    leave one whole entry. Methods block on disk I/O: call them from a thread (asyncio.to_thread).
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = self.corrupt = 0
        self._clock = 0.0

    def get(self, key: str, owner: str = "") -> CachedBuild | None:
        """The build stored under `key` for `owner`, or None (missing, or failed its check and now deleted)."""
        path = self._path(key, owner)
        try:
            data = path.read_bytes()
        except OSError:
            self._count(hit=False)
            return None
        build = _decode(data)
        if build is None:
            logger.warning("build cache: entry %s failed its content check; deleted, it will be rebuilt", key)
            path.unlink(missing_ok=True)
            with self._lock:
                self.corrupt += 1
            self._count(hit=False)
            return None
        self._touch(path)
        self._count(hit=True)
        return build

    def files(self, key: str, owner: str = "") -> tuple[CachedBuild, Artifact] | None:
        """get(), with the build's tar read into the files a sandbox is given (artifact.unpack). An entry that passed
        its content check but holds what no sandbox is given (a link, a path out of the work dir) is deleted and
        counted like a corrupt one, and missed: it is rebuilt, never run."""
        build = self.get(key, owner)
        if build is None:
            return None
        try:
            return build, unpack(build.artifact)
        except ArtifactRefused as exc:
            logger.warning("build cache: entry %s refused (%s); deleted, it will be rebuilt", key, exc)
            self._path(key, owner).unlink(missing_ok=True)
            with self._lock:
                self.hits, self.misses, self.corrupt = self.hits - 1, self.misses + 1, self.corrupt + 1
            return None

    def put(self, key: str, build: CachedBuild, owner: str = "") -> bool:
        """Store a build for `owner`, then evict past the bound (the largest holder's least recently used first);
        False when it alone is too large."""
        data = _encode(build)
        if len(data) > self.max_bytes:
            return False
        path = self._path(key, owner)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        self._touch(path)
        self._evict(keep=path)
        return True

    def clear(self) -> int:
        """Delete every entry (and temp files left by a crash); returns how many entries there were."""
        removed = 0
        for path in self._files(temp=True):
            path.unlink(missing_ok=True)
            removed += path.suffix == SUFFIX
        for directory in self._owner_dirs():
            with contextlib.suppress(OSError):  # not empty: something else was put there meanwhile
                directory.rmdir()
        return removed

    def stats(self) -> dict[str, Any]:
        """Counters since start-up, and what is on disk now."""
        sizes = [size for _, size, _ in self._entries()]
        return {
            "enabled": self.max_bytes > 0,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "corrupt": self.corrupt,
            "entries": len(sizes),
            "bytes": sum(sizes),
            "maxBytes": self.max_bytes,
        }

    def _touch(self, path: Path) -> None:
        """Mark an entry used now: its mtime orders eviction. Set explicitly and strictly increasing, because file
        systems stamp with a coarse clock and two uses within one tick would otherwise tie."""
        with self._lock:
            self._clock = max(time.time(), self._clock + 0.001)
            stamp = self._clock
        try:
            os.utime(path, (stamp, stamp))
        except OSError:
            pass  # evicted or cleared meanwhile: the bytes already read were whole and checked

    def _count(self, *, hit: bool) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def _path(self, key: str, owner: str) -> Path:
        return self.root / hashlib.sha256(owner.encode()).hexdigest()[:16] / f"{key}{SUFFIX}"

    def _files(self, *, temp: bool = False) -> list[Path]:
        found = []
        for directory in [self.root, *self._owner_dirs()]:
            try:
                names = os.listdir(directory)
            except (FileNotFoundError, NotADirectoryError):
                continue
            found += [directory / n for n in names if n.endswith(SUFFIX) or (temp and n.startswith(".tmp-"))]
        return found

    def _owner_dirs(self) -> list[Path]:
        try:
            return [entry for entry in self.root.iterdir() if entry.is_dir()]
        except FileNotFoundError:
            return []

    def _entries(self) -> list[tuple[float, int, Path]]:
        entries = []
        for path in self._files():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # evicted or cleared meanwhile
            entries.append((st.st_mtime, st.st_size, path))
        return entries

    def _evict(self, *, keep: Path) -> None:
        held: dict[Path, list[tuple[float, int, Path]]] = {}
        for entry in sorted(self._entries()):  # oldest first within each owner
            if entry[2] != keep:
                held.setdefault(entry[2].parent, []).append(entry)
        total = sum(size for _, size, _ in self._entries())
        while total > self.max_bytes and held:
            owner = max(held, key=lambda d: sum(size for _, size, _ in held[d]))
            _, size, path = held[owner].pop(0)
            if not held[owner]:
                del held[owner]
            path.unlink(missing_ok=True)
            total -= size
            with self._lock:
                self.evictions += 1


def _encode(build: CachedBuild) -> bytes:
    body = len(build.compile_output).to_bytes(LENGTH_BYTES, "big") + build.compile_output + build.artifact
    return hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def _decode(data: bytes) -> CachedBuild | None:
    digest, body = data[: HASH_LINE - 1], data[HASH_LINE:]
    if len(data) < HASH_LINE + LENGTH_BYTES or data[HASH_LINE - 1 : HASH_LINE] != b"\n":
        return None
    if hashlib.sha256(body).hexdigest().encode() != digest:
        return None
    length = int.from_bytes(body[:LENGTH_BYTES], "big")
    if LENGTH_BYTES + length > len(body):
        return None
    return CachedBuild(
        compile_output=body[LENGTH_BYTES : LENGTH_BYTES + length], artifact=body[LENGTH_BYTES + length :]
    )
