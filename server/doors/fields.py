"""A JSON object's fields read for a submission, each refusal one line naming the field: types, bounds, unknown
names."""

from __future__ import annotations

from typing import Any

from ..errors import BadRequest


def refuse_unknown(unknown: list[str], known: frozenset[str]) -> None:
    """BadRequest naming the unknown fields (at most 8, each cut to 64 characters) and listing the known ones."""
    if unknown:
        shown = ", ".join(repr(name[:64]) for name in unknown[:8])
        raise BadRequest(
            f"Unknown field{'s' if len(unknown) > 1 else ''} {shown}. Known fields: {', '.join(sorted(known))}.",
            field=unknown[0][:64],
            unknown=[name[:64] for name in unknown[:8]],
        )


def read_bounded(data: dict[str, Any], name: str, default: int | None, maximum: int) -> Any:
    """An integer field from 1 to `maximum`, or `default` when absent."""
    value = read_field(data, name, int, default=default)
    if value is not None and not 1 <= value <= maximum:
        raise BadRequest(f"{name} must be an integer from 1 to {maximum}.", field=name, max=maximum)
    return value


_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list of strings", bool: "a boolean"}


def read_field(
    data: dict[str, Any],
    name: str,
    kind: type,
    *,
    required: bool = False,
    default: Any = None,
    kind_name: str | None = None,
) -> Any:
    """The field `name` when it is a `kind`, `default` when absent or null; BadRequest otherwise (or when absent and
    `required`)."""
    if name not in data or data[name] is None:
        if required:
            raise BadRequest(f"{name} is required.", field=name)
        return default
    value = data[name]
    # bool is a subclass of int: `"priority": true` is a type error, not priority 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"{name} must be {kind_name or _TYPE_NAMES[kind]}.", field=name)
    return value
