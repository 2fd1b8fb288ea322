"""API keys: the keys file (TOML, digests only), lookup, request authentication and the `hash-key` command."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web

from ..errors import SettingsError, Unauthorized
from ..settings import Settings
from .identity import Client, anonymous, client_ip, owner_token, parse_networks

# RFC 6750 b64token: what may follow "Bearer ". Anything else is a malformed header, not an unknown key.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_FIELDS = frozenset({"name", "sha256", "max_priority", "rate_limit_requests", "rate_limit_burst", "admin"})
KEY_PREFIX = "cvy_"
JUDGE0_AUTH_HEADER = "X-Auth-Token"


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    """One `[[keys]]` table: a user, the SHA-256 digest of its key and its privileges."""

    name: str
    sha256: bytes
    max_priority: int = 0
    admin: bool = False
    rate_limit_requests: int | None = None
    rate_limit_burst: int | None = None

    def client(self, ip: str) -> Client:
        return Client(
            key=f"user:{self.name}",
            ip=ip,
            user=self.name,
            max_priority=self.max_priority,
            admin=self.admin,
            rate_limit_requests=self.rate_limit_requests,
            rate_limit_burst=self.rate_limit_burst,
            owner=f"key:{self.name}",
        )


class ApiKeys:
    """The configured keys. Lookup hashes the presented key and compares digests in constant time."""

    def __init__(self, entries: Iterable[ApiKeyEntry] = ()) -> None:
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self._entries]

    @classmethod
    def load(cls, path: str) -> ApiKeys:
        """Read API_KEYS_FILE; an empty path means no keys. Any problem raises SettingsError (one line)."""
        if not path:
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"API_KEYS_FILE={path!r}: cannot read the file: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"API_KEYS_FILE={path!r}: not valid TOML: {exc}") from None
        try:
            return cls(parse_entries(data))
        except ValueError as exc:
            raise SettingsError(f"API_KEYS_FILE={path!r}: {exc}") from None

    def named(self, name: str) -> ApiKeyEntry | None:
        """The entry of user `name` (names are unique in the file), or None."""
        return next((entry for entry in self._entries if entry.name == name), None)

    def lookup(self, raw_key: str) -> ApiKeyEntry | None:
        """The entry whose digest matches `raw_key`, or None."""
        digest = hash_key(raw_key)
        found: ApiKeyEntry | None = None
        # Every entry is compared (no early exit), so the time taken says nothing about which entry matched.
        for entry in self._entries:
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return found


def hash_key(raw_key: str) -> bytes:
    return hashlib.sha256(raw_key.encode("utf-8")).digest()


def parse_entries(data: Mapping[str, Any]) -> list[ApiKeyEntry]:
    """Validate the parsed TOML document; raise ValueError naming the first problem."""
    unknown = set(data) - {"keys"}
    if unknown:
        raise ValueError(f"unknown top-level key {sorted(unknown)[0]!r} (expected only [[keys]] tables)")
    tables = data.get("keys", [])
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        raise ValueError("'keys' must be an array of tables ([[keys]])")
    entries: list[ApiKeyEntry] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for index, table in enumerate(tables, 1):
        entry = _parse_entry(table, f"[[keys]] #{index}")
        if entry.name in names:
            raise ValueError(f"[[keys]] #{index}: duplicate name {entry.name!r}")
        if entry.sha256 in digests:
            raise ValueError(f"[[keys]] #{index} ({entry.name}): the same sha256 is used twice")
        names.add(entry.name)
        digests.add(entry.sha256)
        entries.append(entry)
    return entries


def _parse_entry(table: Mapping[str, Any], where: str) -> ApiKeyEntry:
    unknown = set(table) - _FIELDS
    if unknown:
        field = sorted(unknown)[0]
        hint = " (store the key's digest as sha256; see `python -m server hash-key`)" if field == "key" else ""
        raise ValueError(f"{where}: unknown field {field!r}{hint}")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{where}: 'name' must be 1-64 characters of letters, digits and _.@-")
    where = f"{where} ({name})"
    digest = table.get("sha256")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise ValueError(f"{where}: 'sha256' must be 64 hex digits (the SHA-256 of the key, not the key)")
    admin = table.get("admin", False)
    if not isinstance(admin, bool):
        raise ValueError(f"{where}: 'admin' must be true or false")
    return ApiKeyEntry(
        name=name,
        sha256=bytes.fromhex(digest),
        max_priority=_int_field(table, "max_priority", where, low=0, default=0),
        admin=admin,
        rate_limit_requests=_int_field(table, "rate_limit_requests", where, low=1, default=None),
        rate_limit_burst=_int_field(table, "rate_limit_burst", where, low=1, default=None),
    )


def _int_field(table: Mapping[str, Any], field: str, where: str, *, low: int, default: int | None) -> Any:
    if field not in table:
        return default
    value = table[field]
    # bool is an int subclass; `max_priority = true` is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{where}: {field!r} must be an integer >= {low}")
    return value


def _unauthorized(message: str, error: str) -> Unauthorized:
    return Unauthorized(message, headers={hdrs.WWW_AUTHENTICATE: f'Bearer realm="conveyor", error="{error}"'})


def client_for_key(raw_key: str | None, ip: str, keys: ApiKeys) -> Client:
    """The client for a presented key (the WebSocket `auth` message): None is anonymous, anything else must match.

    An unknown key is refused rather than treated as anonymous, so a typo or a revoked key is noticed.
    """
    if raw_key is None:
        return anonymous(ip)
    if not _TOKEN.fullmatch(raw_key):
        raise _unauthorized("Malformed API key.", "invalid_request")
    entry = keys.lookup(raw_key)
    if entry is None:
        raise _unauthorized("Unknown API key.", "invalid_token")
    return entry.client(ip)


def authenticate(request: web.BaseRequest, keys: ApiKeys, settings: Settings) -> Client:
    """Identify the caller: `Authorization: Bearer <key>`, or anonymous by address with its owner token if it sent
    one. Unauthorized when the key is bad."""
    ip = client_ip(request, parse_networks(settings.trusted_proxies))
    values = request.headers.getall(hdrs.AUTHORIZATION, [])
    if not values and JUDGE0_AUTH_HEADER in request.headers and request.path.startswith("/judge0/"):
        # Judge0's clients send their key as X-Auth-Token (docs/compat.md); it names the same API keys.
        return client_for_key(request.headers[JUDGE0_AUTH_HEADER].strip(), ip, keys)
    if not values:
        return anonymous(ip).with_owner_token(owner_token(request))
    if len(values) > 1:
        raise _unauthorized("Send one Authorization header.", "invalid_request")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Malformed Authorization header: expected 'Bearer <key>'.", "invalid_request")
    return client_for_key(token.strip(), ip, keys)


# A key typed by hand must be at least this long (the generated ones are 47 characters, 256 random bits).
MIN_KEY_LENGTH = 24
_HASH_KEY_USAGE = """\
usage: python -m server hash-key [KEY | -]

