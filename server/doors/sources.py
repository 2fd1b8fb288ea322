"""A submission's sources: `code` or `files`, their names and layout in the work dir, encodings and sizes."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ..errors import BadRequest, PayloadTooLarge
from ..queue.jobs import SourceFile
from ..settings import Settings
from .fields import read_field, refuse_unknown

MAX_FILES = 32
MAX_FILE_NAME_BYTES = 255
MAX_PATH_DEPTH = 8
ENCODINGS = ("utf8", "base64")
# Names the sandbox itself uses at the top of the work dir.
RESERVED_NAMES = frozenset({"tmp"})
FILE_FIELDS = frozenset({"name", "content", "encoding"})


def sources(data: dict[str, Any], settings: Settings) -> list[SourceFile]:
    """`code` (one file under the language's own name) or `files` (the first, or `main`, is the entry point)."""
    has_code, has_files = data.get("code") is not None, data.get("files") is not None
    if has_code and has_files:
        raise BadRequest("Send code or files, not both.", field="files")
    if not has_files:
        return [_code(data, settings)]
    files = [
        _source_file(item, index) for index, item in enumerate(read_field(data, "files", list, kind_name="a list"))
    ]
    if not 1 <= len(files) <= MAX_FILES:
        raise BadRequest(f"files must hold from 1 to {MAX_FILES} files.", field="files")
    total = sum(f.size for f in files)
    if total > settings.max_code_bytes:
        raise PayloadTooLarge(
            f"files hold {total} bytes; the maximum is {settings.max_code_bytes}.",
            field="files",
            maxBytes=settings.max_code_bytes,
        )
    _check_layout(files)
    _main_first(files, read_field(data, "main", str, default=None))
    if not files[0].raw.strip():
        raise BadRequest(f"The entry point {files[0].name!r} is empty.", field="files", file=files[0].name)
    return files


def _code(data: dict[str, Any], settings: Settings) -> SourceFile:
    """The `code` shorthand: one file under the language's own name."""
    code = read_field(data, "code", str, required=True)
    size = len(code.encode("utf-8", "surrogatepass"))
    if size > settings.max_code_bytes:
        raise PayloadTooLarge(
            f"code is {size} bytes; the maximum is {settings.max_code_bytes}.",
            field="code",
            maxBytes=settings.max_code_bytes,
        )
    if not code.strip():
        raise BadRequest("code must not be empty.", field="code")
    if data.get("main") is not None:
        raise BadRequest("main names one of files; it does not go with code.", field="main")
    return SourceFile(name="", content=code)


def _main_first(files: list[SourceFile], main: str | None) -> None:
    """Move the file `main` names to the front: the entry point."""
    if main is not None:
        chosen = [f for f in files if f.name == main]
        if not chosen:
            raise BadRequest(f"main names {main!r}, which is not one of files.", field="main")
        files.remove(chosen[0])
        files.insert(0, chosen[0])


def _source_file(item: Any, index: int) -> SourceFile:
    where = f"files[{index}]"
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object with name and content.", field="files", index=index)
    refuse_unknown([f"{where}.{name}" for name in item if name not in FILE_FIELDS], FILE_FIELDS)
    name, content, encoding = item.get("name"), item.get("content"), item.get("encoding", "utf8")
    if not isinstance(name, str) or not isinstance(content, str):
        raise BadRequest(f"{where} needs a name and a content, both strings.", field="files", index=index)
    reason = _bad_name(name)
    if reason is not None:
        raise BadRequest(f"{where}: the name {name!r} {reason}.", field="files", file=name, index=index)
    if encoding not in ENCODINGS:
        raise BadRequest(f"{where}: encoding must be utf8 or base64.", field="files", file=name, index=index)
    if encoding == "base64":
        try:
            base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{where}: content is not valid base64.", field="files", file=name, index=index) from None
    return SourceFile(name=name, content=content, encoding=encoding)


def _bad_name(name: str) -> str | None:
    """Why a file name cannot be used, or None: relative paths inside the work dir only."""
    if not name or len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
        return f"must be 1 to {MAX_FILE_NAME_BYTES} bytes"
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or "\\" in name:
        return "must not contain control characters or backslashes"
    if name.startswith("/"):
        return "must be a relative path"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "must not contain empty, . or .. components"
    if len(parts) > MAX_PATH_DEPTH:
        return f"must be at most {MAX_PATH_DEPTH} directories deep"
    if parts[0] in RESERVED_NAMES or parts[0].startswith("."):
        return "is reserved"
    return None


def _check_layout(files: list[SourceFile]) -> None:
    """No two files with one name, and no file where another needs a directory (`a` and `a/b`)."""
    names = {f.name for f in files}
    if len(names) != len(files):
        twice = next(f.name for f in files if [g.name for g in files].count(f.name) > 1)
        raise BadRequest(f"files names {twice!r} more than once.", field="files", file=twice)
    for f in files:
        parts = f.name.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in names:
                raise BadRequest(
                    f"{f.name!r} needs {parts[depth - 1]!r} to be a directory.", field="files", file=f.name
                )
