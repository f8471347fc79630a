"""Export parity: every unit's ONNX graph vs PyTorch, and the whole routed chain vs model(gates="route").

Tiny random BERT, RoBERTa, TinyBERT-shaped (312/12: head size 26), ELECTRA (embedding projection) and
DistilBERT runs, exported once per module.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hadskip.modeling.checkpoint import load_run
from hadskip.export import ExportError, ShapeError, ValidationError, export_model
from hadskip.export.portable import portable_task
from hadskip.modeling.families import FAMILIES
from hadskip.runtime.manifest import IO, SCHEMA_VERSION, load_manifest
from hadskip.testing import tiny_run, tiny_sentences

# every family (hadskip.modeling.families), and TinyBERT's head size 26
ARCHS = [*(f.name for f in FAMILIES), "tinybert"]
ATOL = 1e-4


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feed: dict) -> np.ndarray:
    return sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})[0]


def run_chain(model_dir: Path, ids: np.ndarray, mask: np.ndarray, types: np.ndarray):
    """embeddings -> per layer: gate, then the layer on the open rows only (gather, run, scatter) -> head."""
    m = load_manifest(model_dir)
    h = run(session(model_dir / m.units["embeddings"]), {"input_ids": ids, "attention_mask": mask,
                                                         "token_type_ids": types})
    gates = np.zeros((len(ids), m.num_layers), dtype=bool)
    for i in range(m.num_layers):
        gl = run(session(model_dir / m.units["gates"][i]), {"hidden": h, "attention_mask": mask})  # (B, 2)
        gates[:, i] = gl[:, 1] > gl[:, 0]
        rows = np.nonzero(gates[:, i])[0]
        if len(rows):
            h = h.copy()
            h[rows] = run(session(model_dir / m.units["layers"][i]), {"hidden": h[rows], "attention_mask": mask[rows]})
    return run(session(model_dir / m.units["head"]), {"hidden": h, "attention_mask": mask}), gates


def encode(tokenizer, texts, max_len):
    enc = tokenizer(texts, truncation=True, max_length=max_len, padding=True, return_tensors="np",
                    return_token_type_ids=True)
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64), \
        enc["token_type_ids"].astype(np.int64)


CHAIN_TEXTS = tiny_sentences(24, seed=7, max_words=40)


def balanced_run(path: Path, arch: str) -> Path:
    """A tiny run whose gates each open for about half of CHAIN_TEXTS, so the chain test really routes:
    gate i's open bias is moved by the midpoint of the two middle margins (no row sits on the tie)."""
    from hadskip.modeling.checkpoint import save_run

    model, tokenizer, info = load_run(tiny_run(path, arch))
    ids, mask, types = (torch.from_numpy(a) for a in encode(tokenizer, CHAIN_TEXTS, info.max_len))
    with torch.no_grad():
        for i, gate in enumerate(model.gates):
            out = model(ids, mask, types, gates="route")
            margins = (out.gate_logits[:, i, 1] - out.gate_logits[:, i, 0]).sort().values
            n = len(margins)
            gate.fc2.bias[1] -= (margins[n // 2 - 1] + margins[n // 2]) / 2
    return save_run(path, model, tokenizer, info)


@pytest.fixture(scope="module", params=ARCHS)
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    run_dir = balanced_run(root / "run", request.param)
    report = export_model(run_dir, root / "model", max_batch=8, progress=False)
    model, tokenizer, info = load_run(run_dir)
    return {"arch": request.param, "run": run_dir, "dir": root / "model", "report": report, "model": model,
            "tokenizer": tokenizer, "info": info}


def test_import_is_light():
    code = "import sys, hadskip.export; print(sorted(m for m in ('torch', 'onnx', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_manifest_records_the_export(exported):
    d, info, model = exported["dir"], exported["info"], exported["model"]
    m = load_manifest(d)
    assert m.schema_version == SCHEMA_VERSION and m.engine == "onnx" and m.precision == "fp32" and m.opset >= 17
    assert m.max_seq_len == info.max_len and m.labels == info.task["label_names"]
    assert m.task == portable_task(info.task)  # a folder task by its name only (no build path)
    b = m.backbone
    assert b["model_type"] == model.config.model_type and b["num_layers"] == model.num_layers
    assert b["vocab_size"] == model.config.hf_config["vocab_size"]
    assert b["pad_token_id"] == exported["tokenizer"].pad_token_id
    on_disk = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m.files) == on_disk
    assert set(m.validation) == {"embeddings", "head", *(f"{k}_{i:02d}" for i in range(model.num_layers)
                                                         for k in ("gate", "layer"))}
    assert all(0 <= v <= ATOL for v in m.validation.values())
    assert {"torch", "onnx", "onnxruntime", "tokenizers", "hadskip"} <= set(m.tools)
    assert m.io == IO and m.io_types["layer"] == {"hidden": "float32", "attention_mask": "int64",
                                                  "hidden_out": "float32"}
    assert m.tokenization["max_length"] == info.max_len
    assert not list(d.parent.glob(".model.*"))  # no temp dirs left beside it
    assert json.loads((d / "manifest.json").read_text())["files"] == m.files


def test_graphs_have_shared_io_dynamic_axes_and_one_layernorm_op(exported):
    d, m, model = exported["dir"], load_manifest(exported["dir"]), exported["model"]
    units = {"layer": list(model.layers), "gate": list(model.gates), "head": [model.head],
             "embeddings": [model.embeddings]}
    for kind, paths in (("layer", m.units["layers"]), ("gate", m.units["gates"]), ("head", [m.units["head"]]),
                        ("embeddings", [m.units["embeddings"]])):
        for rel, unit in zip(paths, units[kind], strict=True):
            g = onnx.load(str(d / rel))
            assert max(o.version for o in g.opset_import if o.domain in ("", "ai.onnx")) >= 17
            inputs = [i.name for i in g.graph.input]
            assert inputs == [n for n in IO[kind]["inputs"] if n in inputs]  # unused inputs may be absent
            assert [o.name for o in g.graph.output] == IO[kind]["outputs"]
            for v in [*g.graph.input, *g.graph.output]:
                dims = [x.dim_param for x in v.type.tensor_type.shape.dim]
                assert dims[0] == "batch" and (len(dims) < 3 or dims[1] == "seq"), (rel, v.name, dims)
            ops = [n.op_type for n in g.graph.node]
            # each LayerNorm module of the unit is one op (ModernBERT's layer 0 has no attention norm, its head
            # holds the final norm), plus DeBERTa's LayerNorm of the shared relative embeddings a layer runs
            want_ln = sum(isinstance(x, torch.nn.LayerNorm) for x in unit.modules())
            want_ln += int(kind == "layer" and "rel_norm" in model.shared)
            assert ops.count("LayerNormalization") == want_ln and "ReduceMean" not in ops, (rel, ops)
    assert [i.name for i in onnx.load(str(d / m.units["layers"][0])).graph.input] == IO["layer"]["inputs"]


@pytest.mark.parametrize("batch,seq", [(1, 1), (3, 7), (6, 32)])
def test_every_unit_matches_pytorch_on_padded_batches(exported, batch, seq):
    d, model, m = exported["dir"], exported["model"], load_manifest(exported["dir"])
    g = torch.Generator().manual_seed(100 + batch * seq)
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    lengths[0] = seq
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()  # (B, T) right-padded
    pad = exported["tokenizer"].pad_token_id
    ids = torch.where(mask.bool(), torch.randint(5, m.backbone["vocab_size"], (batch, seq), generator=g), pad)
    types = torch.zeros_like(ids)
    hidden = torch.randn(batch, seq, model.config.hidden_size, generator=g)
    with torch.no_grad():
        refs = {m.units["embeddings"]: model.embeddings(ids, mask, types), m.units["head"]: model.head(hidden, mask)}
        for i in range(model.num_layers):
            refs[m.units["layers"][i]] = model.layers[i](hidden, mask)
            refs[m.units["gates"][i]] = model.gates[i](hidden, mask)
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy(),
            "hidden": hidden.numpy()}
    for rel, ref in refs.items():
        got = run(session(d / rel), feed)
        assert got.shape == tuple(ref.shape), rel
        assert np.abs(got - ref.numpy()).max() <= ATOL, rel


