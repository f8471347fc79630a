"""Exit rules of the multi-exit baselines and their calibration on dev (numpy only).

Every rule maps per-layer class probabilities `probs` (N, L, C) of a multi-exit model to the 0-based layer each
input exits at; layers used = exit + 1.

    entropy (DeeBERT)  exit at the first layer whose prediction entropy is below a threshold
    patience (PABEE)   exit at the first layer where the prediction has stayed the same for `patience` layers
                       in a row (patience 0: after layer 1); the last layer otherwise

An entropy threshold is calibrated on dev so that the average layers used equals the compared average.
Patience is an integer, so its operating points are discrete: a target between two of them is met by the
randomised rule that uses patience p for a share 1 - a of the inputs and p + 1 for the rest, whose expected
layers and metric are the linear interpolation of the two points (`mix`); a is fixed on dev.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# the entropy rule is the runtime's (one function for the baseline measured here and the exported model):
# entropy (N, L, C) -> (N, L) nats; exit_layers(ent, threshold) -> the first layer whose entropy < threshold
from hadskip.runtime.exits import entropy, exit_layers  # noqa: F401 (re-exported)


def threshold_for(ent: np.ndarray, k: float, iters: int = 60) -> float:
    """The entropy threshold whose average layers used (exit index + 1) is closest to k (bisection)."""
    lo, hi = 0.0, float(ent.max()) + 1e-6
    for _ in range(iters):
        mid = (lo + hi) / 2
        if exit_layers(ent, mid).mean() + 1 > k:
            lo = mid  # too many layers: exit more eagerly
        else:
            hi = mid
    return min([lo, hi], key=lambda t: abs(exit_layers(ent, t).mean() + 1 - k))


def patience_layers(preds: np.ndarray, patience: int) -> np.ndarray:
    """PABEE: 0-based exit layer per input from per-layer predictions (N, L)."""
    n, L = preds.shape
    if patience < 0:
        raise ValueError(f"patience must be >= 0, got {patience}")
    exit_at = np.full(n, L - 1)
    if patience == 0:
        return np.zeros(n, dtype=np.int64)
    run = np.zeros(n, dtype=np.int64)  # how many layers in a row the prediction has stayed the same
    done = np.zeros(n, dtype=bool)
    for i in range(1, L):
        run = np.where(preds[:, i] == preds[:, i - 1], run + 1, 0)
        hit = ~done & (run >= patience)
        exit_at[hit] = i
        done |= hit
    return exit_at


@dataclass
class Operating:
    """One operating point of a rule on a split: layers used per input and the prediction there."""

    layers: np.ndarray  # (N,) layers used (1..L)
    preds: np.ndarray  # (N,)

    @property
    def avg_layers(self) -> float:
        return float(self.layers.mean())


def at_exits(probs: np.ndarray, exits: np.ndarray) -> Operating:
    """The predictions of `probs` (N, L, C) at the given 0-based exit layers."""
    return Operating(exits + 1, probs[np.arange(len(exits)), exits].argmax(-1))


def mix(points: list[tuple[float, float]], target: float) -> tuple[int, float]:
    """(p, a) such that (1 - a) * layers[p] + a * layers[p + 1] = target, from (layers, value) points in the
    order of increasing layers; outside their range the nearest end (a = 0 or 1)."""
    layers = [p[0] for p in points]
    if target <= layers[0]:
        return 0, 0.0
    for p in range(len(layers) - 1):
        lo, hi = layers[p], layers[p + 1]
        if lo <= target <= hi:
            return p, 0.0 if hi == lo else (target - lo) / (hi - lo)
    return len(layers) - 2, 1.0


def mixed(points: list[tuple[float, float]], p: int, a: float) -> tuple[float, float]:
    """The expected (layers, value) of using point p for a share 1 - a and point p + 1 for a share a."""
    if len(points) == 1:
        return points[0]
    (l0, v0), (l1, v1) = points[p], points[p + 1]
    return (1 - a) * l0 + a * l1, (1 - a) * v0 + a * v1
