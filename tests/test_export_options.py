"""Export options: onnxruntime fusion of the layer graphs (and its fallback), fp16 graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from hadskip.modeling.checkpoint import load_run
from hadskip.export import export_model
from hadskip.export.spec import FP16_ATOL
from hadskip.runtime.manifest import load_manifest
from hadskip.testing import tiny_run, tiny_sentences

from test_export import encode, run, run_chain, session  # tests/ is on sys.path under pytest


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("opt") / "run", "tinybert")  # head size 26


def test_optimize_fuses_every_layer_and_keeps_parity(run_dir, tmp_path):
    report = export_model(run_dir, tmp_path / "model", optimize=True, max_batch=4, progress=False)
    m = load_manifest(tmp_path / "model")
    assert m.optimization["layers"] == "ort-fused"
    for i, rel in enumerate(m.units["layers"]):
        want = {"Attention": 1, "SkipLayerNormalization": 2, "BiasGelu": 1}
        assert m.optimization["fused_ops"][f"layer_{i:02d}"] == want
        ops = [n.op_type for n in onnx.load(str(tmp_path / "model" / rel)).graph.node]
        assert ops.count("Attention") == 1 and "Softmax" not in ops
    assert all(u.optimization == "ort-fused" for u in report.units if u.name.startswith("layer_"))
    model, tokenizer, info = load_run(run_dir)
    ids, mask, types = encode(tokenizer, tiny_sentences(9, seed=1, max_words=40), info.max_len)
    logits, gates = run_chain(tmp_path / "model", ids, mask, types)
    with torch.no_grad():
        ref = model(*(torch.from_numpy(a) for a in (ids, mask, types)), gates="route")
    assert np.array_equal(gates, ref.gates.bool().numpy())
    assert np.abs(logits - ref.logits.numpy()).max() <= 1e-4


def test_a_fused_graph_failing_validation_is_not_kept(run_dir, tmp_path, monkeypatch):
    from hadskip.export import optimize

    fuse = optimize.fuse_bert_layer

    def broken_fuse(src, dst, num_heads, hidden_size):
        stats = fuse(src, dst, num_heads, hidden_size)
        g = onnx.load(str(dst))
        init = max(g.graph.initializer, key=lambda t: np.prod(t.dims))  # the largest weight: perturb it
        arr = onnx.numpy_helper.to_array(init) + 0.1
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        onnx.save(g, str(dst))
        return stats

    monkeypatch.setattr(optimize, "fuse_bert_layer", broken_fuse)
    report = export_model(run_dir, tmp_path / "model", optimize=True, max_batch=4, progress=False)
    m = load_manifest(tmp_path / "model")
    assert m.optimization["layers"] == "none" and set(m.optimization["not_kept"]) == {"layer_00", "layer_01"}
    assert "max abs diff" in m.optimization["not_kept"]["layer_00"]
    assert all(u.optimization == "none" and u.max_abs_diff <= 1e-4 for u in report.units)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "model" / m.units["layers"][0])).graph.node]
    assert "Attention" not in ops and "LayerNormalization" in ops


@pytest.mark.parametrize("optimize", [False, True])
def test_fp16_graphs_keep_gates_and_layernorm_fp32(run_dir, tmp_path, optimize):
    report = export_model(run_dir, tmp_path / "model", fp16=True, optimize=optimize, max_batch=4, progress=False)
    d, m = tmp_path / "model", load_manifest(tmp_path / "model")
    assert m.precision == "fp16" and report.precision == "fp16"
    assert m.optimization["layers"] == ("ort-fused" if optimize else "none")
    assert m.io_types["layer"]["hidden"] == "float32"  # io stays fp32: the runtime loop never casts

    def init_types(rel):
        return {t.data_type for t in onnx.load(str(d / rel)).graph.initializer if len(t.dims) >= 2}

    assert init_types(m.units["layers"][0]) == {onnx.TensorProto.FLOAT16}
    assert all(init_types(rel) == {onnx.TensorProto.FLOAT} for rel in m.units["gates"])
    g = onnx.load(str(d / m.units["layers"][0])).graph
    assert sum(n.op_type == "LayerNormalization" for n in g.node) == (0 if optimize else 2)  # fused: SkipLN
    casts_to = {n.output[0]: n for n in g.node}
    for ln in (n for n in g.node if n.op_type == "LayerNormalization"):
        src = casts_to.get(ln.input[0])
        assert src is not None and src.op_type == "Cast"  # fed an fp32 cast, i.e. runs in fp32
        assert next(a.i for a in src.attribute if a.name == "to") == onnx.TensorProto.FLOAT
    assert all(v <= FP16_ATOL for v in m.validation.values())
    assert max(m.validation[k] for k in m.validation if k.startswith("gate")) <= 1e-4
    h = np.random.default_rng(0).standard_normal((2, 5, 312)).astype(np.float32)
    assert run(session(d / m.units["layers"][0]), {"hidden": h, "attention_mask": np.ones((2, 5), np.int64)}
               ).dtype == np.float32
