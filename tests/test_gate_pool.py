"""The attention-pooled gate (--gate-pool attention, issue 19's richer gate input): it reads the tokens, it is
saved and loaded as such, and the exported runtime routes exactly as PyTorch does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_runtime_support import export_dir, padded_batch, reference

from hadskip.modeling.checkpoint import load_run, save_run
from hadskip.modeling.units import Gate
from hadskip.runtime import Runtime
from hadskip.testing import tiny_run


def test_an_attention_gate_sees_which_tokens_matter_and_ignores_padding():
    torch.manual_seed(0)
    gate = Gate(8, 4, pool="attention")
    h = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = gate(h, mask)
    h2 = h.clone()
    h2[0, 3:] = 1e3  # padding changes nothing
    assert torch.allclose(gate(h2, mask), out)
    with torch.no_grad():
        gate.score.weight.zero_()
        gate.score.weight[0, 0] = 50.0  # attend to the token with the largest feature 0
    h3 = h.clone()
    h3[0, 1, 0] = 10.0
    a, b = gate(h3, mask)[0], gate(h, mask)[0]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="gate pool"):
        Gate(8, 4, pool="max")


def test_attention_gates_export_and_route_like_pytorch(tmp_path):
    run = tiny_run(tmp_path / "run")
    model, tokenizer, info = load_run(run)
    model.config.gate_pool = "attention"
    torch.manual_seed(1)
    model.gates = torch.nn.ModuleList(Gate(model.config.hidden_size, 16, 0.0, "attention") for _ in model.layers)
    with torch.no_grad():
        for g in model.gates:
            g.fc1.weight.mul_(12)
            g.fc2.weight.mul_(12)
    save_run(run, model, tokenizer, info)
    again, _, _ = load_run(run)
    assert again.config.gate_pool == "attention" and again.gates[0].score is not None
    md = export_dir(run, tmp_path / "model")
    rt = Runtime.load(md)
    vocab = int(rt.info.manifest.backbone["vocab_size"])
    ids, mask, tt = padded_batch([5, 12, 32, 3, 20, 7, 32, 9, 14, 25, 2, 30], vocab, seed=3)
    got = rt.run_batch(ids, mask, tt)
    logits, gates = reference(run, ids, mask, tt)
    assert 0 < gates.mean() < 1 and len({tuple(r) for r in gates}) > 1  # the test really routes
    np.testing.assert_array_equal(got.gates, gates)
    np.testing.assert_allclose(got.logits, logits, atol=1e-4, rtol=0)