def test_tokenizer_json_gives_the_hf_ids(exported):
    from tokenizers import Tokenizer

    tok, hf, max_len = Tokenizer.from_file(str(exported["dir"] / "tokenizer.json")), exported["tokenizer"], \
        exported["info"].max_len
    texts = tiny_sentences(12, seed=3, max_words=60)  # some longer than max_len: truncation
    for batch in (texts, texts[:1], [(a, b) for a, b in zip(texts, reversed(texts), strict=True)]):
        ours = tok.encode_batch(batch)
        args = ([a for a, _ in batch], [b for _, b in batch]) if isinstance(batch[0], tuple) else (batch,)
        ref = hf(*args, truncation=True, max_length=max_len, padding=True, return_token_type_ids=True)
        assert [e.ids for e in ours] == ref["input_ids"]
        assert [e.attention_mask for e in ours] == ref["attention_mask"]
        assert [e.type_ids for e in ours] == ref["token_type_ids"]
    assert max(len(e.ids) for e in tok.encode_batch(texts)) == max_len


def test_routed_chain_matches_pytorch_route(exported):
    d, model, max_len = exported["dir"], exported["model"], exported["info"].max_len
    ids, mask, types = encode(exported["tokenizer"], CHAIN_TEXTS, max_len)
    logits, gates = run_chain(d, ids, mask, types)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types), gates="route")
    margin = (ref.gate_logits[..., 1] - ref.gate_logits[..., 0]).abs()
    assert margin.min() > 1e-3  # decisions clearly away from the tie, so they must agree exactly
    assert np.array_equal(gates, ref.gates.bool().numpy())
    assert all(0 < p < 1 for p in gates.mean(axis=0))  # every layer runs on some rows and skips others
    assert np.abs(logits - ref.logits.numpy()).max() <= ATOL


