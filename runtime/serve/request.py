"""POST /predict's body -> inputs, and the HTTP errors (pure: no web framework; the property tests drive it).

    body  {"inputs": "text" | ["text" | ["text", "text_pair"], ...], "budget": 2.5 (optional)}
          ->  [str | (str, str), ...] (and the budget: parse_predict_request)

Every failure is an ApiError whose message is one line: 422 malformed JSON, wrong types, empty or invalid text;
413 over the input limit; 400/408/413 from `read_body` (framing, a slow body, a body over the byte limit).
Bounded before and while parsing: nesting deeper than MAX_DEPTH is refused by a scan before the (recursive)
parser runs, a number literal longer than MAX_NUMBER_CHARS by the parser's number hooks (before any int or
float is built), and NaN/Infinity (not JSON) by its constant hook; so no number that is not finite gets in.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

import numpy as np

MAX_DEPTH = 16  # arrays/objects inside each other (a valid body needs 3)
MAX_NUMBER_CHARS = 100  # characters of one number literal
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string (escapes included), to skip its brackets
_BRACKETS = bytes(range(256)).translate(None, b"[]{}")  # every byte but the brackets: deleted for the depth scan

JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
              type(None): "null"}
CLOSE = {"Connection": "close"}  # a half-sent body: the connection cannot be reused


_ABS_PATH = re.compile(r"""(?<![\w:/.~-])(?:/|[A-Za-z]:\\)(?:[^\s/\\'"`]+[/\\])+[^\s/\\'"`,;:)]*""")


def scrub_paths(text: str) -> str:
    """`text` with every absolute path (two or more parts) cut to its last part: server paths stay inside."""
    def last(m: re.Match) -> str:
        parts = [p for p in re.split(r"[/\\]", m.group(0)) if p]
        return parts[-1] if parts else ""

    return _ABS_PATH.sub(last, text)


class ApiError(Exception):
    """An HTTP error answered as {"error": message, "error_type": kind}."""

    def __init__(self, status: int, message: str, kind: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


class Overloaded(ApiError):
    def __init__(self, queued: int, capacity: int):
        super().__init__(429, f"overloaded: {queued} rows are queued (limit {capacity}); retry later",
                         "overloaded", {"Retry-After": "1"})


class BackendFailure(ApiError):
    def __init__(self, exc: BaseException):
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        super().__init__(424, f"inference failed: {type(exc).__name__}" + (f": {text}" if text else ""), "backend")


def _invalid(message: str) -> ApiError:
    return ApiError(422, message, "validation")


def _json_type(x: Any) -> str:
    return JSON_TYPES.get(type(x), type(x).__name__)


def parse_predict_body(body: bytes, max_inputs: int) -> list:
    """The body of POST /predict -> a list of inputs (str or (text, text_pair)), or ApiError (422 / 413)."""
    return parse_predict_request(body, max_inputs)[0]


def parse_predict_request(body: bytes, max_inputs: int) -> tuple[list, float | None]:
    """The body of POST /predict -> (inputs, budget or None), or ApiError (422 / 413). The budget (a target
    average of layers through the model's budget dial) is only checked to be a finite number here."""
    return parse_predict_fields(body, max_inputs)[:2]


def parse_predict_fields(body: bytes, max_inputs: int) -> tuple[list, float | None, int | None]:
    """parse_predict_request plus "max_layers" (a hard per-row cap: a whole number >= 0; the server checks it
    against the model's layer count)."""
    if not body.strip():
        raise _invalid('empty body: send a JSON object such as {"inputs": "a fine movie"}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(f"the body is not valid UTF-8 (byte {exc.start})") from exc
    if _depth(body) > MAX_DEPTH:
        raise _invalid(f"the body is nested more than {MAX_DEPTH} levels deep")
    try:
        obj = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError as exc:  # not reached after the depth scan; kept as a backstop
        raise _invalid("the body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, or an integer literal over Python's digit limit
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _invalid(f"the body is not valid JSON: {first[:120]}") from exc
    if not isinstance(obj, dict):
        raise _invalid(f'the body must be a JSON object with an "inputs" field, got {_json_type(obj)}')
    unknown = sorted(k for k in obj if k not in ("inputs", "budget", "max_layers"))
    if unknown:
        names = ", ".join(ascii(k[:40]) for k in unknown[:5])
        raise _invalid(f'unknown field(s) {names}; the fields are "inputs", "budget" and "max_layers" (optional)')
    if "inputs" not in obj:
        raise _invalid('the body lacks "inputs"')
    budget = _budget(obj.get("budget"))
    cap = _max_layers(obj.get("max_layers"))
    inputs = obj["inputs"]
    if isinstance(inputs, str):
        return [_text(inputs, "inputs")], budget, cap
    if not isinstance(inputs, list):
        raise _invalid(f'"inputs" must be a string or a list of strings / [text, text_pair] pairs, '
                       f"got {_json_type(inputs)}")
    if not inputs:
        raise _invalid('"inputs" is an empty list')
    if len(inputs) > max_inputs:
        raise ApiError(413, f"{len(inputs)} inputs in one request; the limit is {max_inputs} (split the request)",
                       "payload_too_large")
    return [_item(x, f"inputs[{n}]") for n, x in enumerate(inputs)], budget, cap


def _depth(body: bytes) -> int:
    """How deep arrays and objects nest in `body` (strings skipped); exact for valid JSON, and an over-count at
    worst for invalid JSON, which the parser refuses anyway. Linear time, no recursion."""
    brackets = _STRING.sub(b"", body).translate(None, _BRACKETS)
    if not brackets:
        return 0
    b = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((b == ord("[")) | (b == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max())


def _number(literal: str) -> None:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _invalid(f"a number in the body has {len(literal)} characters; at most {MAX_NUMBER_CHARS} are read")


def _int(literal: str) -> int:
    _number(literal)
    return int(literal)


def _float(literal: str) -> float:
    _number(literal)
    return float(literal)  # may still be inf (1e999): refused where a number is used


def _constant(name: str):
    raise _invalid(f"the body is not valid JSON: {name} is not a JSON value")


def _budget(x: Any) -> float | None:
    if x is None:
        return None
    if not isinstance(x, bool) and isinstance(x, (int, float)):
        try:
            value = float(x)
        except OverflowError:  # an integer beyond the float range
            value = math.inf
        if math.isfinite(value):
            return value
    raise _invalid(f'"budget" must be a finite number of layers, got {_json_type(x)}'
                   + (f" {x}" if isinstance(x, float) else ""))


def _max_layers(x: Any) -> int | None:
    if x is None:
        return None
    if not isinstance(x, bool) and isinstance(x, int) and x >= 0:
        return x
    raise _invalid(f'"max_layers" must be a whole number of layers >= 0, got {_json_type(x)}'
                   + (f" {x}" if isinstance(x, (int, float)) and not isinstance(x, bool) else ""))


def _item(x: Any, where: str):
    if isinstance(x, str):
        return _text(x, where)
    if isinstance(x, list):
        if len(x) != 2:
            raise _invalid(f"{where} must be a string or a [text, text_pair] pair, got an array of {len(x)}")
        return _text(x[0], f"{where}[0]"), _text(x[1], f"{where}[1]")
    raise _invalid(f"{where} must be a string or a [text, text_pair] pair, got {_json_type(x)}")


def _text(x: Any, where: str) -> str:
    if not isinstance(x, str):
        raise _invalid(f"{where} must be a string, got {_json_type(x)}")
    if not x.strip():
        raise _invalid(f"{where} is empty")
    try:
        x.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON \ud800 escape
        raise _invalid(f"{where} is not valid Unicode (lone surrogate at {exc.start})") from exc
    return x


async def read_body(request, limit: int, timeout_s) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` (Content-Length or streamed size),
    and with 408 when it has not all arrived within its deadline after the headers (a slow or half-sent body).
    The deadline is `timeout_s`, or `timeout_s(content_length or None)` when it is a function (ServeConfig's
    body_deadline_s: a short base plus an allowance per byte). A client that disconnects meanwhile is a 400."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if re.fullmatch(r"[0-9]{1,18}", declared) is None:  # str.isdigit() takes "²", int() does not
            raise ApiError(400, "invalid Content-Length", "bad_request")
        if int(declared) > limit:
            raise ApiError(413, f"the body has {declared} bytes; the limit is {limit}", "payload_too_large")
    if callable(timeout_s):
        timeout_s = timeout_s(None if declared is None else int(declared))

    async def receive() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the body exceeds the limit of {limit} bytes", "payload_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(receive(), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:.3g} s", "timeout", CLOSE) from None
    except Exception as exc:
        if type(exc).__name__ != "ClientDisconnect":  # starlette's; this module imports no web framework
            raise
        raise ApiError(400, "the client closed the connection before its body arrived", "disconnected",
                       CLOSE) from None