Print the [[keys]] entry for API_KEYS_FILE with the key's SHA-256 digest; a key given here must have at
least 24 characters.
  KEY   hash this key (note: it stays in your shell history; prefer stdin)
  -     read the key from stdin (also the default when stdin is not a terminal)
  (no argument, terminal or empty stdin) generate a strong random key and print both key and digest
"""


def hash_key_main(argv: list[str]) -> int:
    """`python -m server hash-key [KEY]`; `argv` is what follows `hash-key`. Returns the exit status."""
    if argv[:1] in (["-h"], ["--help"]):
        print(_HASH_KEY_USAGE, end="")
        return 0
    if len(argv) > 1:
        print(_HASH_KEY_USAGE, end="", file=sys.stderr)
        return 2
    key = ""
    if argv and argv[0] != "-":
        key = argv[0]
    elif argv or not sys.stdin.isatty():
        key = sys.stdin.read().strip()
        if not key and argv:
            print("hash-key: nothing on stdin", file=sys.stderr)
            return 2
    if not key:
        key = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits; the prefix lets secret scanners find leaks
        print(f"key: {key}   (give it to its user; only its digest below is kept)\n")
        print(_keys_entry(hash_key(key).hex()), end="")
        return 0
    if not _TOKEN.fullmatch(key):
        print(
            "hash-key: a key may only hold letters, digits and -._~+/ (it is sent as a Bearer token)", file=sys.stderr
        )
        return 2
    if len(key) < MIN_KEY_LENGTH:
        print(
            f"hash-key: a key of {len(key)} characters is too easy to guess; use at least {MIN_KEY_LENGTH} "
            "(run hash-key with no argument for a random one)",
            file=sys.stderr,
        )
        return 2
    print(_keys_entry(hash_key(key).hex()), end="")
    return 0


def _keys_entry(digest: str) -> str:
    """The [[keys]] entry to paste into API_KEYS_FILE."""
    return (
        "[[keys]]\n"
        'name = "CHANGE-ME"    # the key\'s user, as the logs and the dashboard name it\n'
        f'sha256 = "{digest}"\n'
        "# admin = true        # may read, cancel, stop and run again any job\n"
    )
