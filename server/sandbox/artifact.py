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

# The header kinds tarfile is let parse: a regular file, a directory, and GNU's long name (the pack stage's GNU tar
# writes these). Every other kind is refused before tarfile reads the tar (_plain_headers).
BLOCK = 512
PLAIN_KINDS = frozenset((b"0", b"\0", b"5", b"L"))
# The longest name taken (Linux's PATH_MAX): a bound on each path's depth too, so that nothing per path grows past it.
MAX_NAME = 4096


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
    _plain_headers(tar)
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
    except ArtifactRefused:
        raise
    except Exception as exc:  # tarfile's own (TarError, EOFError, ...): whatever it is, the build is not taken
        raise ArtifactRefused(f"not a tar: {exc!r}") from None
    _check_layout(files, dirs)
    return Artifact(files=tuple(files), dirs=tuple(sorted(dirs, key=lambda d: (d.count("/"), d))))


def _plain_headers(tar: bytes) -> None:
    """Walks the tar's headers (a slice and an octal size each: linear in the number of members) and refuses any kind
    but PLAIN_KINDS, before tarfile parses it. Written by hand because the library cannot be trusted with a pax header
    on this Python: CPython's tarfile before 3.11.10 parses one with a regular expression that backtracks
    quadratically (CVE-2024-6232; measured here on 3.11.7: 100 KB of digits, 16.8 s holding the GIL, so 1 MB would
    stall the event loop for about half an hour), and older ones loop on a negative offset (CVE-2025-8194). The
    pack stage's GNU tar never writes either, so a build gives nothing up."""
    offset, long_name = 0, False
    while offset + BLOCK <= len(tar):
        header = tar[offset : offset + BLOCK]
        if not header.strip(b"\0"):
            return  # the end-of-archive blocks
        kind, size, check = header[156:157], _octal(header[124:136]), _octal(header[148:156])
        if check is None or check != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise ArtifactRefused("not a tar: a header's checksum does not match")
        if kind not in PLAIN_KINDS:
            raise ArtifactRefused(f"a member of kind {kind!r}: not a regular file or a directory")
        if size is None:
            raise ArtifactRefused(f"a tar header's size is not an octal number: {header[124:136]!r}")
        # tarfile skips the data of regular files and long names only: a directory's size must be 0, or headers hidden
        # in its "data" would reach tarfile unwalked (an old-style file whose name ends in / is a directory to it).
        if size and (kind == b"5" or (kind == b"\0" and header[:100].split(b"\0", 1)[0].endswith(b"/"))):
            raise ArtifactRefused("a directory with content")
        # tarfile reads the member after a long name by recursion: one long name each, and at most MAX_NAME.
        if kind == b"L" and (long_name or size > MAX_NAME + 1):
            raise ArtifactRefused("a GNU long name past the longest name taken, or two in a row")
        long_name = kind == b"L"
        offset += BLOCK + -(-size // BLOCK) * BLOCK


def _octal(field: bytes) -> int | None:
    """A header's number: octal digits, space or NUL padded (None for anything else, GNU's base-256 among them)."""
    digits = field.rstrip(b"\0 ").lstrip(b" ")
    if not digits.isdigit() or b"8" in digits or b"9" in digits:
        return None
    return int(digits, 8)


def _name(raw: str) -> str | None:
    """A member's name relative to the work dir (tar writes `./main`), None for the work dir itself."""
    name = raw.removeprefix("./").removesuffix("/")
    if name in ("", "."):
        return None
    if len(name.encode()) > MAX_NAME:
        raise ArtifactRefused(f"a name longer than {MAX_NAME} bytes: {raw[:64]!r}...")
    parts = name.split("/")
    if raw.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\0" in name:
        raise ArtifactRefused(f"{raw!r} is not a relative path inside the work dir")
    if parts[0] in RESERVED:
        raise ArtifactRefused(f"{raw!r} is a name the sandbox keeps for itself")
    return name


def _check_layout(files: list[WorkFile], dirs: list[str]) -> None:
    """Every entry's parent is a directory of the build (GNU tar lists each directory it packs): not a file, which
    would have to be both, nor missing. Linear in the names' length (a prefix of each path at each depth was cubic in
    the depth of a tree)."""
    directories = set(dirs)
    for path in [f.name for f in files] + dirs:
        parent = path.rpartition("/")[0]
        if parent and parent not in directories:
            raise ArtifactRefused(f"{path!r} needs {parent!r} to be a directory of the build")
