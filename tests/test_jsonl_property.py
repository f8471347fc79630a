"""Property-based tests (hypothesis) of `hadskip predict`'s input reader, runtime/jsonl.py `read_inputs`.

Over thousands of generated inputs (arbitrary bytes, arbitrary JSON values, texts with lone surrogates, huge
and non-finite numbers, deep nesting) every outcome is a list of rows or a one-line HadSkipError, never
another exception; every row can be sent to the tokenizer and written back as JSON, and its index is the
line number it came from.
"""

from __future__ import annotations

import io
import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hadskip.errors import HadSkipError
from hadskip.runtime.jsonl import EMPTY, read_inputs

def fast(max_examples: int) -> settings:
    """Bounded work and no wall-clock deadline (the test machines are shared and busy)."""
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def outcome(lines, fmt: str):
    """The rows read from `lines`, or the error message; any other exception fails the test."""
    try:
        return list(read_inputs(lines, fmt, where="input"))
    except HadSkipError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg and "\r" not in msg, msg
        return msg


def check_rows(rows, n_lines: int) -> None:
    indexes = [r.index for r in rows]
    assert indexes == sorted(set(indexes)) and all(0 <= i < n_lines for i in indexes)
    for r in rows:
        json.loads(json.dumps({"index": r.index, **r.extra, "error": r.error}, allow_nan=False))
        if r.input is None:
            assert r.error == EMPTY
            continue
        texts = [r.input] if isinstance(r.input, str) else list(r.input)
        assert len(texts) in (1, 2) and all(isinstance(t, str) and t.strip() for t in texts)
        for t in texts:
            t.encode("utf-8")  # no lone surrogates reach the tokenizer


def binary_lines(data: bytes) -> list[bytes]:
    return io.BytesIO(data).readlines()  # what iterating an open(..., "rb") file gives


@fast(1000)
@given(st.binary(max_size=400), st.sampled_from(["auto", "jsonl", "txt"]))
def test_arbitrary_bytes(data, fmt):
    lines = binary_lines(data)
    result = outcome(lines, fmt)
    if not isinstance(result, str):
        check_rows(result, len(lines))


chars = st.characters() | st.integers(0xD800, 0xDFFF).map(chr)  # lone surrogates too
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(chars, max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["text", "text_pair", "id", "label"]) | st.text(max_size=4), children, max_size=4),
    max_leaves=8,
)


@fast(400)
@given(st.lists(json_values, min_size=1, max_size=3), st.booleans())
def test_arbitrary_json_values(values, ascii_only):
    # ensure_ascii writes lone surrogates as \ud800 escapes; without it they cannot even be encoded
    text = "\n".join(json.dumps(v, ensure_ascii=ascii_only) for v in values) + "\n"
    data = text.encode("utf-8", errors="surrogatepass")
    lines = binary_lines(data)
    result = outcome(lines, "jsonl")
    if not isinstance(result, str):
        check_rows(result, len(lines))
        # a well-formed record is read as it was written
        for r in result:
            v = values[r.index]
            if r.input is not None:
                assert isinstance(v, str) or r.input in (v["text"], (v["text"], v.get("text_pair")))


surrogate_text = st.text(chars, min_size=1, max_size=20)


@fast(500)
@given(surrogate_text, st.one_of(st.none(), surrogate_text))
def test_texts_with_surrogates(text, pair):
    record = {"text": text} if pair is None else {"text": text, "text_pair": pair}
    lines = [json.dumps(record).encode("ascii")]
    result = outcome(lines, "jsonl")

    def bad(s):  # after JSON decoding, which joins an escaped high + low surrogate into one character
        if s is None:
            return False
        try:
            json.loads(json.dumps(s)).encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    if bad(text) or bad(pair):
        assert isinstance(result, str) and "is not valid Unicode" in result
    else:
        assert not isinstance(result, str)
        check_rows(result, 1)


number_texts = st.one_of(
    st.integers(min_value=-(10 ** 300), max_value=10 ** 300).map(str),
    st.integers(min_value=1, max_value=6000).map(lambda n: "-" * (n % 2) + "9" * n),  # past int() digit limits
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1e-999", "9" * 5000, "0." + "1" * 5000]),
)


@fast(500)
@given(number_texts, st.sampled_from(["id", "text", "label"]))
def test_huge_and_non_finite_numbers(number, key):
    line = '{"text": "a film", "%s": %s}' % (key, number)
    result = outcome([line.encode()], "jsonl")
    if isinstance(result, str):
        return
    check_rows(result, 1)
    assert key != "text"  # a number is never taken for the text
    if key == "id":
        value = result[0].extra["id"]
        assert isinstance(value, int) or math.isfinite(value)


@fast(100)
@given(st.integers(min_value=1, max_value=200_000), st.sampled_from("[{"))
def test_deep_nesting(depth, bracket):
    close = "]" if bracket == "[" else "}"
    inner = bracket * depth + close * depth if bracket == "[" else '{"a":' * depth + "1" + close * depth
    result = outcome([('{"text": "x", "id": %s}' % inner).encode()], "jsonl")
    assert isinstance(result, str) or check_rows(result, 1) is None


@fast(500)
@given(st.lists(st.text(st.characters(exclude_characters="\n\x00", codec="utf-8"), max_size=30), max_size=20))
def test_txt_lines_keep_their_line_numbers(lines):
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    result = outcome(binary_lines(data), "txt")
    assert not isinstance(result, str), result
    assert [r.index for r in result] == list(range(len(lines)))  # one row per line, in place
    for r, line in zip(result, lines, strict=True):
        text = line.removeprefix("\ufeff") if r.index == 0 else line
        text = text.rstrip("\r")
        assert (r.input, r.error) == ((text, None) if text.strip() else (None, EMPTY))
