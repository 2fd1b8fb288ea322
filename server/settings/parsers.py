"""The settings' parsers: each turns an environment variable's text into a value or raises ValueError, and says
the form it expects (`form`, named in the start-up error)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

Parser = Callable[[str], Any]


def int_range(low: int, high: int | None = None) -> Parser:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise ValueError from None
        if value < low or (high is not None and value > high):
            raise ValueError
        return value

    parse.form = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"  # type: ignore[attr-defined]
    return parse


def text(raw: str) -> str:
    return raw.strip()


text.form = "a string"  # type: ignore[attr-defined]


def flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError


flag.form = "1/0, true/false, yes/no or on/off"  # type: ignore[attr-defined]


def csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


csv.form = "a comma-separated list"  # type: ignore[attr-defined]


def networks(raw: str) -> tuple[str, ...]:
    parts = csv(raw)
    for part in parts:
        ipaddress.ip_network(part, strict=False)  # raises ValueError
    return parts


networks.form = "a comma-separated list of IP addresses or CIDR networks"  # type: ignore[attr-defined]


def redis_url(raw: str) -> str:
    value = raw.strip()
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError
    return value


redis_url.form = "a redis://, rediss:// or unix:// URL"  # type: ignore[attr-defined]


def choice(*options: str) -> Parser:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError
        return value

    parse.form = "one of " + ", ".join(options)  # type: ignore[attr-defined]
    return parse