def test_failed_validation_leaves_no_model_dir(tmp_path, monkeypatch):
    from hadskip.export import units

    run_dir = tiny_run(tmp_path / "run", "bert")
    forward = units.LayerForExport.forward
    monkeypatch.setattr(units.LayerForExport, "forward", lambda self, h, m: forward(self, h, m) + 1e-3)
    with pytest.raises(ValidationError) as err:
        export_model(run_dir, tmp_path / "model", max_batch=4, progress=False)
    assert err.value.unit == "layer_00" and err.value.max_abs_diff > 1e-4 and "layer_00" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no model dir, no temp dir


def test_shape_mismatch_is_a_shape_error(tmp_path):
    from hadskip.export.spec import validate
    from hadskip.export.units import build_specs, export_onnx

    model, _, _ = load_run(tiny_run(tmp_path / "run", "bert"))
    specs = {s.name: s for s in build_specs(model, vocab_size=50, pad_token_id=0, type_vocab_size=2)}
    export_onnx(specs["layer_00"], tmp_path / "layer.onnx")
    with pytest.raises(ShapeError) as err:  # a (B, T, H) graph checked as the (B, 2) head
        validate(specs["head"], tmp_path / "layer.onnx", [(2, 5)])
    assert err.value.unit == "head" and err.value.got[-1] == model.config.hidden_size


def test_out_dir_rules(exported, tmp_path):
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a hadskip model dir"):
        export_model(exported["run"], stranger, progress=False)
    assert (stranger / "notes.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="opset"):
        export_model(exported["run"], tmp_path / "m", opset=13, progress=False)


def test_reexport_replaces_a_model_dir_removing_only_its_listed_files(tmp_path):
    run_dir = tiny_run(tmp_path / "run", "bert")
    first = export_model(run_dir, tmp_path / "model", max_batch=2, progress=False)
    d = tmp_path / "model"
    # a file an earlier export wrote and listed, which this export does not write: it goes
    (d / "extra").mkdir()
    (d / "extra" / "old.onnx").write_bytes(b"old graph")
    data = json.loads((d / "manifest.json").read_text())
    data["files"]["extra/old.onnx"] = {"sha256": hashlib.sha256(b"old graph").hexdigest(), "bytes": 9}
    (d / "manifest.json").write_text(json.dumps(data))
    second = export_model(run_dir, d, max_batch=2, progress=False)
    assert first.out_dir == second.out_dir and not (d / "extra").exists()
    load_manifest(d)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "run"]


def test_a_damaged_export_is_refused_naming_the_file(exported, tmp_path):
    import shutil

    from hadskip.runtime.manifest import ManifestError

    d = tmp_path / "copy"
    shutil.copytree(exported["dir"], d)
    with open(d / "layers" / "00.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ManifestError, match=r"layers/00\.onnx is corrupted"):
        load_manifest(d)
