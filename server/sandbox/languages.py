"""Languages: the definitions in languages.toml, and lookup by name or alias."""

from __future__ import annotations

import fnmatch
import functools
import glob
import re
import shutil
import subprocess
import tomllib
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SandboxUnavailable
from .packages import Layer

LANGUAGES_FILE = Path(__file__).with_name("languages.toml")

_REQUIRED = ("source", "run", "version")
_KNOWN = {
    *_REQUIRED,
    "aliases",
    "compile",
    "sources",
    "env",
    "interactive_env",
    "etc",
    "out_of_memory",
    "address_space_headroom_mb",
    "preload",
    "preload_runs",
    "display",
    "packages",
    "mode",
    "hello",
    "compile_timeout_ms",
    "compiler_options",
    "compiler_option_values",
}
# Whole-argument placeholders that expand to several arguments (or none): the compiled files, and the job's own
# compiler options. Inside an argument, {heap_mb}, {main} and {main_class} are substituted.
SOURCES, OPTIONS = "{sources}", "{options}"


@dataclass(frozen=True, slots=True)
class Program:
    """The job's files as the commands see them: the entry point and every file name, relative to the work dir."""

    main: str
    files: tuple[str, ...]
    compiler_options: tuple[str, ...] = ()

    @property
    def main_stem(self) -> str:
        """The entry point without its extension: `pkg/app.ts` is `pkg/app`."""
        head, dot, tail = self.main.rpartition(".")
        return head if dot and "/" not in tail and head and not head.endswith("/") else self.main

    @property
    def main_class(self) -> str:
        """The entry point as a JVM class name: `pkg/Main.java` is `pkg.Main`."""
        return self.main.rsplit(".", 1)[0].replace("/", ".")


@dataclass(frozen=True, slots=True)
class Language:
    """How to compile, run and probe one language inside the sandbox."""

    name: str
    source: str
    run: tuple[str, ...]
    version: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    compile: tuple[str, ...] | None = None
    # Globs of the file names the compiler is given for {sources} (default: the entry point only).
    sources: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # The run stage's extra environment in interactive runs (set by env(1) before the program, so the compile stage
    # and the build cache key stay as they are).
    interactive_env: Mapping[str, str] = field(default_factory=dict)
    etc: tuple[str, ...] = ()
    out_of_memory: tuple[str, ...] = ()
    address_space_headroom_mb: int = 0
    # A pre-started interpreter for warm sandboxes (sandbox/helper/preload.*): its command, `{preload}` standing for
    # its code's text or `{preload_file}` for that code as a file (sandbox/command.py). It runs a job that has no
    # compile stage and whose run command begins with this command less its code, or (preload_runs = N) with the
    # run command's own first N arguments: what the interpreter stands for when it is not its own command (java's
    # shell that picks the class).
    preload: tuple[str, ...] | None = None
    preload_runs: int = 0
    # What the editor shows (its name, CodeMirror mode and starter) and the Debian packages that provide it.
    display: str = ""
    packages: tuple[str, ...] = ()
    mode: str = ""
    hello: str = ""
    # The compile stage's least wall time: some compilers (kotlinc, scalac) need longer than COMPILE_TIMEOUT_MS's
    # default on a busy host. A job's own compile timeout still wins.
    compile_timeout_ms: int = 0
    # What compilerOptions may be (whole-argument regular expressions), and the options whose value is the next
    # argument (checked together with it): nothing else reaches the compiler.
    compiler_options: tuple[re.Pattern[str], ...] = ()
    compiler_option_values: frozenset[str] = frozenset()

    def refused_compiler_option(self, options: Iterable[str]) -> str | None:
        """The first of `options` (with its value) that is not allowed, or None when all are."""
        items = iter(options)
        for option in items:
            if option in self.compiler_option_values:
                value = next(items, None)
                if value is None:
                    return option
                option = f"{option} {value}"
            if not any(pattern.fullmatch(option) for pattern in self.compiler_options):
                return option
        return None

    def program(self, files: Iterable[str] | None = None, compiler_options: Iterable[str] = ()) -> Program:
        """The program for a job's files (the first is the entry point); None: the one-file `code` shorthand."""
        names = tuple(files) if files is not None else (self.source,)
        return Program(main=names[0], files=names, compiler_options=tuple(compiler_options))

    def compile_argv(self, *, heap_mb: int, program: Program | None = None) -> list[str] | None:
        """The compile command with placeholders filled in, or None for interpreted languages."""
        if self.compile is None:
            return None
        return self._expand(self.compile, heap_mb, program or self.program())

    def run_argv(
        self, args: Iterable[str], *, heap_mb: int, program: Program | None = None, interactive: bool = False
    ) -> list[str]:
        """The run command with placeholders filled in and the job's args appended verbatim; an interactive run
        starts it through env(1) with `interactive_env`."""
        argv = self._expand(self.run, heap_mb, program or self.program()) + list(args)
        if interactive and self.interactive_env and _preloadable(self.interactive_env.get("LD_PRELOAD", "")):
            return ["env", *(f"{key}={value}" for key, value in self.interactive_env.items()), *argv]
        return argv

    def compiled_files(self, program: Program) -> list[str]:
        """What {sources} expands to: the files matching `sources`, the entry point first; else the entry point."""
        if not self.sources:
            return [program.main]
        matching = [name for name in program.files if any(fnmatch.fnmatchcase(name, g) for g in self.sources)]
        return [program.main, *(name for name in matching if name != program.main)]

    def _expand(self, template: Iterable[str], heap_mb: int, program: Program) -> list[str]:
        argv: list[str] = []
        for part in template:
            if part == SOURCES:
                argv += [_path_arg(name) for name in self.compiled_files(program)]
            elif part == OPTIONS:
                argv += program.compiler_options
            else:
                main = _path_arg(program.main)
                stem = _path_arg(program.main_stem)
                argv.append(part.format(heap_mb=heap_mb, main=main, main_class=program.main_class, main_stem=stem))
        return argv

    def version_argv(self, *, heap_mb: int) -> list[str]:
        return [part.format(heap_mb=heap_mb) for part in self.version]

    def etc_paths(self) -> list[str]:
        """Existing host paths matching the `etc` globs."""
        return sorted({path for pattern in self.etc for path in glob.glob(pattern)})

    def ran_out_of_memory(self, stderr: str) -> bool:
        return any(marker in stderr for marker in self.out_of_memory)


