"""The skip + exit route of a run trained with exit heads (`hadskip train --exit-heads`, compare's variant
"skip-exit"): its gates at an offset, its exits by the entropy rule (hadskip.runtime.skip_exit), calibrated on dev.

    for each gate offset of a grid (the run's dial on dev at the compared average and above it, to all gates
    open, and the trained gates, offset 0):
        one pass per split: gates "route" at the offset, every exit head and the head on every position's
        hidden state -> gates (N, L), probabilities (N, L, C)
        the entropy threshold whose dev average layers is the compared average (bisection; 0 when the gates
        alone already use no more)
    the (offset, threshold) with the best dev metric among those within TOLERANCE layers of the average (none:
    the fewest layers); test is scored there, with the path of every row (its layers up to its exit).

Not here: exporting it (the model dir has no exit heads for a gated run yet; `hadskip export` refuses such a run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hadskip.data.batches import loader
from hadskip.data.metrics import compute_metric
from hadskip.errors import HadSkipError
from hadskip.evaluation.dial import build_dial, sweep
from hadskip.evaluation.evaluate import default_device
from hadskip.modeling.checkpoint import encode_run_split, load_run, read_model_config
from hadskip.runtime.exits import entropy, softmax
from hadskip.runtime.skip_exit import SkipExit, exit_positions, skip_exit

TOLERANCE = 0.05  # layers over the compared average a calibrated point may use (the dial curve's knot spacing)
OFFSET_STEP = 0.5  # layers between the gates-only dev averages of the offsets tried


def exit_heads_note(run: str | Path) -> str | None:
    """What `hadskip eval` and `hadskip dial` say of a run dir whose model has exit heads (model_config.json
    exit_heads; absent: none): they use its gates alone (exit threshold 0). None for any other run."""
    if not read_model_config(run).get("exit_heads", False):
        return None
    return (f"{run} has exit heads: this uses its gates alone (exit threshold 0); `hadskip compare --variants "
            "skip-exit` scores gates + exits")


@torch.no_grad()
def position_probs(model, enc, pad_id: int, gate_offset: float, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One pass: (gates (N, L) bool at `gate_offset`, probabilities (N, L, C) of exit i after position i and of
    the head at position L), in the order of `enc`."""
    model.eval()
    device = next(model.parameters()).device
    n, L, C = len(enc), model.num_layers, model.config.num_labels
    gates, probs = np.zeros((n, L), dtype=bool), np.zeros((n, L, C), dtype=np.float32)
    dl = loader(enc, batch_size, pad_id, shuffle=False)
    for idx, batch in zip(dl.dataset.batch_indices(), dl, strict=True):
        b = {k: v.to(device) for k, v in batch.items()}
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], gates="route", gate_offset=gate_offset,
                    output_hidden=True)
        z = torch.cat([model.exit_logits(out.hidden_states, b["attention_mask"]), out.logits[:, None]], dim=1)
        probs[idx] = softmax(z.float().cpu().numpy())  # the runtime's softmax, as the rule's entropy expects
        gates[idx] = out.gates.bool().cpu().numpy()
    return gates, probs


def threshold_for(gates: np.ndarray, ent: np.ndarray, target: float, iters: int = 60) -> float:
    """The entropy threshold whose average layers (skip + exit) is closest to `target` without going over it by
    more than TOLERANCE where one does not (bisection: layers do not grow with the threshold); 0 when the gates
    alone use no more than `target`."""
    steps = np.arange(gates.shape[1])[None, :]

    def layers(t: float) -> float:
        return float((gates & (steps <= exit_positions(gates, ent, t)[:, None])).sum(axis=1).mean())

    if layers(0.0) <= target:
        return 0.0
    lo, hi = 0.0, float(np.nan_to_num(ent[:, :-1], nan=0.0).max(initial=0.0)) + 1e-6
    for _ in range(iters):
        mid = (lo + hi) / 2
        if layers(mid) > target:
            lo = mid  # too many layers: exit more eagerly
        else:
            hi = mid
    ok = [t for t in (lo, hi) if layers(t) <= target + TOLERANCE]
    return min(ok or [hi], key=lambda t: abs(layers(t) - target))


@dataclass
class Point:
    offset: float
    threshold: float
    decision: SkipExit
    value: float

    @property
    def avg_layers(self) -> float:
        return float(self.decision.layers.mean())


def _offsets(model, enc, pad_id: int, labels, spec, target: float, batch_size: int) -> list[float]:
    """Gate offsets whose gates-only dev average is the target, target + OFFSET_STEP, ..., L (the run's dial on
    dev), and 0 (the trained gates)."""
    L = model.num_layers
    leaves = sweep(model, enc, pad_id, batch_size)
    targets = sorted({min(float(L), max(0.0, target + OFFSET_STEP * j))
                      for j in range(int(np.ceil(max(L - target, 0.0) / OFFSET_STEP)) + 1)})
    dial = build_dial(leaves, labels, spec.metric, spec.num_labels, L, targets)
    return sorted({0.0, *(float(p.offset) for p in dial.points)})


def skip_exit_row(method: str, run: Path, k: float, target: float, num_layers: int, batch_size: int = 64) -> dict:
    """The skip + exit route of `run` calibrated on dev to `target` average layers, scored on test: the row of
    `hadskip compare` (value, avg_layers, dev_value, dev_avg_layers, gate_offset, threshold, exit_share, tried)
    and "_record" {preds, layers, ran (N, L)} of the test rows."""
    model, tokenizer, info = load_run(run)
    if model.exits is None or not info.is_gated:
        raise HadSkipError(f"{run} is not a gated run with exit heads (train it with --exit-heads)")
    model.to(default_device())
    splits = {s: encode_run_split(tokenizer, info, s) for s in ("dev", "test")}
    spec = splits["dev"].spec

    def point(split: str, offset: float, threshold: float | None) -> Point:
        rs = splits[split]
        gates, probs = position_probs(model, rs.enc, rs.pad_id, offset, batch_size)
        ent = entropy(probs)
        thr = threshold_for(gates, ent, target) if threshold is None else threshold
        d = skip_exit(gates, probs, thr, ent=ent)
        return Point(offset, thr, d, float(compute_metric(spec.metric, d.preds, rs.enc.labels, spec.num_labels)))

    dev = splits["dev"]
    tried = [point("dev", o, None) for o in _offsets(model, dev.enc, dev.pad_id, dev.enc.labels, spec, target,
                                                     batch_size)]
    within = [p for p in tried if p.avg_layers <= target + TOLERANCE]
    best = max(within, key=lambda p: (p.value, -p.avg_layers)) if within else min(tried, key=lambda p: p.avg_layers)
    test = point("test", best.offset, best.threshold)
    d = test.decision
    return {"method": method, "budget": k, "value": test.value, "avg_layers": test.avg_layers,
            "dev_value": best.value, "dev_avg_layers": best.avg_layers, "gate_offset": best.offset,
            "threshold": best.threshold, "exit_share": float((d.exit_at < num_layers - 1).mean()),
            "tried": [[p.offset, p.threshold, round(p.avg_layers, 4), round(p.value, 5)] for p in tried],
            "run": str(run), "trained_budget": info.budget,
            "_record": {"preds": d.preds, "layers": d.layers, "ran": d.ran}}
