"""One gate rule and one routing loop: the PyTorch mirror `hadskip.modeling.encoder.gate_open` against the runtime's
`hadskip.runtime.router.gate_open` bit for bit (ties, signed zeros, infinities, NaN, subnormal gaps, fp16,
offsets), and the PyTorch eval loop (`GatedEncoder(gates="route")`) against the runtime's `route` on the same
units at several gate offsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_runtime_support import cached_model, one_torch_thread, padded_batch  # noqa: F401

from hadskip.errors import HadSkipError
from hadskip.modeling.units import gate_open as torch_gate_open
from hadskip.runtime.router import gate_margin, gate_open, route

SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e-30, np.inf, -np.inf, 3e38, -3e38, np.nan]


def _logits(rng, n: int, dtype) -> np.ndarray:
    """(n, 2) random gate logits of which many rows tie, or differ by one ulp, or hold special values."""
    z = (rng.standard_normal((n, 2)) * rng.choice([1e-3, 1.0, 30.0], (n, 1))).astype(dtype)
    tie = rng.random(n) < 0.2
    z[tie, 1] = z[tie, 0]
    ulp = (rng.random(n) < 0.1) & ~tie
    z[ulp, 1] = np.nextafter(z[ulp, 0], rng.choice([-np.inf, np.inf], ulp.sum()).astype(dtype))
    tiny = rng.random(n) < 0.05  # subnormal gaps: a margin that a flush-to-zero rule would call a tie
    z[tiny] = np.finfo(dtype).smallest_subnormal * rng.integers(0, 4, (tiny.sum(), 2))
    special = np.asarray(SPECIAL, dtype=np.float64).astype(dtype)
    odd = rng.random((n, 2)) < 0.03
    z[odd] = rng.choice(special, odd.sum())
    return z


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_torch_gate_rule_is_the_runtime_rule(dtype):
    rng = np.random.default_rng(0)
    with np.errstate(over="ignore", invalid="ignore"):
        z = _logits(rng, 20000, dtype)
    zt = torch.from_numpy(z)
    with np.errstate(invalid="ignore"):  # inf - inf
        margins = gate_margin(z)
    finite = margins[np.isfinite(margins)]
    offsets = [0.0, -0.0, np.inf, -np.inf, np.nan, *rng.standard_normal(20) * 3, *rng.choice(finite, 20)]
    seen_open = seen_closed = 0
    for offset in offsets:
        with np.errstate(invalid="ignore"):
            want = gate_open(z, offset)
        np.testing.assert_array_equal(torch_gate_open(zt, offset).numpy(), want, err_msg=f"offset {offset}")
        seen_open, seen_closed = seen_open + want.sum(), seen_closed + (~want).sum()
        if offset == offset and np.isfinite(offset):  # a row whose margin equals the offset is a tie: closed
            assert not want[margins == offset].any()
    assert seen_open > 1000 and seen_closed > 1000
    # offset 0 is today's rule: runtime `logit_open > logit_closed`; PyTorch argmax, ties to index 0 (closed)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(gate_open(z), z[:, 1] > z[:, 0])
    ok = ~np.isnan(z).any(axis=1)  # torch.argmax calls NaN the largest; the rule calls a NaN margin closed
    np.testing.assert_array_equal(gate_open(z[ok]), (zt[ok].argmax(dim=-1) == 1).numpy())
    ties = z[ok][z[ok][:, 0] == z[ok][:, 1]]
    assert len(ties) > 1000 and not gate_open(ties).any()


def test_gate_rule_is_monotone_in_the_offset():
    z = _logits(np.random.default_rng(1), 5000, np.float32)
    counts = [gate_open(z, x).sum() for x in (-np.inf, -5.0, -0.5, 0.0, 0.5, 5.0, np.inf)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1] == 0


@pytest.mark.usefixtures("one_torch_thread")
def test_pytorch_eval_loop_is_the_runtime_loop(tmp_path_factory):
    """The same PyTorch units through GatedEncoder(gates="route") and through the runtime's `route`
    (hadskip.modeling.torch_backend): identical gates and logits within float noise, at several gate offsets."""
    from hadskip.modeling.checkpoint import load_model
    from hadskip.modeling.torch_backend import TorchBackend

    run, _ = cached_model(tmp_path_factory, "bert", 0)
    model = load_model(run)
    backend = TorchBackend(model, "cpu")
    ids, mask, tt = padded_batch([5, 12, 32, 3, 20, 7, 32, 9, 14, 25, 2, 30], model.config.hf_config["vocab_size"],
                                 seed=3)
    patterns = set()
    for offset in (-2.0, -0.3, 0.0, 0.3, 2.0):
        with torch.no_grad():
            ref = model(*(torch.from_numpy(a) for a in (ids, mask, tt)), gates="route", gate_offset=offset)
            hard = model(*(torch.from_numpy(a) for a in (ids, mask, tt)), gates="hard", gate_offset=offset)
        got = route(backend, ids, mask, tt, gate_offset=offset)
        np.testing.assert_array_equal(got.gates, ref.gates.numpy().astype(bool), err_msg=f"offset {offset}")
        np.testing.assert_array_equal(hard.gates.numpy(), ref.gates.numpy())
        np.testing.assert_allclose(got.logits, ref.logits.numpy(), atol=1e-5, rtol=0)
        patterns.add(got.gates.tobytes())
    assert len(patterns) >= 3  # the offsets really change which layers run
    forced = np.random.default_rng(4).random((len(ids), model.num_layers)) < 0.5
    with torch.no_grad():
        ref = model(*(torch.from_numpy(a) for a in (ids, mask, tt)), gates="route", forced=torch.from_numpy(forced))
    got = route(backend, ids, mask, tt, forced=forced)
    np.testing.assert_array_equal(got.gates, forced)
    np.testing.assert_allclose(got.logits, ref.logits.numpy(), atol=1e-5, rtol=0)


@pytest.mark.usefixtures("one_torch_thread")
def test_max_layers_caps_every_row_in_both_loops(tmp_path_factory):
    """The per-request hard cap: a row never runs more than max_layers layers; its first max_layers open gates
    are kept and every later one is closed. The runtime's `route` and GatedEncoder ("route" and "hard") agree."""
    from hadskip.modeling.checkpoint import load_model
    from hadskip.modeling.torch_backend import TorchBackend

    run, _ = cached_model(tmp_path_factory, "bert", 0)
    model = load_model(run)
    backend = TorchBackend(model, "cpu")
    ids, mask, tt = padded_batch([5, 12, 32, 3, 20, 7, 32, 9, 14, 25, 2, 30], model.config.hf_config["vocab_size"],
                                 seed=3)
    caps = [0, 1, 2, np.arange(len(ids)) % (model.num_layers + 1)]
    changed = 0
    for offset in (-np.inf, -0.3, 0.0, 0.3):  # every gate open, then mixed patterns
        free = route(backend, ids, mask, tt, gate_offset=offset)
        for cap in caps:
            got = route(backend, ids, mask, tt, gate_offset=offset, max_layers=cap)
            want = free.gates & (np.cumsum(free.gates, axis=1) <= np.broadcast_to(cap, (len(ids),))[:, None])
            np.testing.assert_array_equal(got.gates, want)  # the gates before the cap are those of the free run
            assert (got.layers_used <= cap).all()
            changed += int((got.gates != free.gates).any())
            for mode in ("route", "hard"):
                with torch.no_grad():
                    ref = model(*(torch.from_numpy(a) for a in (ids, mask, tt)), gates=mode, gate_offset=offset,
                                max_layers=torch.as_tensor(cap))
                np.testing.assert_array_equal(got.gates, ref.gates.numpy().astype(bool), err_msg=f"{mode} {cap}")
                np.testing.assert_allclose(got.logits, ref.logits.numpy(), atol=1e-5, rtol=0)
    assert changed >= len(caps)  # the cap really closed gates
    forced = np.ones((len(ids), model.num_layers), dtype=bool)
    assert (route(backend, ids, mask, tt, forced=forced, max_layers=2).layers_used == 2).all()
    with pytest.raises(HadSkipError, match="max_layers"):
        route(backend, ids, mask, tt, max_layers=-1)


