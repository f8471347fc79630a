"""POST /predict's body -> inputs, and the HTTP errors (pure: no web framework; the property tests drive it).

    body  {"inputs": "text" | ["text" | ["text", "text_pair"], ...], "budget": 2.5 (optional)}
          ->  [str | (str, str), ...] (and the budget: parse_predict_request)

Every failure is an ApiError whose message is one line: 422 malformed JSON, wrong types, empty or invalid text;
413 over the input limit; 400/408/413 from `read_body` (framing, a slow body, a body over the byte limit).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
              type(None): "null"}
CLOSE = {"Connection": "close"}  # a half-sent body: the connection cannot be reused


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
    if not body.strip():
        raise _invalid('empty body: send a JSON object such as {"inputs": "a fine movie"}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(f"the body is not valid UTF-8 (byte {exc.start})") from exc
    try:
        obj = json.loads(text)
    except RecursionError as exc:
        raise _invalid("the body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, or an integer literal over Python's digit limit
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _invalid(f"the body is not valid JSON: {first[:120]}") from exc
    if not isinstance(obj, dict):
        raise _invalid(f'the body must be a JSON object with an "inputs" field, got {_json_type(obj)}')
    unknown = sorted(k for k in obj if k not in ("inputs", "budget"))
    if unknown:
        names = ", ".join(ascii(k[:40]) for k in unknown[:5])
        raise _invalid(f'unknown field(s) {names}; the fields are "inputs" and "budget" (optional)')
    if "inputs" not in obj:
        raise _invalid('the body lacks "inputs"')
    budget = _budget(obj.get("budget"))
    inputs = obj["inputs"]
    if isinstance(inputs, str):
        return [_text(inputs, "inputs")], budget
    if not isinstance(inputs, list):
        raise _invalid(f'"inputs" must be a string or a list of strings / [text, text_pair] pairs, '
                       f"got {_json_type(inputs)}")
    if not inputs:
        raise _invalid('"inputs" is an empty list')
    if len(inputs) > max_inputs:
        raise ApiError(413, f"{len(inputs)} inputs in one request; the limit is {max_inputs} (split the request)",
                       "payload_too_large")
    return [_item(x, f"inputs[{n}]") for n, x in enumerate(inputs)], budget


def _budget(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise _invalid(f'"budget" must be a finite number of layers, got {_json_type(x)}'
                       + (f" {x}" if isinstance(x, float) else ""))
    return float(x)


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


async def read_body(request, limit: int, timeout_s: float) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` (Content-Length or streamed size),
    and with 408 when it has not all arrived `timeout_s` after the headers (a slow or half-sent body)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid Content-Length", "bad_request")
        if int(declared) > limit:
            raise ApiError(413, f"the body has {declared} bytes; the limit is {limit}", "payload_too_large")

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
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g} s", "timeout", CLOSE) from None
