"""--with-baseline: the full teacher through optimum-onnx, one graph ids -> logits, vs model(gates="off")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hadskip.checkpoint import load_run
from hadskip.export import export_model
from hadskip.runtime.manifest import load_manifest
from hadskip.testing import tiny_run, tiny_sentences

from test_export import encode, run, session  # tests/ is on sys.path under pytest

pytest.importorskip("optimum.exporters.onnx")


@pytest.mark.parametrize("arch,optimize", [("bert", True), ("roberta", False)])
def test_baseline_is_the_teacher(arch, optimize, tmp_path):
    run_dir = tiny_run(tmp_path / "run", arch)
    report = export_model(run_dir, tmp_path / "model", with_baseline=True, optimize=optimize, max_batch=4,
                          progress=False)
    d, m = tmp_path / "model", load_manifest(tmp_path / "model")  # sha256 of every baseline file checked too
    assert m.units["baseline"] == "baseline/model.onnx" and report.baseline["path"] == "baseline/model.onnx"
    assert {"baseline/model.onnx", "baseline/config.json", "baseline/tokenizer.json"} <= set(m.files)
    assert m.validation["baseline"] <= 1e-4 and "optimum-onnx" in m.tools
    config = json.loads((d / "baseline" / "config.json").read_text())
    assert config["id2label"] == {"0": "label0", "1": "label1"}

    model, tokenizer, info = load_run(run_dir)
    ids, mask, types = encode(tokenizer, tiny_sentences(10, seed=5, max_words=40), info.max_len)
    logits = run(session(d / "baseline" / "model.onnx"), {"input_ids": ids, "attention_mask": mask,
                                                         "token_type_ids": types})
    with torch.no_grad():
        ref = model(*(torch.from_numpy(a) for a in (ids, mask, types)), gates="off").logits
    assert np.abs(logits - ref.numpy()).max() <= 1e-4
    if optimize:  # the anchor gets the same fusions as our layers (like with like in the benchmarks)
        b = m.optimization["baseline"]
        assert b["mode"] == "ort-fused" and b["fused_ops"]["Attention"] == m.num_layers