@pytest.mark.usefixtures("one_torch_thread")
def test_onnx_runtime_follows_the_offset_like_pytorch(tmp_path_factory):
    """ORT graphs vs PyTorch at offsets that no gate margin lies near (within float noise, a margin could
    fall on either side of an offset it touches)."""
    from hadskip.modeling.checkpoint import load_model
    from hadskip.runtime import Runtime

    run, md = cached_model(tmp_path_factory, "bert", 0)
    model, rt = load_model(run), Runtime.load(md)
    ids, mask, tt = padded_batch([4, 9, 17, 30, 6, 22, 13, 32], int(rt.info.manifest.backbone["vocab_size"]), seed=5)
    checked = 0
    for offset in np.linspace(-2.0, 2.0, 17):
        with torch.no_grad():
            ref = model(*(torch.from_numpy(a) for a in (ids, mask, tt)), gates="route", gate_offset=offset)
        margins = (ref.gate_logits[..., 1] - ref.gate_logits[..., 0]).numpy()
        if np.abs(margins - offset).min() < 1e-3:
            continue
        got = rt.run_batch(ids, mask, tt, gate_offset=offset)
        np.testing.assert_array_equal(got.gates, ref.gates.numpy().astype(bool), err_msg=f"offset {offset}")
        np.testing.assert_allclose(got.logits, ref.logits.numpy(), atol=1e-4, rtol=0)
        checked += 1
    assert checked >= 8
