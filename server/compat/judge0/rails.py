"""Rails' casts and validations as Judge0's Submission model applies them: numericality, booleans, text columns
and the words of compiler options and arguments."""

from __future__ import annotations

import math
import re
import shlex
from decimal import Decimal
from typing import Any

from .attributes import ruby_decode64

# Rails' numericality accepts numbers and numeric strings. Longer texts are not numbers here: the pattern and
# Decimal stay cheap, and no limit or id needs more digits.
_NUMERIC = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
MAX_NUMBER_CHARS = 64
# Judge0's ids are integer columns; anything outside is no language, decided before int() (an exponent like 1e600000
# would take seconds to become an int).
MAX_ID = 2**31 - 1
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "off", "OFF"})
# Characters Judge0 deletes from compiler options and arguments before they reach its bash script.
_SHELL_META = re.compile(r"[$&;<>|`]")


def numeric(
    params: dict[str, Any],
    name: str,
    errors: dict[str, list[str]],
    *,
    low: float | None = None,
    above: float | None = None,
    high: float,
) -> Decimal | None:
    """Rails' numericality: None when absent (the default applies), else the number within its bounds."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or not (
        (isinstance(raw, int | float) and math.isfinite(raw))
        or (isinstance(raw, str) and len(raw) <= MAX_NUMBER_CHARS and _NUMERIC.fullmatch(raw))
    ):
        errors.setdefault(name, []).append("is not a number")
        return None
    value = Decimal(str(raw).strip())
    if above is not None and value <= above:
        errors.setdefault(name, []).append(f"must be greater than {above}")
    if low is not None and value < low:
        errors.setdefault(name, []).append(f"must be greater than or equal to {low}")
    if value > high:
        errors.setdefault(name, []).append(f"must be less than or equal to {high}")
    return value


def boolean(raw: Any) -> bool | None:
    """Rails' boolean cast: blank is nil, its false values are false, anything else true."""
    if raw is None or raw == "":
        return None
    return not (raw is False or raw == 0 or str(raw) in _FALSE)


def text_column(raw: Any, base64_encoded: bool) -> bytes | None:
    if raw is None:
        return None
    text = raw if isinstance(raw, str) else orjson_text(raw)
    return ruby_decode64(text) if base64_encoded else text.encode("utf-8", "surrogatepass")


def orjson_text(value: Any) -> str:
    """A JSON number or boolean as Rails' to_s writes it into a string column."""
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


def words(raw: Any, name: str, errors: dict[str, list[str]]) -> tuple[str | None, list[str]]:
    """compiler_options / command_line_arguments: at most 512 characters, split as bash would split them after
    Judge0 removed $&;<>|` (they go into a bash script upstream; here into argv, no shell)."""
    if raw is None or raw == "":
        return None, []
    text = orjson_text(raw) if not isinstance(raw, str) else raw
    if len(text) > 512:
        errors.setdefault(name, []).append("is too long (maximum is 512 characters)")
        return text, []
    try:
        return text, shlex.split(_SHELL_META.sub("", text))
    except ValueError:
        errors.setdefault(name, []).append("has an unbalanced quote")
        return text, []
