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


def rewrite(d: Path, edit) -> None:
    """Apply `edit(data)` to the manifest JSON of d (in place)."""
    data = json.loads((d / MANIFEST).read_text())
    edit(data)
    (d / MANIFEST).write_text(json.dumps(data))


def _set(path: str, value):
    def edit(data):
        *parents, last = path.split(".")
        obj = data
        for key in parents:
            obj = obj[key]
        obj[last] = value
    return edit


def _set_file_meta(key: str, value):
    def edit(data):
        data["files"]["head.onnx"][key] = value
    return edit


@pytest.mark.parametrize("edit,message", [
    (_set("backbone.num_layers", "three"), r"backbone\.num_layers must be a positive integer, got \"three\""),
    (_set("backbone.num_layers", True), r"backbone\.num_layers must be a positive integer, got true"),
    (_set("backbone.num_layers", 2.0), r"backbone\.num_layers must be a positive integer, got 2\.0"),
    (_set("backbone.num_layers", 0), r"backbone\.num_layers must be a positive integer, got 0"),
    (_set("backbone.hidden_size", None), r"backbone\.hidden_size must be a positive integer, got null"),
    (_set("backbone.pad_token_id", "0"), r"backbone\.pad_token_id must be a non-negative integer or null"),
    (_set("backbone.model_type", 7), r"backbone\.model_type must be a string, got 7"),
    (_set("backbone", ["num_layers"]), r": backbone must be an object"),
    (_set("max_seq_len", "16"), r"max_seq_len must be a positive integer, got \"16\""),
    (_set("max_seq_len", -1), r"max_seq_len must be a positive integer, got -1"),
    (_set("labels", "ab"), r"labels must be a non-empty list of strings"),
    (_set("labels", [0, 1]), r"labels must be a non-empty list of strings"),
    (_set("labels", []), r"labels must be a non-empty list of strings"),
    (_set("opset", "17"), r"opset must be an integer, got \"17\""),
    (_set("opset", True), r"opset must be an integer, got true"),
    (_set("engine", ["onnx"]), r"engine must be a string"),
    (_set("precision", None), r"precision must be a string, got null"),
    (_set("budget", "2"), r"budget must be a number or null"),
    (_set("budget", False), r"budget must be a number or null, got false"),
    (_set("units", []), r": units must be an object"),
    (_set("units.layers", "layers/00.onnx"), r"units\.layers must be a list of relative file paths"),
    (_set("units.head", 5), r"units\.head must be a relative file path"),
    (_set("units.head", ""), r"units\.head must be a relative file path"),
    (_set("units.engines", "engines/"), r"units\.engines must be an object or null"),
    (_set("units.baseline", 1), r"units\.baseline must be a relative file path or null"),
    (_set("files", []), r": files must be an object"),
    (_set_file_meta("sha256", 12), r"files\[\"head\.onnx\"\]\.sha256 must be 64 lowercase hex digits"),
    (_set_file_meta("bytes", "12"), r"files\[\"head\.onnx\"\]\.bytes must be a non-negative integer"),
    (_set("validation", {"head": "small"}), r"validation\.head must be a number or null"),
    (_set("task.num_labels", "2"), r"task\.num_labels must be a positive integer"),
    (_set("created", 2024), r"created must be a string"),
    (_set("export", None), r"export must be an object, got null"),
])
def test_wrongly_typed_fields_are_one_line_errors(tmp_path, edit, message):
    d = make_model_dir(tmp_path)
    rewrite(d, edit)
    with pytest.raises(ManifestError, match=message) as err:
        load_manifest(d, verify=False)
    assert "\n" not in str(err.value) and MANIFEST in str(err.value)


@pytest.mark.parametrize("key", ["num_layers", "hidden_size"])
def test_a_missing_backbone_size_is_named(tmp_path, key):
    d = make_model_dir(tmp_path)
    rewrite(d, lambda data: data["backbone"].pop(key))
    with pytest.raises(ManifestError, match=f"backbone lacks {key}"):
        load_manifest(d)