def load_languages(path: Path = LANGUAGES_FILE) -> dict[str, Language]:
    """Read the definitions; raises ValueError naming the language and key on a malformed entry."""
    with path.open("rb") as f:
        data = tomllib.load(f)
    languages: dict[str, Language] = {}
    for name, raw in data.items():
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: [{name}] must be a table")
        languages[name] = _parse(name, raw, path)
    _check_names(languages, path)
    return languages


@functools.cache
def language_definitions() -> dict[str, Language]:
    """The definitions of languages.toml, read once (what a submission is checked against)."""
    return load_languages()


def _parse(name: str, raw: dict[str, Any], path: Path) -> Language:
    unknown = set(raw) - _KNOWN
    missing = [key for key in _REQUIRED if key not in raw]
    if unknown or missing:
        raise ValueError(f"{path}: [{name}] unknown keys {sorted(unknown)}, missing keys {missing}")
    compile_cmd = raw.get("compile")
    return Language(
        name=name,
        source=_str(raw["source"], name, "source"),
        run=_argv(raw["run"], name, "run"),
        version=_argv(raw["version"], name, "version"),
        aliases=_strs(raw.get("aliases", []), name, "aliases"),
        compile=None if compile_cmd is None else _argv(compile_cmd, name, "compile"),
        sources=_strs(raw.get("sources", []), name, "sources"),
        env=_env(raw, name, "env"),
        interactive_env=_env(raw, name, "interactive_env"),
        etc=_strs(raw.get("etc", []), name, "etc"),
        out_of_memory=_strs(raw.get("out_of_memory", []), name, "out_of_memory"),
        address_space_headroom_mb=_int(raw.get("address_space_headroom_mb", 0), name, "address_space_headroom_mb"),
        preload=_argv(raw["preload"], name, "preload") if "preload" in raw else None,
        preload_runs=_int(raw.get("preload_runs", 0), name, "preload_runs"),
        display=_str(raw.get("display", name), name, "display"),
        packages=_strs(raw.get("packages", []), name, "packages"),
        mode=_str(raw.get("mode", ""), name, "mode"),
        hello=_str(raw.get("hello", ""), name, "hello"),
        compile_timeout_ms=_int(raw.get("compile_timeout_ms", 0), name, "compile_timeout_ms"),
        compiler_options=_patterns(raw.get("compiler_options", []), name, "compiler_options"),
        compiler_option_values=frozenset(_strs(raw.get("compiler_option_values", []), name, "compiler_option_values")),
    )


def _path_arg(name: str) -> str:
    """A file name as a command's argument: one that starts with `-` as `./-name`, so that no interpreter or compiler
    reads a submitted file's name as one of its options (`-c`, `--version`, `-o`...)."""
    return f"./{name}" if name.startswith("-") else name


