"""JSON parsed with bounds checked first: nesting depth and integer digits (Python's json would recurse until a
RecursionError, or spend quadratic time on a 100,000-digit integer), and NaN/Infinity found after parsing (no
reader can use them and JSON answers cannot carry them). Torch-free; the manifest reader uses it."""

from __future__ import annotations

import json
import math
import re
from typing import Any

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string literal, escapes included
_BRACKETS = re.compile(r"[\[\]{}]")


class JsonBoundsError(ValueError):
    """The text is not JSON, or breaks a bound; the message is one line, without the source's name."""


def loads_bounded(text: str, max_depth: int, max_int_digits: int) -> Any:
    """json.loads(text) once the nesting is known to stay within `max_depth` levels (brackets inside strings do
    not count) and while every integer has at most `max_int_digits` digits."""
    depth = 0
    for m in _BRACKETS.finditer(_STRING.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > max_depth:
            raise JsonBoundsError(f"nests deeper than {max_depth} levels")

    def integer(digits: str) -> int:
        n = len(digits.lstrip("-"))
        if n > max_int_digits:
            raise JsonBoundsError(f"holds an integer of {n} digits; the limit is {max_int_digits}")
        return int(digits)

    try:
        return json.loads(text, parse_int=integer)
    except json.JSONDecodeError as exc:
        raise JsonBoundsError(f"is not valid JSON (truncated or corrupted?): {exc}") from None
    except RecursionError:  # not reached within max_depth; kept as the last guard
        raise JsonBoundsError("nests too deeply") from None


def first_non_finite(value: Any, path: str = "") -> tuple[str, float] | None:
    """(path, value) of the first NaN or infinity in a parsed JSON value (NaN, Infinity, 1e999), else None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path or "the value", value)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = first_non_finite(v, f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}" if path else k)
        if found is not None:
            return found
    return None
