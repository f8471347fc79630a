"""The tampered-model-dir attack as a property: mutate a real tiny model dir's manifest.json (any field set to a
hostile JSON value, deleted or added; two unit graphs swapped and re-hashed; the raw text truncated, nested
or given a huge number) and load it. Either it loads and predicts (finite probabilities, one per distinct
label, answers that serialize as strict JSON), or it raises HadSkipError with a one-line message: never any
other exception, never a load that fails later at predict time."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runtime_support import cached_model

from hadskip.errors import HadSkipError
from hadskip.runtime import Runtime
from hadskip.runtime.manifest import MANIFEST, file_table

INPUTS = ["a good movie", ("the plot", "was thin"), "bad " * 40]
PATHS = ["", ".", "..", "../head.onnx", "/etc/hostname", "head.onnx", "embeddings.onnx", "layers/00.onnx",
         "gates/01.onnx", "tokenizer.json", "layers", "a\x00b", "x" * 300, "manifest.json"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.integers(-3, 200),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(PATHS),
    st.sampled_from(["fp32", "fp16", "int8", "onnx", "trt", "fused", "separate", "bert", "roberta"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                      max_leaves=10)
UNIT_FILES = ["embeddings.onnx", "head.onnx", "layers/00.onnx", "layers/02.onnx", "gates/00.onnx", "gates/02.onnx",
              "tokenizer.json"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return cached_model(tmp_path_factory, "bert", 0)[1]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mutants")


def locations(obj, prefix=()) -> list[tuple]:
    """Every path (a tuple of keys and indices) to a value inside obj, obj itself excluded."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out.extend(locations(v, (*prefix, k)))
    return out


def parent_of(data, path: tuple):
    for k in path[:-1]:
        data = data[k]
    return data


def check(d: Path) -> None:
    """Load and predict: success with sane answers, or one HadSkipError line."""
    try:
        rt = Runtime.load(d)
    except HadSkipError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        return
    with rt:
        assert len(set(rt.labels)) == len(rt.labels)
        preds = rt.predict(INPUTS, batch_size=2)
        assert preds.probabilities.shape == (len(INPUTS), len(rt.labels))
        assert np.isfinite(preds.probabilities).all()
        json.dumps(preds.to_dicts(), allow_nan=False)
        assert rt.info.budget is None or np.isfinite(rt.info.budget)


def mutant(base: Path, scratch: Path) -> Path:
    d = scratch / uuid.uuid4().hex[:12]
    shutil.copytree(base, d)
    return d


SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(data=st.data())
def test_a_mutated_manifest_loads_and_predicts_or_is_one_line(base, scratch, data):
    d = mutant(base, scratch)
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        for _ in range(data.draw(st.integers(1, 3), label="mutations")):
            where = data.draw(st.sampled_from(locations(manifest)), label="path")
            parent, key = parent_of(manifest, where), where[-1]
            action = data.draw(st.sampled_from(["set", "set", "near", "delete", "add", "duplicate"]), label="action")
            current = parent[key]
            if action == "near" and isinstance(current, (int, float)) and not isinstance(current, bool):
                parent[key] = current + data.draw(st.sampled_from([-1, 1, -current, 10 ** 6, 0.5]), label="delta")
            elif action == "delete":
                del parent[key]
            elif action == "add" and isinstance(current, dict):
                current[data.draw(st.text(max_size=10), label="key")] = data.draw(VALUES, label="value")
            elif action == "duplicate" and isinstance(current, list) and current:
                current.append(current[0])
            else:
                parent[key] = data.draw(VALUES, label="value")
        (d / MANIFEST).write_text(json.dumps(manifest))  # NaN and Infinity are written as such
        check(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@SETTINGS
@given(a=st.sampled_from(UNIT_FILES), b=st.sampled_from(UNIT_FILES), also=st.sampled_from([None, "labels",
                                                                                             "hidden"]))
def test_swapped_unit_files_with_matching_hashes_are_refused_or_harmless(base, scratch, a, b, also):
    d = mutant(base, scratch)
    try:
        x, y = (d / a).read_bytes(), (d / b).read_bytes()
        (d / a).write_bytes(y)
        (d / b).write_bytes(x)
        manifest = json.loads((d / MANIFEST).read_text())
        manifest["files"] = file_table(d, list(manifest["files"]))  # re-hashed: only the cross-checks can tell
        if also == "labels":
            manifest["labels"] = [*manifest["labels"], "extra"]
            manifest["task"]["num_labels"] = len(manifest["labels"])
        elif also == "hidden":
            manifest["backbone"]["hidden_size"] *= 2
        (d / MANIFEST).write_text(json.dumps(manifest))
        check(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@SETTINGS
@given(cut=st.floats(0, 1), insert=st.sampled_from(["", "[" * 5000, "{\"a\":" * 3000, "9" * 4400, "-" + "1" * 400,
                                                      "NaN", "1e999", "\"\\ud800\"", "\x00", "\xff"]),
       at=st.floats(0, 1))
def test_raw_manifest_text_damage_is_one_line(base, scratch, cut, insert, at):
    d = mutant(base, scratch)
    try:
        text = (d / MANIFEST).read_text()
        i = int(at * len(text))
        text = text[:i] + insert + text[i:]
        text = text[: max(1, int(len(text) * (1 - cut * cut)))] if cut > 0.5 else text
        (d / MANIFEST).write_bytes(text.encode("utf-8", "surrogatepass"))
        check(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
