"""Piston's runtimes: our languages under Piston's names, looked up by name or alias and a semver range."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nodesemver

from ...queue.jobs import Runner
from ...sandbox.languages import Language

PISTON_FILE = Path(__file__).with_name("piston.toml")
# A version range longer than this is refused: no real one comes close.
MAX_VERSION_CHARS = 64
_OPERATORS = frozenset({"<", "<=", ">", ">=", "=", "~", "~>", "^"})
_VERSION_TEXT = r"v?(?:\d+|[xX*])(?:\.(?:\d+|[xX*])){0,2}(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?"
_VERSION = re.compile(_VERSION_TEXT, re.ASCII)
_COMPARATOR = re.compile(r"(?:[<>]=?|=|~>?|\^)?" + _VERSION_TEXT, re.ASCII)


@dataclass(frozen=True, slots=True)
class PistonRuntime:
    """One of our languages as Piston names it, with what translation needs from its definition."""

    language: str
    version: str
    aliases: tuple[str, ...]
    runtime: str | None
    native: str
    source: str
    compiled: bool

    @property
    def semver(self) -> str:
        """The detected version padded to three parts (`1.2` -> `1.2.0`) so Piston's semver ranges match it."""
        parts = self.version.split(".")
        return ".".join([*parts, "0", "0"][: max(3, len(parts))])

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"language": self.language, "version": self.version, "aliases": list(self.aliases)}
        if self.runtime is not None:
            data["runtime"] = self.runtime
        return data


def load_names(path: Path = PISTON_FILE) -> dict[str, dict[str, Any]]:
    with path.open("rb") as f:
        return tomllib.load(f)


class Runtimes:
    """The runner's languages under Piston's names, and Piston's lookup by name or alias and semver range."""

    def __init__(self, runner: Runner, languages: dict[str, Language], names: dict[str, dict[str, Any]]) -> None:
        self._runner = runner
        self._languages = languages
        self._names = names

    def all(self) -> list[PistonRuntime]:
        runtimes = []
        for offered in self._runner.runtimes():
            native = offered["language"]
            names = self._names.get(native, {})
            definition = self._languages.get(native)
            runtimes.append(
                PistonRuntime(
                    language=names.get("language", native),
                    version=offered["version"],
                    aliases=tuple(names.get("aliases", offered.get("aliases", []))),
                    runtime=names.get("runtime"),
                    native=native,
                    source=definition.source if definition else "main",
                    compiled=bool(definition and definition.compile is not None),
                )
            )
        return runtimes

    def find(self, language: str, version: str) -> PistonRuntime | None:
        """The newest runtime named `language` (Piston's name or alias, else ours) whose version is in `version`."""
        runtimes = self.all()
        named = [rt for rt in runtimes if language == rt.language or language in rt.aliases]
        if not named:
            native = self._runner.resolve(language)
            named = [rt for rt in runtimes if rt.native == native]
        wanted = semver_range(version)
        if wanted is None:  # an invalid range matches nothing, as in node-semver
            return None
        try:
            best = nodesemver.max_satisfying([rt.semver for rt in named], wanted, loose=True)
        except (ValueError, TypeError):
            return None
        return next((rt for rt in named if rt.semver == best), None)


def semver_range(text: str) -> str | None:
    """`text` as a node-semver range in canonical form (one space between comparators), or None if it is not one.

    nodesemver's own patterns backtrack: `">"`, 300 spaces and `"a"` took it 10 s, doubling every ~50 characters.
    So what reaches it is checked here first, in linear time: at most MAX_VERSION_CHARS, comparators that match
    _COMPARATOR (whose parts start with distinct characters, so it cannot backtrack) joined by single spaces, a
    hyphen range or `||`."""
    if len(text) > MAX_VERSION_CHARS:
        return None
    sets = []
    for part in text.split("||"):
        tokens: list[str] = []
        for word in part.split():
            if tokens and tokens[-1] in _OPERATORS:
                tokens[-1] += word  # node-semver allows a space after an operator: ">= 1.2"
            else:
                tokens.append(word)
        if len(tokens) == 3 and tokens[1] == "-":
            valid = all(_VERSION.fullmatch(token) for token in (tokens[0], tokens[2]))
        else:
            valid = all(_COMPARATOR.fullmatch(token) for token in tokens)
        if not valid:
            return None
        sets.append(" ".join(tokens) or "*")
    return " || ".join(sets)
