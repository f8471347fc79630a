"""The budget dial of an early-exit run (`hadskip compare`'s jointly trained multi-exit model), calibrated on dev:
a target average of layers -> the entropy threshold of the exit rule (hadskip.runtime.exits).

A row exits after the first layer whose exit entropy is below the threshold t. With m_i the smallest entropy
of exits 1..i of a row (NaN counts as +inf: such an exit never fires), the row uses i + 1 layers exactly for t in
(m_i, m_{i-1}], and all L layers for t <= m_{L-1}: per row, a partition of the threshold axis into intervals,
which is what the gate dial's sweep gives per row over the gate offset (hadskip/evaluation/dial.py). So the same
`build_dial` turns those leaves into the Dial: average layers and the dev metric as step functions of t, the
widest segment within tolerance of each target, its midpoint as the threshold (away from every dev entropy, so
a backend's float noise flips no dev row), knots every 0.05 layers. A larger threshold exits earlier, as a
larger gate offset closes more gates: the curve's "offset" is the threshold and is non-increasing in the target.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hadskip.errors import HadSkipError
from hadskip.evaluation.baselines.exits import exit_probs
from hadskip.evaluation.dial import Leaves, build_dial, check_targets, default_targets
from hadskip.modeling.checkpoint import encode_run_split
from hadskip.runtime.dial import Dial
from hadskip.runtime.exits import entropy
from hadskip.runtime.files import sha256_file


def exit_leaves(probs: np.ndarray) -> Leaves:
    """Per row, the threshold intervals [lo, hi) and the layers used and prediction there, from per-exit class
    probabilities (N, L, C) (exit L is the model's head). Empty intervals are left out."""
    n, L, _ = probs.shape
    ent = entropy(probs[:, : L - 1]).astype(np.float64)  # (N, L-1): the last layer always answers
    ent = np.where(np.isnan(ent), np.inf, ent)  # the rule never exits on NaN, as on +inf
    m = np.minimum.accumulate(ent, axis=1) if L > 1 else ent  # (N, L-1) prefix minima, non-increasing
    preds = probs.argmax(-1)  # (N, L)
    rows, lo, hi, layers, pred = [], [], [], [], []
    upper = np.full(n, np.inf)
    for i in range(L - 1):  # exit after layer i + 1 for t in (m_i, m_{i-1}]
        rows.append(np.arange(n)), lo.append(m[:, i]), hi.append(upper), layers.append(np.full(n, i + 1))
        pred.append(preds[:, i])
        upper = m[:, i]
    rows.append(np.arange(n)), lo.append(np.full(n, -np.inf)), hi.append(upper), layers.append(np.full(n, L))
    pred.append(preds[:, L - 1])
    leaves = [np.concatenate(x) for x in (rows, lo, hi, layers, pred)]
    keep = leaves[1] < leaves[2]
    return Leaves(*(x[keep] for x in leaves))


def calibrate_exits(model, tokenizer, info, run_dir: str | Path, targets: list[float] | None = None,
                    split: str = "dev", batch_size: int = 64) -> Dial:
    """The Dial of a loaded multi-exit model (hadskip.evaluation.baselines.exits.load_exit_model) on `split` of
    its run's task. targets: default 1, 1.5, ..., L."""
    L = model.num_layers
    targets = check_targets(default_targets(L, None) if targets is None else targets, L)
    run_split = encode_run_split(tokenizer, info, split)
    if len(run_split.enc) == 0:
        raise HadSkipError(f"the {split} split of {run_split.spec.name} is empty: nothing to calibrate the exit "
                           "dial on")
    t0 = time.perf_counter()
    probs = exit_probs(model, run_split.enc, run_split.pad_id, batch_size)
    spec = run_split.spec
    dial = build_dial(exit_leaves(probs), run_split.enc.labels, spec.metric, spec.num_labels, L, targets,
                      task=spec.name, split=split, model_sha256=sha256_file(Path(run_dir) / "model.safetensors"))
    dial.extra.update(knob="exit threshold (entropy, nats)", rule="entropy", seconds=round(time.perf_counter() - t0, 2))
    return dial
