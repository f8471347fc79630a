"""The POST /predict body parser (runtime/serve/request.py) over thousands of generated bodies (hypothesis):
arbitrary bytes, arbitrary JSON values with and without the "inputs" field, valid bodies cut or with a byte
changed, deep nesting and huge numbers. Every outcome is a list of inputs that follows the documented shape, or
an ApiError (413/422) whose message is one printable line; never another exception, never a hang."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hadskip.runtime.serve.request import ApiError, parse_predict_body

MAX_INPUTS = 8
SETTINGS = settings(max_examples=600, deadline=1000, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
JSON_SETTINGS = settings(SETTINGS, max_examples=300)  # generating nested JSON costs more than parsing it

ALPHABET = list("ab fine movie\t\n\"\\{}[],:0") + ["\u2028", "\x00", "\x7f", "\ufeff", "\U0001f600", "\u00e9",
                                                    "\u0301", "\u3000", "\ud7ff", "\ue000", "\U0010ffff"]
json_text = st.text(st.sampled_from(ALPHABET), max_size=20) | st.sampled_from(["", " ", "a fine movie", "\\ud800"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | json_text,
    lambda kids: st.lists(kids, max_size=10) | st.dictionaries(json_text, kids, max_size=4),
    max_leaves=8)
inputs_values = st.one_of(
    json_text,
    st.lists(json_text | st.lists(json_text, min_size=0, max_size=3), max_size=12),
    json_values)


def check(body: bytes) -> None:
    try:
        out = parse_predict_body(body, MAX_INPUTS)
    except ApiError as exc:
        assert exc.status in (413, 422) and exc.kind in ("validation", "payload_too_large")
        assert exc.message and exc.message.isprintable() and len(exc.message) <= 400, exc.message
        return
    assert isinstance(out, list) and 1 <= len(out) <= MAX_INPUTS
    obj = json.loads(body.decode("utf-8"))
    want = [obj["inputs"]] if isinstance(obj["inputs"], str) else obj["inputs"]
    assert out == [x if isinstance(x, str) else tuple(x) for x in want]  # the documented shape, in order
    for x in out:
        for text in (x,) if isinstance(x, str) else x:
            assert isinstance(text, str) and text.strip()
            text.encode("utf-8")  # no lone surrogate


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes(body):
    check(body)


@JSON_SETTINGS
@given(inputs_values, st.dictionaries(json_text, json_values, max_size=2), st.booleans())
def test_json_bodies(inputs, extra, with_inputs):
    obj = {**extra, "inputs": inputs} if with_inputs else extra
    check(json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@JSON_SETTINGS
@given(json_values)
def test_any_json_value(value):
    check(json.dumps(value).encode())


@SETTINGS
@given(st.lists(json_text, min_size=1, max_size=MAX_INPUTS), st.floats(0, 1, exclude_max=True),
       st.integers(0, 255), st.booleans())
def test_valid_bodies_cut_or_changed(texts, where, byte, cut):
    body = bytearray(json.dumps({"inputs": texts}).encode())
    at = int(where * len(body))
    if cut:
        del body[at:]
    else:
        body[at] = byte
    check(bytes(body))


@settings(max_examples=60, deadline=2000, derandomize=True)
@given(st.integers(1, 200_000), st.sampled_from(["[", "{\"a\":", "[[", " "]), st.booleans())
def test_deep_nesting_and_huge_numbers(depth, opener, number):
    body = ('{"inputs": ' + "9" * depth + "}") if number else ('{"inputs": ' + opener * depth)
    check(body.encode())
