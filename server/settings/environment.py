"""Where settings come from: the environment over an optional `.env` file, each value through its parser."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import SettingsError
from .parsers import Parser


def read_environment(environ: Mapping[str, str] | None, env_file: str | Path | None) -> dict[str, str]:
    """`environ` (default: os.environ) over the `.env` file, when there is one."""
    values: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        values.update(read_env_file(Path(env_file)))
    values.update(os.environ if environ is None else environ)
    return values


def parse_fields(cls: Any, values: Mapping[str, str]) -> dict[str, Any]:
    """The dataclass `cls`'s fields given in `values`, parsed. Raises SettingsError naming the variable and the
    expected form on the first invalid value."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = f.metadata["env"]
        # An empty value (`WORKER_SLOTS=` in .env.example) means "use the default".
        if name not in values or not values[name].strip():
            continue
        parser: Parser = f.metadata["parser"]
        try:
            kwargs[f.name] = parser(values[name])
        except ValueError:
            raise SettingsError(
                f"{name}={values[name]!r} is invalid: expected {parser.form}"  # type: ignore[attr-defined]
            ) from None
    return kwargs


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines; `#` comments, `export` prefixes and matching quotes are allowed."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export ") :].lstrip()
        key, sep, value = stripped.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{path}:{lineno}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key.strip()] = value
    return out
