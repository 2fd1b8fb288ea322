"""Host paths a sandbox binds: whether the jobs' uid can reach them, and copies of the C helper and of the
pre-started interpreters' code (preload.js, java's launcher) that it can.

As root the server drops every job to an unprivileged uid before bubblewrap, and bubblewrap opens its bind
sources as that uid. A checkout in a mode-700 home (`git clone` into /root) is out of its reach, so the helper is
bound from a copy in a root-owned, world-readable directory instead: `bin/` under CACHE_DIR, else /var/lib/conveyor,
never on a noexec mount (/run and often /tmp are: the copy must be executed, outside the sandbox and in it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

FALLBACK_DIRS = (Path("/var/lib/conveyor/bin"),)


def unreachable(path: Path) -> Path | None:
    """The first directory on the way to `path` (or `path` itself) that a user other than its owner and group
    cannot pass through or read; None when others can reach it."""
    try:
        resolved = path.resolve(strict=True)
    except OSError:
        return path
    for directory in reversed(resolved.parents):
        if not _mode(directory) & stat.S_IXOTH:
            return directory
    mode = _mode(resolved)
    wanted = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) or mode & stat.S_IXUSR else 0)
    return None if mode & wanted == wanted else resolved


def reachable_helper(helper: Path, cache_dir: Path) -> Path:
    """`helper` itself when others can reach it, else a copy named by its content in `cache_dir`/bin or a fallback
    (made once; a later start with the same build reuses it)."""
    if unreachable(helper) is None:
        return helper
    data = helper.read_bytes()
    name = f"{helper.name}-{hashlib.sha256(data).hexdigest()[:16]}"
    problems = []
    for directory in (cache_dir / "bin", *FALLBACK_DIRS):
        try:
            return _install(directory, name, data)
        except OSError as exc:
            problems.append(f"{directory}: {exc.strerror or exc}")
    raise OSError(f"cannot copy {helper} where jobs can reach it ({'; '.join(problems)})")


def reachable_tree(path: Path, cache_dir: Path) -> Path:
    """A file or directory bound read-only into sandboxes (a pre-started interpreter's code): `path` itself when
    others can reach it, else a copy named by its content next to the helper's (made once, then reused)."""
    if unreachable(path) is None and all(unreachable(p) is None for p in path.rglob("*")):
        return path
    if path.is_file():
        return reachable_helper(path, cache_dir)
    files = sorted((p.relative_to(path).as_posix(), p.read_bytes()) for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256(b"".join(name.encode() + b"\0" + data for name, data in files)).hexdigest()[:16]
    problems = []
    for directory in (cache_dir / "bin", *FALLBACK_DIRS):
        try:
            return _install_tree(directory, f"{path.name}-{digest}", files)
        except OSError as exc:
            problems.append(f"{directory}: {exc.strerror or exc}")
    raise OSError(f"cannot copy {path} where jobs can reach it ({'; '.join(problems)})")


def _install_tree(directory: Path, name: str, files: list[tuple[str, bytes]]) -> Path:
    """The files under `directory`/`name` (each 0755, directories 0755), made in a temporary directory and renamed
    into place whole; one already there (a copy of the same content) is kept."""
    _own_directory(directory)
    target = directory / name
    if target.is_dir() and unreachable(target) is None:
        return target
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".tmp-"))
    try:
        for relative, data in files:
            (tmp / relative).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            (tmp / relative).write_bytes(data)
            os.chmod(tmp / relative, 0o755)
        for sub in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            os.chmod(sub, 0o755)
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise
        # another server made the same copy meanwhile (rename refuses a directory over one with content)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _checked(target)


def _own_directory(directory: Path) -> None:
    """`directory` made if need be, and checked: ours, written by us only, not on a noexec mount."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    if os.statvfs(directory).f_flag & os.ST_NOEXEC:
        raise OSError(f"{directory} is on a noexec mount")
    info = directory.lstat()
    # A directory another user made could swap the copy: use only our own, not writable by others.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise OSError(f"{directory} is not a directory of ours that only we may write")
    os.chmod(directory, 0o755)


def _install(directory: Path, name: str, data: bytes) -> Path:
    _own_directory(directory)
    target = directory / name
    if target.is_file() and target.read_bytes() == data and unreachable(target) is None:
        return target
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return _checked(target)


def _checked(target: Path) -> Path:
    """`target`, once others can reach it (else OSError naming what closes it)."""
    blocked = unreachable(target)
    if blocked is not None:
        raise OSError(f"{blocked} is closed to other users")
    return target


def _mode(path: Path) -> int:
    return path.stat().st_mode