@pytest.mark.parametrize("version", [True, 1.0, "1", None])
def test_schema_version_must_be_the_integer(tmp_path, version):
    d = make_model_dir(tmp_path)
    rewrite(d, _set("schema_version", version))
    with pytest.raises(ManifestError, match=r"schema_version .* this hadskip reads 1"):
        load_manifest(d)


# --- symlinks: nothing a manifest names may resolve outside the model dir ---

def _outside_copy(d: Path, rel: str, outside: Path) -> Path:
    """Move d/rel to outside/ (same bytes, so only the link itself can be what is refused) and link it back."""
    src = d / rel
    dst = outside / rel.replace("/", "_")
    src.rename(dst)
    src.symlink_to(dst)
    return dst


@pytest.mark.parametrize("rel", ["manifest.json", "head.onnx", "tokenizer.json", "layers/01.onnx"])
def test_a_file_linking_outside_is_refused(tmp_path, rel):
    d = make_model_dir(tmp_path / "model")
    (tmp_path / "elsewhere").mkdir()
    _outside_copy(d, rel, tmp_path / "elsewhere")
    for verify in (True, False):
        with pytest.raises(ManifestError, match=r"resolves to .*elsewhere.* outside the model dir") as err:
            load_manifest(d, verify=verify)
        assert "\n" not in str(err.value) and rel.split("/")[-1] in str(err.value)


def test_a_folder_linking_outside_is_refused(tmp_path):
    d = make_model_dir(tmp_path / "model")
    (d / "gates").rename(tmp_path / "gates")
    (d / "gates").symlink_to(tmp_path / "gates", target_is_directory=True)
    with pytest.raises(ManifestError, match=r"gates/00\.onnx resolves to .* outside the model dir"):
        load_manifest(d)


def test_a_listed_extra_file_linking_outside_is_refused(tmp_path):
    d = make_model_dir(tmp_path / "model")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the model dir")
    (d / "notes.txt").symlink_to(secret)

    def add(data):
        data["files"]["notes.txt"] = file_table(d, ["notes.txt"])["notes.txt"]
    rewrite(d, add)
    with pytest.raises(ManifestError, match=r"notes\.txt resolves to .*secret\.txt"):
        load_manifest(d)


def test_links_that_stay_inside_and_a_linked_model_dir_are_fine(tmp_path):
    d = make_model_dir(tmp_path / "model")
    (d / "store").mkdir()
    (d / "head.onnx").rename(d / "store" / "head.onnx")
    (d / "head.onnx").symlink_to(Path("store") / "head.onnx")  # relative, inside
    (tmp_path / "current").symlink_to(d, target_is_directory=True)  # the model dir itself through a link
    assert load_manifest(tmp_path / "current").num_layers == L


def test_a_symlink_loop_is_one_line(tmp_path):
    d = make_model_dir(tmp_path / "model")
    (d / "head.onnx").unlink()
    (d / "head.onnx").symlink_to(d / "head.onnx")
    with pytest.raises(ManifestError) as err:
        load_manifest(d)
    assert "head.onnx" in str(err.value) and "\n" not in str(err.value)


# --- issue 23: bounded JSON, ranges and cross-field rules, each a one-line error naming the field ---

def _raw(d: Path, text: str) -> None:
    (d / MANIFEST).write_text(text)


def _append_field(d: Path, key: str, literal: str) -> None:
    """Add a field to the manifest as a raw JSON literal (what json.dumps would not write)."""
    text = (d / MANIFEST).read_text().rstrip()
    _raw(d, text[:-1] + f', "{key}": {literal}}}')


