"""The torch backend in half precision (`dtype`, `--dtype`): embeddings and layers in bf16 (CPU here; fp16 and bf16
on CUDA in scripts/gpu_check.sh), gates and head in fp32. Gate decisions must agree with fp32 wherever the fp32
margin is farther than TIE_MARGIN from the offset: along each row, the first gate that differs must be within it
(later gates see other hidden states once a decision differs). Logits of rows routed alike within LOGIT_TOL."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hadskip.errors import HadSkipError  # noqa: E402
from hadskip.modeling.torch_backend import TIE_MARGIN, TorchBackend  # noqa: E402
from hadskip.runtime.router import route  # noqa: E402
from hadskip.testing import GateMargins, tiny_model, tiny_run  # noqa: E402

LOGIT_TOL = {"bf16": 0.05}  # measured on the tiny models: <= 0.011 (ModernBERT), <= 0.006 (the others)


def _batch(rng, b, t, vocab):
    lengths = rng.integers(2, t + 1, size=b)
    lengths[0] = t
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(5, vocab, size=(b, t)), 0)
    return ids, mask, np.zeros_like(ids)


@pytest.mark.parametrize("arch", ["bert", "deberta-v2", "modernbert"])
def test_bf16_gates_agree_with_fp32_outside_the_tie_margin(arch):
    fp32 = TorchBackend(tiny_model(arch)[0], "cpu", cuda_graphs="off")
    bf16 = TorchBackend(tiny_model(arch)[0], "cpu", cuda_graphs="off", dtype="bf16")
    assert bf16.name == "torch-cpu-bf16" and next(bf16.model.layers[0].parameters()).dtype == torch.bfloat16
    margins = GateMargins(fp32)
    vocab = int(fp32.model.config.hf_config["vocab_size"])
    rng = np.random.default_rng(0)
    rows = differ = 0
    worst_logit = 0.0
    for _ in range(8):
        ids, mask, tt = _batch(rng, 16, 24, vocab)
        for offset in (0.0, rng.normal(scale=0.5, size=len(ids))):
            margins.seen.clear()
            a, b = route(fp32, ids, mask, tt, gate_offset=offset), route(bf16, ids, mask, tt, gate_offset=offset)
            m = np.stack(margins.seen, axis=1) - np.broadcast_to(offset, (len(ids),))[:, None]  # (B, L) from offset
            for r in np.flatnonzero((a.gates != b.gates).any(axis=1)):
                first = int(np.argmax(a.gates[r] != b.gates[r]))
                assert abs(m[r, first]) <= TIE_MARGIN["bf16"], (arch, r, first, m[r, first])
                differ += 1
            same = ~(a.gates != b.gates).any(axis=1)
            worst_logit = max(worst_logit, float(np.abs(a.logits[same] - b.logits[same]).max(initial=0.0)))
            rows += len(ids)
    assert worst_logit <= LOGIT_TOL["bf16"], worst_logit
    assert worst_logit > 0 and differ < rows // 10  # bf16 did run, and decisions mostly agree


def test_bf16_plumbing_through_runtime_load(tmp_path):
    from hadskip.runtime import Runtime

    run = tiny_run(tmp_path / "run", "bert")
    rt = Runtime.load(run, backend="torch", device="cpu", dtype="bf16")
    ref = Runtime.load(run, backend="torch", device="cpu")
    try:
        be = rt.backend
        assert be.name == "torch-cpu-bf16" and be.dtype == "bf16"
        ids, mask, tt = _batch(np.random.default_rng(1), 4, 10, 60)
        h = be.run_embeddings(ids, mask, tt)
        assert h.dtype == torch.bfloat16 and be.run_layer(0, h, mask).dtype == torch.bfloat16
        assert be.run_gate(0, h, mask).dtype == np.float32 and be.run_head(h, mask).dtype == np.float32
        assert next(be.model.gates.parameters()).dtype == torch.float32  # gates and head stay fp32
        out, want = rt.predict(["a good movie", "bad plot"]), ref.predict(["a good movie", "bad plot"])
        for p, q in zip(out, want, strict=True):
            assert p.probs.keys() == q.probs.keys() and max(abs(p.probs[k] - q.probs[k]) for k in p.probs) < 0.05
    finally:
        rt.close()
        ref.close()


def test_dtype_refusals():
    m = tiny_model("bert")[0]
    with pytest.raises(HadSkipError, match="dtype fp16 needs a CUDA device"):
        TorchBackend(m, "cpu", dtype="fp16")
    with pytest.raises(HadSkipError, match="dtype must be one of fp32, fp16, bf16"):
        TorchBackend(m, "cpu", dtype="half")
    with pytest.raises(HadSkipError, match="device_gates must be one of"):
        TorchBackend(m, "cpu", device_gates="sometimes")
