"""`python -m server` starts Conveyor; `--help` lists its settings; `hash-key` prints the digest of an API key."""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import errno
import logging
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from aiohttp.http_exceptions import HttpProcessingError

from .app import create_app
from .doors.edge import listen, make_runner, raise_nofile_limit
from .errors import SandboxUnavailable, SettingsError
from .hub.hub import HUB
from .keys import QUEUE
from .sandbox.buildcache import BuildCache, builds_dir
from .sandbox.languages import Language, apt_install_argv, installed_packages, load_languages
from .sandbox.packages import install
from .settings import Settings, read_env_file

logger = logging.getLogger("server")


class ListenError(Exception):
    """The address cannot be listened on (in use, or not ours to bind)."""


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully: refuse new jobs (503), give running ones the grace
    period, cancel what is left with reason `shutdown`, close sockets, exit."""
    app = create_app(settings)
    runner = make_runner(app, settings)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server: asyncio.Server | None = None
    try:
        try:
            server = await listen(runner, settings)
        except OSError as exc:
            where = f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            if exc.errno == errno.EADDRINUSE:
                other = 3002 if settings.port == 3001 else 3001
                where += f"; another program has that port: choose another with PORT={other} (or --port {other})"
            raise ListenError(where) from exc
        for line in banner(settings):
            logger.info("%s", line)
        await stop.wait()
        logger.info("shutting down: refusing new jobs, %d ms grace for running ones", settings.shutdown_grace_ms)
        await app[QUEUE].close(settings.shutdown_grace_ms / 1000.0)
        await app[HUB].close()
    finally:
        if server is not None:
            server.close()
        await runner.cleanup()


USAGE = (
    "usage: python -m server [--help] [--host HOST] [--port PORT]"
    " [hash-key [KEY] | cache clear | cache status | packages install |"
    " languages list | languages install NAME... | languages install --all]"
)


def banner(settings: Settings) -> list[str]:
    """What a first start says: where it listens, its pages, the rate limit and the pool of workers."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{'localhost' if host in ('0.0.0.0', '[::]') else host}:{settings.port}"
    window_s = settings.rate_limit_window_ms / 1000
    pool = f"{settings.max_concurrent_jobs} jobs at once, {settings.max_queue_size} more may wait"
    if settings.warm_pool:
        pool += f", {settings.warm_pool} sandboxes kept warm"
    return [
        f"Conveyor listening on http://{host}:{settings.port}",
        f"  editor     {url}/",
        f"  dashboard  {url}/dashboard",
        f"  API docs   {url}/docs",
        f"  rate limit {settings.rate_limit_requests} runs per {window_s:g} s per client (RATE_LIMIT_REQUESTS)",
        f"  pool       {pool} (MAX_CONCURRENT_JOBS, MAX_QUEUE_SIZE, WARM_POOL)",
    ]


