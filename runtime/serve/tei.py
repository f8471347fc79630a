"""text-embeddings-inference (TEI) compatibility for `serve-local --api tei` (pure: no web framework).

TEI's /predict grammar, from its router (router/src/http/types.rs, PredictInput's deserializer, read at
github.com/huggingface/text-embeddings-inference):

    "text"                         one text                 -> [{"label", "score"}, ...]
    ["text", "text_pair"]          one pair                 -> [{"label", "score"}, ...]
    [["a"], ["b", "b_pair"], ...]  a batch (1- or 2-lists)  -> [[{"label", "score"}, ...], ...]

plus "truncate" (default false: an input over max_input_length is a 422), "truncation_direction" ("right" /
"left"), "raw_scores" (logits instead of softmax). Each answer is sorted by score, highest first. Unknown fields
are ignored, as TEI's serde structs do (huggingface_hub sends "parameters"). Our extras are opt-in: a
"hadskip": {"budget": 2.5, "max_layers": 2} object; the layers each row ran come back in the `x-hadskip-layers`
header, and with the object (even {}) the budget they ran at in `x-hadskip-budget`. Errors are TEI's
{"error", "error_type"} with its ErrorType names and status codes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hadskip.runtime.serve.request import (MAX_DEPTH, ApiError, _budget, _constant, _depth, _float, _int,
                                           _json_type, _max_layers, _text)

# our error kinds -> TEI's ErrorType (serialized by its variant name: router/src/lib.rs, docs/openapi.json)
ERROR_TYPES = {"validation": "Validation", "payload_too_large": "Validation", "overloaded": "Overloaded",
               "backend": "Backend", "unavailable": "Unhealthy", "empty": "Empty"}


@dataclass
class TeiRequest:
    rows: list  # str | (str, str)
    batch: bool  # the answer is a list of lists
    truncate: bool
    left: bool  # truncation_direction "left"
    raw_scores: bool
    budget: float | None = None
    max_layers: int | None = None
    extras: bool = False  # the request sent a "hadskip" object: the answer says the budget (x-hadskip-budget)


def _invalid(message: str) -> ApiError:
    return ApiError(422, message, "validation")


def parse_tei_predict(body: bytes, max_inputs: int) -> TeiRequest:
    """The body of TEI's POST /predict -> TeiRequest, or ApiError (422 bad input, 413 over the input limit)."""
    if not body.strip():
        raise _invalid('empty body: send a JSON object such as {"inputs": "a fine movie"}')
    if _depth(body) > MAX_DEPTH:
        raise _invalid(f"the body is nested more than {MAX_DEPTH} levels deep")
    try:
        obj = json.loads(body.decode("utf-8"), parse_int=_int, parse_float=_float, parse_constant=_constant)
    except UnicodeDecodeError as exc:
        raise _invalid(f"the body is not valid UTF-8 (byte {exc.start})") from exc
    except ValueError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _invalid(f"the body is not valid JSON: {first[:120]}") from exc
    if not isinstance(obj, dict):
        raise _invalid(f'the body must be a JSON object with an "inputs" field, got {_json_type(obj)}')
    if "inputs" not in obj:
        raise _invalid("missing field `inputs`")
    rows, batch = _inputs(obj["inputs"])
    if len(rows) > max_inputs:
        raise _invalid(f"batch size {len(rows)} > maximum allowed batch size {max_inputs}")
    truncate = _bool(obj, "truncate")
    raw_scores = _bool(obj, "raw_scores")
    direction = obj.get("truncation_direction", "right")
    if direction not in ("left", "Left", "right", "Right"):
        raise _invalid(f'"truncation_direction" must be "left" or "right", got {json.dumps(direction)[:40]}')
    extras = obj.get("hadskip")
    budget = cap = None
    if extras is not None:
        if not isinstance(extras, dict):
            raise _invalid(f'"hadskip" must be an object such as {{"budget": 2.5}}, got {_json_type(extras)}')
        unknown = sorted(k for k in extras if k not in ("budget", "max_layers"))
        if unknown:
            raise _invalid(f'unknown field(s) {", ".join(ascii(k[:40]) for k in unknown[:5])} in "hadskip"; '
                           'the fields are "budget" and "max_layers"')
        budget, cap = _budget(extras.get("budget")), _max_layers(extras.get("max_layers"))
    return TeiRequest(rows, batch, truncate, direction.lower() == "left", raw_scores, budget, cap, extras is not None)


def _bool(obj: dict, name: str) -> bool:
    x = obj.get(name)
    if x is None:  # TEI: Option<bool> / #[serde(default)]
        return False
    if not isinstance(x, bool):
        raise _invalid(f'"{name}" must be true or false, got {_json_type(x)}')
    return x


def _inputs(x: Any) -> tuple[list, bool]:
    expected = "a string, a pair of strings [string, string] or a batch [[string], [string, string], ...]"
    if isinstance(x, str):
        return [_text(x, "inputs")], False
    if not isinstance(x, list) or not x:
        raise _invalid(f'"inputs" must be {expected}, got {"an empty array" if x == [] else _json_type(x)}')
    if isinstance(x[0], str):  # one text or one pair
        if len(x) > 2 or not all(isinstance(s, str) for s in x):
            raise _invalid(f'"inputs" must be {expected}; a list of strings is one text or one pair')
        return [_text(x[0], "inputs[0]") if len(x) == 1 else (_text(x[0], "inputs[0]"), _text(x[1], "inputs[1]"))], \
            False
    rows = []
    for n, item in enumerate(x):
        if not isinstance(item, list) or len(item) not in (1, 2):
            raise _invalid(f'inputs[{n}] must be [text] or [text, text_pair] in a batch, got '
                           + (f"an array of {len(item)}" if isinstance(item, list) else _json_type(item)))
        texts = [_text(s, f"inputs[{n}][{k}]") for k, s in enumerate(item)]
        rows.append(texts[0] if len(texts) == 1 else tuple(texts))
    return rows, True


def answer(prediction: dict, logits: list[float] | None, raw_scores: bool) -> list[dict]:
    """One row's TEI answer: every label with its probability (or logit), highest first."""
    if raw_scores and logits is not None:
        scores = dict(zip(prediction["probs"], logits, strict=True))
    else:
        scores = prediction["probs"]
    return sorted(({"label": k, "score": float(v)} for k, v in scores.items()), key=lambda p: -p["score"])
