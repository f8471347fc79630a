"""The cascade baseline (CascadeBERT's simplest form): a small distilled model answers first, and the rows it is
least sure of go to the full model, which runs them again from the start.

A row the first model keeps costs its k layers; a deferred row costs k + L. The confidence is the first model's
top class probability; rows below `threshold` are deferred. The threshold is calibrated on dev so that the
average layers equals the compared average (never more: the closest operating point at or below it), and
test is scored at that threshold. With several first models (the budgeted-exit models of a comparison), the
one with the best dev metric at the compared average is chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Stage:
    """The outputs one split gives a cascade: the first model's class probabilities and its layers k, and the
    full model's predictions and layers L."""

    first_probs: np.ndarray  # (N, C)
    k: int
    full_preds: np.ndarray  # (N,)
    num_layers: int

    def at(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(predictions (N,), layers per row (N,)) at `threshold`."""
        defer = self.first_probs.max(axis=1) < threshold
        preds = np.where(defer, self.full_preds, self.first_probs.argmax(axis=1))
        return preds, np.where(defer, self.k + self.num_layers, self.k).astype(np.float32)


def threshold_for(stage: Stage, target: float) -> float | None:
    """The largest threshold (most rows deferred) whose average layers on this split is <= target; None when even
    deferring nothing costs more than target (k > target)."""
    if stage.k > target + 1e-9:
        return None
    conf = np.sort(stage.first_probs.max(axis=1))
    n, cost = len(conf), stage.num_layers
    can_defer = int(np.floor((target - stage.k) * n / cost + 1e-9))  # rows the budget pays for
    if can_defer <= 0:
        return 0.0
    if can_defer >= n:
        return float(np.nextafter(conf[-1], np.inf))
    return float(conf[can_defer])  # rows strictly below conf[can_defer]: at most can_defer of them (ties stay)


def calibrated(stages: dict[int, tuple[Stage, Stage]], target: float,
               score: Callable[[np.ndarray, str], float]) -> dict | None:
    """The best cascade at `target` over first models {k: (dev stage, test stage)}: threshold and first model
    chosen on dev. score(preds, split) is the task metric. None when no first model fits the target."""
    best = None
    for k, (dev, test) in sorted(stages.items()):
        thr = threshold_for(dev, target)
        if thr is None:
            continue
        dp, dl = dev.at(thr)
        dev_value = score(dp, "dev")
        if best is None or dev_value > best["dev_value"]:
            tp, tl = test.at(thr)
            best = {"first_layers": dev.k, "threshold": thr, "dev_value": dev_value, "dev_avg_layers": float(dl.mean()),
                    "value": score(tp, "test"), "avg_layers": float(tl.mean()), "preds": tp, "layers": tl,
                    "deferred_test": float((tl > k).mean())}
    return best


def curve(stages: dict[int, tuple[Stage, Stage]], score: Callable[[np.ndarray, str], float],
          grid: np.ndarray) -> list[list[float]]:
    """Test (average layers, metric) of the dev-calibrated cascade at each average in `grid` (the frontier)."""
    pts = set()
    for g in grid:
        c = calibrated(stages, float(g), score)
        if c is not None:
            pts.add((round(c["avg_layers"], 6), c["value"]))
    return [list(p) for p in sorted(pts)]