def env_file_warnings(path: Path) -> list[str]:
    """A line for every name in the .env file that is no setting, with the closest setting's name (a typo would
    otherwise be ignored in silence)."""
    if not path.is_file():
        return []
    names = Settings.env_names()
    warnings = []
    for name in read_env_file(path):
        if name in names:
            continue
        close = difflib.get_close_matches(name.upper(), names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else " (python -m server --help lists them)"
        warnings.append(f"{path}: {name} is not a setting and is ignored{hint}")
    return warnings


def _flags(argv: list[str]) -> tuple[dict[str, object], list[str]]:
    """`--host H`, `--port N` (also `--port=N`) wherever they are; the other arguments in order."""
    flags: dict[str, object] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name not in ("--host", "--port"):
            rest.append(argv[i])
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise ValueError(f"{name} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        if name == "--port":
            if not value.isdigit() or not 0 <= int(value) <= 65535:
                raise ValueError(f"--port {value!r}: expected a port number from 0 to 65535")
            flags["port"] = int(value)
        else:
            if not value.strip():
                raise ValueError("--host needs an address")
            flags["host"] = value.strip()
    return flags, rest


def help_text() -> str:
    """The usage line, how to stop, and every setting with its default and meaning (from `Settings`)."""
    lines = [
        USAGE,
        "",
        "Starts Conveyor on HOST:PORT (--host and --port override them). Ctrl-C or SIGTERM stops it gracefully:",
        "new jobs are refused, running ones get SHUTDOWN_GRACE_MS to finish, the rest are cancelled (reason",
        "shutdown). `hash-key` makes an API key (and the [[keys]] entry to paste into API_KEYS_FILE);",
        "`cache clear` empties the build cache in CACHE_DIR, `cache status` shows its size; `packages install`",
        "installs PACKAGES_FILE's packages into the read-only layers jobs import from. `languages list` shows each",
        "language of server/sandbox/languages.toml with its Debian packages and whether they are installed; `languages",
        "install` installs the chosen languages' packages (as root; otherwise it prints the apt-get line).",
        "",
        "Settings, from the environment or a .env file in the working directory (the environment wins):",
    ]
    for name, default, doc in Settings.describe():
        lines.append(f"  {name}={default}")
        lines.extend(textwrap.wrap(doc.replace("`", ""), width=100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


class ClientMistakes(logging.Filter):
    """aiohttp logs malformed HTTP and clients that reset mid-request as ERROR with a traceback. Those are the
    client's mistakes, not ours: one INFO line each (an unexpected exception keeps its ERROR and traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError | ConnectionError | asyncio.IncompleteReadError):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.INFO):
            return False
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = (
            "client error: %s: %s",
            (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""),
        )
        record.exc_info = record.exc_text = None
        return True


def cache_main(command: str) -> int:
    """`cache clear`: delete every cached build; `cache status`: entries and bytes on disk."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 2
    cache = BuildCache(builds_dir(settings), settings.cache_max_mb << 20)
    if command == "clear":
        print(f"removed {cache.clear()} cached builds from {cache.root}")
    else:
        stats = cache.stats()
        print(f"{stats['entries']} cached builds, {stats['bytes']} bytes of {stats['maxBytes']} in {cache.root}")
    return 0


def packages_main() -> int:
    """`packages install`: install PACKAGES_FILE's package sets into layers, showing the installers' progress."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 2
    return install(settings)


def languages_main(argv: list[str]) -> int:
    """`languages list`: every language with its packages and whether they are installed; `languages install NAME...`
    or `--all`: apt-get install their packages as root, else print that line."""
    languages = load_languages()
    if argv == ["list"]:
        _list_languages(languages)
        return 0
    names = list(languages) if argv[1:] == ["--all"] else argv[1:]
    unknown = [name for name in names if name not in languages]
    if argv[:1] != ["install"] or not names or unknown:
        print(f"{USAGE} (unknown languages: {' '.join(unknown)})" if unknown else USAGE, file=sys.stderr)
        return 2
    return _install_languages(languages, names)


def _list_languages(languages: dict[str, Language]) -> None:
    have = installed_packages(p for lang in languages.values() for p in lang.packages)
    for lang in languages.values():
        missing = [p for p in lang.packages if p not in have]
        state = "installed" if not missing else f"missing {' '.join(missing)}"
        print(f"{lang.name:<14} {lang.display:<26} {' '.join(lang.packages):<36} {state}")


def _install_languages(languages: dict[str, Language], names: list[str]) -> int:
    wanted = {p for name in names for p in languages[name].packages}
    absent = wanted - installed_packages(wanted)
    if not absent:
        print(f"conveyor: the packages of {len(names)} languages are installed", file=sys.stderr)
        return 0
    argv_apt = apt_install_argv(absent)
    if os.geteuid() != 0:
        print(f"conveyor: as root, run: sudo {shlex.join(argv_apt)}", file=sys.stderr)
        return 1
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"conveyor: {shlex.join(argv_apt)}", file=sys.stderr)
    return subprocess.run(argv_apt, env=env, check=False).returncode


def main(argv: list[str]) -> int:
    try:
        flags, argv = _flags(argv)
    except ValueError as exc:
        print(f"{USAGE}\nconveyor: {exc}", file=sys.stderr)
        return 2
    if argv:
        return _subcommand(argv)
    try:
        settings = dataclasses.replace(Settings.from_env(), **flags)  # type: ignore[arg-type]
    except SettingsError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 2
    return _run_server(settings)


def _subcommand(argv: list[str]) -> int:
    """`--help`, `hash-key`, `cache`, `packages` and `languages`; anything else is a usage error."""
    if argv[:1] in (["--help"], ["-h"]):
        print(help_text())
        return 0
    if argv[:1] == ["hash-key"]:
        from .access.apikeys import hash_key_main

        return hash_key_main(argv[1:])
    if argv[:1] == ["cache"] and argv[1:] in (["clear"], ["status"]):
        return cache_main(argv[1])
    if argv[:2] == ["packages", "install"] and len(argv) == 2:
        return packages_main()
    if argv[:1] == ["languages"]:
        return languages_main(argv[1:])
    print(f"{USAGE} (unknown argument {argv[0]!r})", file=sys.stderr)
    return 2


def _run_server(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; start-up failures are one line each and exit status 2."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for warning in env_file_warnings(Path(".env")):
        logger.warning("%s", warning)
    soft, _ = raise_nofile_limit()
    logger.info("open files: up to %d, %d of them kept for jobs", soft, settings.fd_reserve)
    logging.getLogger("aiohttp.server").addFilter(ClientMistakes())
    try:
        asyncio.run(serve(settings))
    except (SandboxUnavailable, SettingsError) as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 2
    except ListenError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the host refused something at start-up: say what, on which file
        print(f"conveyor: start-up failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
