"""`python -m server` starts Conveyor; `--help` lists its settings; `hash-key` prints the digest of an API key."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import subprocess
import sys
import textwrap

from aiohttp.http_exceptions import HttpProcessingError

from .app import create_app
from .buildcache import BuildCache, builds_dir
from .edge import listen, make_runner, raise_nofile_limit
from .errors import SandboxUnavailable, SettingsError
from .keys import HUB, QUEUE
from .languages import apt_install_argv, installed_packages, load_languages
from .packages import install
from .settings import Settings

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
            raise ListenError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from exc
        logger.info("Conveyor listening on http://%s:%d", settings.host, settings.port)
        await stop.wait()
        logger.info("shutting down: refusing new jobs, %d ms grace for running ones", settings.shutdown_grace_ms)
        await app[QUEUE].close(settings.shutdown_grace_ms / 1000.0)
        await app[HUB].close()
    finally:
        if server is not None:
            server.close()
        await runner.cleanup()


USAGE = (
    "usage: python -m server [--help] [hash-key [KEY] | cache clear | cache status | packages install |"
    " languages list | languages install NAME... | languages install --all]"
)


def help_text() -> str:
    """The usage line, how to stop, and every setting with its default and meaning (from `Settings`)."""
    lines = [
        USAGE,
        "",
        "Starts Conveyor on HOST:PORT. Ctrl-C or SIGTERM stops it gracefully: new jobs are refused, running ones",
        "get SHUTDOWN_GRACE_MS to finish, the rest are cancelled (reason shutdown). `hash-key` makes an API key;",
        "`cache clear` empties the build cache in CACHE_DIR, `cache status` shows its size; `packages install`",
        "installs PACKAGES_FILE's packages into the read-only layers jobs import from. `languages list` shows each",
        "language of server/languages.toml with its Debian packages and whether they are installed; `languages",
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
        have = installed_packages(p for lang in languages.values() for p in lang.packages)
        for lang in languages.values():
            missing = [p for p in lang.packages if p not in have]
            state = "installed" if not missing else f"missing {' '.join(missing)}"
            print(f"{lang.name:<14} {lang.display:<26} {' '.join(lang.packages):<36} {state}")
        return 0
    names = list(languages) if argv[1:] == ["--all"] else argv[1:]
    unknown = [name for name in names if name not in languages]
    if argv[:1] != ["install"] or not names or unknown:
        print(f"{USAGE} (unknown languages: {' '.join(unknown)})" if unknown else USAGE, file=sys.stderr)
        return 2
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
    if argv[:1] in (["--help"], ["-h"]):
        print(help_text())
        return 0
    if argv[:1] == ["hash-key"]:
        from .apikeys import hash_key_main

        return hash_key_main(argv[1:])
    if argv[:1] == ["cache"] and argv[1:] in (["clear"], ["status"]):
        return cache_main(argv[1])
    if argv[:2] == ["packages", "install"] and len(argv) == 2:
        return packages_main()
    if argv[:1] == ["languages"]:
        return languages_main(argv[1:])
    if argv:
        print(f"{USAGE} (unknown argument {argv[0]!r})", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
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