@pytest.mark.parametrize("key,literal,message", [
    ("tools", "[" * 100_000 + "]" * 100_000, r"nests deeper than 64 levels"),
    ("created", "1" * 5000, r"an integer of 5000 digits; the limit is 20"),
    ("created", "-" + "9" * 400, r"an integer of 400 digits"),
], ids=["100k-deep", "5000-digits", "400-digits-negative"])
def test_deep_nesting_and_huge_integers_are_refused_before_parsing(tmp_path, key, literal, message):
    d = make_model_dir(tmp_path)
    data = json.loads((d / MANIFEST).read_text())
    del data[key]
    _raw(d, json.dumps(data))
    _append_field(d, key, literal)
    with pytest.raises(ManifestError, match=message) as err:
        load_manifest(d)
    assert "\n" not in str(err.value) and MANIFEST in str(err.value)


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path):
    d = make_model_dir(tmp_path, labels=["[" * 200 + '"{', "b"])
    assert load_manifest(d).labels[0].startswith("[[[")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused(tmp_path, literal):
    d = make_model_dir(tmp_path)
    data = json.loads((d / MANIFEST).read_text())
    del data["budget"]
    _raw(d, json.dumps(data))
    _append_field(d, "budget", literal)
    with pytest.raises(ManifestError, match=r"budget must be a finite number, got (nan|inf|-inf)") as err:
        load_manifest(d)
    assert "\n" not in str(err.value)


def test_a_manifest_without_files_is_refused_naming_the_field(tmp_path):
    d = make_model_dir(tmp_path)
    rewrite(d, lambda data: data.pop("files"))
    with pytest.raises(ManifestError, match=r"manifest\.json lacks files"):
        load_manifest(d, verify=False)


def test_optional_tables_may_be_absent(tmp_path):
    d = make_model_dir(tmp_path)
    rewrite(d, lambda data: [data.pop(k) for k in ("validation", "io", "tools", "export", "quantization")])
    assert load_manifest(d).num_layers == L


def test_a_file_of_another_size_is_refused_before_hashing(tmp_path):
    d = make_model_dir(tmp_path)
    with open(d / "head.onnx", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ManifestError, match=r"head\.onnx is corrupted: it has \d+ bytes"):
        load_manifest(d)


def test_an_oversized_manifest_is_refused_without_reading_it(tmp_path):
    from hadskip.runtime import manifest as mf

    d = make_model_dir(tmp_path)
    with pytest.raises(ManifestError, match=r"has \d+ bytes; a manifest has at most 100"):
        mf.read_json(d / MANIFEST, limit=100)


@pytest.mark.parametrize("edit,message", [
    (_set("labels", ["a", "a"]), r"labels must be unique, \"a\" appears twice"),
    (_set("labels", ["a", "b", "c"]), r"task\.num_labels is 2 but labels lists 3"),
    (_set("budget", -0.5), r"budget must be a number of layers within 0\.\.2, got -0\.5"),
    (_set("budget", 2.5), r"budget must be a number of layers within 0\.\.2, got 2\.5"),
    (_set("backbone.pad_token_id", 30), r"backbone\.pad_token_id 30 is outside the vocabulary"),
    (_set("backbone.pad_token_id", -1), r"backbone\.pad_token_id must be a non-negative integer or null"),
    (_set("backbone.type_vocab_size", -2), r"backbone\.type_vocab_size must be a non-negative integer"),
    (_set("backbone.max_position_embeddings", 8), r"max_seq_len 16 is beyond the position table"),
    (_set("max_seq_len", 10**9), r"max_seq_len 1000000000 is over the limit"),
    (_set("backbone.hidden_size", 10**12), r"backbone\.hidden_size 1000000000000 is over the limit"),
])
def test_values_out_of_range_or_inconsistent_are_refused(tmp_path, edit, message):
    d = make_model_dir(tmp_path)
    rewrite(d, edit)
    with pytest.raises(ManifestError, match=message) as err:
        load_manifest(d)
    assert "\n" not in str(err.value) and MANIFEST in str(err.value)


def test_boundary_values_load(tmp_path):
    d = make_model_dir(tmp_path, budget=float(L))
    rewrite(d, _set("backbone.max_position_embeddings", 16))
    rewrite(d, _set("backbone.pad_token_id", 29))
    assert load_manifest(d).budget == L
