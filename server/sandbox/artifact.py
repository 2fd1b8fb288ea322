"""Artifact: a build's work dir as plain files (each with its mode) and directories, read once from the tar its pack
stage wrote, so that a run of the build is handed them like a job's own files and needs no unpack stage."""

from __future__ import annotations

import io
import stat
import tarfile
from dataclasses import dataclass
from typing import NamedTuple

# The warm driver's bound on a job message's lists (conveyor-run.c COUNT_MAX): a build past it is refused here,
# where the reason can be logged, rather than by the driver.
MAX_ENTRIES = 65536
# Names the sandbox itself uses at the top of the work dir (the pack stage leaves tmp/ out; doors/sources refuses
# them in a submission too).
RESERVED = frozenset({"tmp"})
SOURCE_MODE = 0o666  # a submitted file's mode (bwrap --file's default, and the warm driver's)


class WorkFile(NamedTuple):
    """One file written into a sandbox's work dir before its program runs: path relative to it, content, mode."""

    name: str
    content: bytes
    mode: int = SOURCE_MODE


@dataclass(frozen=True, slots=True)
class Artifact:
    """A compiled work dir: its files (modes kept: the executable stays executable) and directories, empty ones
    included, parents first."""

    files: tuple[WorkFile, ...]
    dirs: tuple[str, ...] = ()


class ArtifactRefused(ValueError):
    """The tar holds something other than regular files and directories inside the work dir."""


def unpack(tar: bytes) -> Artifact:
    """The files and directories of a packed work dir. Parsed on the host, so every member is checked before it is
    used: only regular files and directories, each under a relative name without `.`, `..` or empty parts (no
    absolute path, no way out of the work dir), no links of either kind (a symlink could point anywhere, and nothing
    the toolchains make needs one), no device, fifo or sparse file, each name once. Its size is what the pack stage
    could write (the build's output cap), and the content is read from the bytes in memory, so nothing here grows
    past the tar. Blocks on CPU in proportion to the tar: call it from a thread."""
    files: list[WorkFile] = []
    dirs: list[str] = []
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
            for member in archive:
                name = _name(member.name)
                if name is None:
                    continue  # the work dir itself
                if name in seen or len(seen) >= MAX_ENTRIES:
                    raise ArtifactRefused(f"{name!r} is listed twice, or the build has more than {MAX_ENTRIES} entries")
                seen.add(name)
                if member.isdir():
                    dirs.append(name)
                elif member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not member.issparse():
                    content = archive.extractfile(member)
                    assert content is not None, "a regular member has content"
                    files.append(WorkFile(name, content.read(), stat.S_IMODE(member.mode) & 0o777))
                else:
                    raise ArtifactRefused(f"{name!r} is not a regular file or a directory")
    except tarfile.TarError as exc:
        raise ArtifactRefused(f"not a tar: {exc}") from None
    _check_layout(files, dirs)
    return Artifact(files=tuple(files), dirs=tuple(sorted(dirs, key=lambda d: (d.count("/"), d))))


def _name(raw: str) -> str | None:
    """A member's name relative to the work dir (tar writes `./main`), None for the work dir itself."""
    name = raw.removeprefix("./").removesuffix("/")
    if name in ("", "."):
        return None
    parts = name.split("/")
    if raw.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\0" in name:
        raise ArtifactRefused(f"{raw!r} is not a relative path inside the work dir")
    if parts[0] in RESERVED:
        raise ArtifactRefused(f"{raw!r} is a name the sandbox keeps for itself")
    return name


def _check_layout(files: list[WorkFile], dirs: list[str]) -> None:
    """Every file's parents are directories, not files: `a` a file and `a/b` would need `a` to be both."""
    names = {f.name for f in files}
    for path in [f.name for f in files] + dirs:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in names:
                raise ArtifactRefused(f"{path!r} needs {parts[depth - 1]!r} to be a directory")