def _check_names(languages: dict[str, Language], path: Path) -> None:
    seen: dict[str, str] = {}
    for language in languages.values():
        if "/" in language.source or language.source.startswith("."):
            raise ValueError(f"{path}: [{language.name}] source must be a plain file name")
        for alias in (language.name, *language.aliases):
            key = alias.lower()
            if key in seen:
                raise ValueError(f"{path}: name {alias!r} is used by both {seen[key]} and {language.name}")
            seen[key] = language.name


def _str(value: Any, name: str, key: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"[{name}] {key}: expected a string, got {value!r}")
    return value


def _int(value: Any, name: str, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"[{name}] {key}: expected a whole number >= 0, got {value!r}")
    return value


@functools.cache
def _preloadable(paths: str) -> bool:
    """Whether every library an LD_PRELOAD names is there (the sandbox sees the host's /usr): a missing one would
    put a loader error on the program's stderr."""
    return all(Path(path).is_file() for path in paths.split(":") if path)


def _env(raw: dict[str, Any], name: str, key: str) -> dict[str, str]:
    table = raw.get(key, {})
    if not isinstance(table, dict):
        raise ValueError(f"[{name}] {key}: expected a table of strings")
    env = {_str(k, name, key): _str(v, name, key) for k, v in table.items()}
    if any(not k or "=" in k for k in env):
        raise ValueError(f"[{name}] {key}: a variable name cannot be empty or contain '='")
    return env


def _strs(value: Any, name: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"[{name}] {key}: expected a list of strings")
    return tuple(_str(item, name, key) for item in value)


def _patterns(value: Any, name: str, key: str) -> tuple[re.Pattern[str], ...]:
    try:
        return tuple(re.compile(pattern) for pattern in _strs(value, name, key))
    except re.error as exc:
        raise ValueError(f"[{name}] {key}: {exc}") from None


def _argv(value: Any, name: str, key: str) -> tuple[str, ...]:
    argv = _strs(value, name, key)
    if not argv:
        raise ValueError(f"[{name}] {key}: expected a non-empty command")
    return argv


class LanguageIndex:
    """Canonical names and aliases of the languages offered, matched case-insensitively."""

    def __init__(self, languages: Iterable[Language]) -> None:
        self._by_name = {language.name: language for language in languages}
        self._names = {
            alias.lower(): language.name
            for language in self._by_name.values()
            for alias in (language.name, *language.aliases)
        }

    def resolve(self, name: str) -> str | None:
        return self._names.get(name.strip().lower())

    def get(self, name: str) -> Language | None:
        canonical = self.resolve(name)
        return None if canonical is None else self._by_name[canonical]

    def __iter__(self) -> Iterator[Language]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)


def installed_packages(packages: Iterable[str]) -> set[str]:
    """The Debian packages among `packages` that dpkg says are installed (none where there is no dpkg)."""
    names = sorted(set(packages))
    if not names or shutil.which("dpkg-query") is None:
        return set()
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\\n", *names],
        capture_output=True,
        text=True,
        check=False,
    )
    return {line.split()[0] for line in done.stdout.splitlines() if line.endswith(" installed")}


def apt_install_argv(packages: Iterable[str]) -> list[str]:
    """The one apt-get line that installs `packages`."""
    return ["apt-get", "install", "-y", "--no-install-recommends", *sorted(set(packages))]


def runtimes(index: LanguageIndex, versions: Mapping[str, str], layers: Mapping[str, Layer]) -> list[dict[str, Any]]:
    """The languages offered (GET /runtimes): canonical name, detected version, aliases, package layer."""
    return [
        {
            "language": lang.name,
            "version": versions[lang.name],
            "aliases": list(lang.aliases),
            "compiled": lang.compile is not None,
            "packages": layers[lang.name].describe() if lang.name in layers else [],
            # For the editor's picker: the name people know, its highlighting mode and a starter program.
            "displayName": lang.display,
            "mode": lang.mode,
            "hello": lang.hello,
        }
        for lang in index
    ]


def chosen(defs: dict[str, Language], names: Collection[str] | None) -> dict[str, Language]:
    """The definitions named (LANGUAGES), all of them for None; a name languages.toml lacks refuses to start."""
    if names is None:
        return defs
    if unknown := sorted(set(names) - defs.keys()):
        raise SandboxUnavailable(
            f"LANGUAGES names {', '.join(unknown)}, not in languages.toml (python -m server languages list)"
        )
    return {name: lang for name, lang in defs.items() if name in names}
