"""The manifest is checked on load: each kind of damage is refused with the file named (no torch needed)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from hadskip.runtime.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    Manifest,
    ManifestError,
    file_table,
    load_manifest,
    write_manifest,
)

L = 2


def make_model_dir(root: Path, **changes) -> Path:
    """A model dir with stand-in files (the checks are about bytes and names, not graph contents)."""
    units = {"embeddings": "embeddings.onnx", "layers": [f"layers/{i:02d}.onnx" for i in range(L)],
             "gates": [f"gates/{i:02d}.onnx" for i in range(L)], "head": "head.onnx",
             "tokenizer": "tokenizer.json", "engines": None, "baseline": None}
    rels = [units["embeddings"], units["head"], units["tokenizer"], *units["layers"], *units["gates"]]
    for i, rel in enumerate(rels):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(f"graph {i} {rel}".encode() * 10)
    m = Manifest(backbone={"name": "tiny", "model_type": "bert", "num_layers": L, "hidden_size": 8, "num_heads": 2,
                           "vocab_size": 30, "pad_token_id": 0},
                 task={"name": "tiny", "num_labels": 2}, labels=["a", "b"], max_seq_len=16, precision="fp32",
                 engine="onnx", opset=17, units=units, files=file_table(root, rels))
    write_manifest(root, replace(m, **changes))
    return root


def test_a_good_dir_loads(tmp_path):
    m = load_manifest(make_model_dir(tmp_path))
    assert m.num_layers == L and m.schema_version == SCHEMA_VERSION and m.tokenization == {}


def test_a_corrupted_file_is_refused_by_name(tmp_path):
    d = make_model_dir(tmp_path)
    with open(d / "layers" / "01.onnx", "r+b") as fh:
        fh.write(b"X")
    with pytest.raises(ManifestError, match=r"layers/01\.onnx is corrupted"):
        load_manifest(d)
    assert load_manifest(d, verify=False).num_layers == L  # verify=False skips the hashes only


def test_a_truncated_manifest_is_refused_by_name(tmp_path):
    d = make_model_dir(tmp_path)
    text = (d / MANIFEST).read_text()
    (d / MANIFEST).write_text(text[: len(text) // 2])
    with pytest.raises(ManifestError, match=r"manifest\.json is not valid JSON"):
        load_manifest(d)


def test_a_missing_file_is_refused_by_name(tmp_path):
    d = make_model_dir(tmp_path)
    (d / "gates" / "00.onnx").unlink()
    with pytest.raises(ManifestError, match=r"gates/00\.onnx is listed in .*manifest\.json but missing"):
        load_manifest(d)


def test_a_missing_manifest_is_refused(tmp_path):
    d = make_model_dir(tmp_path)
    (d / MANIFEST).unlink()
    with pytest.raises(ManifestError, match=r"manifest\.json is missing"):
        load_manifest(d)


def test_another_schema_version_is_refused(tmp_path):
    d = make_model_dir(tmp_path, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(ManifestError, match=rf"manifest\.json has schema_version {SCHEMA_VERSION + 1}"):
        load_manifest(d)


def test_an_unlisted_unit_file_is_refused(tmp_path):
    d = make_model_dir(tmp_path)
    data = json.loads((d / MANIFEST).read_text())
    del data["files"]["head.onnx"]
    (d / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"head\.onnx is used by .* but has no sha256 entry"):
        load_manifest(d)


@pytest.mark.parametrize("changes,message", [
    ({"opset": 13}, "opset 13"),
    ({"engine": "tflite"}, "engine 'tflite'"),
    ({"precision": "int4"}, "precision 'int4'"),
    ({"engine": "trt"}, "no TensorRT plans"),
])
def test_bad_values_are_refused(tmp_path, changes, message):
    with pytest.raises(ManifestError, match=message) as err:
        load_manifest(make_model_dir(tmp_path, **changes))
    assert MANIFEST in str(err.value)


def test_unknown_or_missing_fields_and_escaping_paths_are_refused(tmp_path):
    d = make_model_dir(tmp_path)
    data = json.loads((d / MANIFEST).read_text())
    (d / MANIFEST).write_text(json.dumps({**data, "surprise": 1}))
    with pytest.raises(ManifestError, match="does not match schema"):
        load_manifest(d)
    (d / MANIFEST).write_text(json.dumps({k: v for k, v in data.items() if k != "units"}))
    with pytest.raises(ManifestError, match="does not match schema"):
        load_manifest(d)
    units = {**data["units"], "head": "../head.onnx"}
    (d / MANIFEST).write_text(json.dumps({**data, "units": units}))
    with pytest.raises(ManifestError, match="leaves the model dir"):
        load_manifest(d)


def test_wrong_layer_count_is_refused(tmp_path):
    d = make_model_dir(tmp_path)
    data = json.loads((d / MANIFEST).read_text())
    data["units"]["gates"] = data["units"]["gates"][:1]
    (d / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="1 gates for a 2-layer model"):
        load_manifest(d)
