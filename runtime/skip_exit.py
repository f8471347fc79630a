"""The skip + exit rule (SmartBERT-style: the gates skip layers, exit heads end a row early), torch-free.

Given, per row, the gate decisions of every position (N, L) (the gate rule at some offset) and the class
probabilities at every position (N, L, C) (exit i after position i for i < L, the head at position L):

    a row exits after the first position i < L whose layer RAN and whose exit entropy < threshold
    (exit_now of the entropy rule, hadskip.runtime.exits: a NaN entropy never exits), else at position L;
    layers used = its open gates up to and including that position; prediction = that position's probabilities.

A skipped position never exits (its hidden state is the one the row already had). Threshold 0 never exits
(entropy >= 0): the gates alone at that offset, plain HadSkip. Rows are independent and a gate decision depends
only on earlier positions, so the positions of one full pass (every gate decided, every head evaluated) give what
a loop that stops at the exit gives. `hadskip.evaluation.skip_exit` calibrates (offset, threshold) on dev.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hadskip.runtime.exits import entropy, exit_now


@dataclass
class SkipExit:
    """What the rule decided for N rows."""

    exit_at: np.ndarray  # (N,) 0-based position each row left at (L - 1: the head)
    ran: np.ndarray  # (N, L) bool: the layers each row ran (its open gates up to its exit)
    probs: np.ndarray  # (N, C) the probabilities where it left

    @property
    def layers(self) -> np.ndarray:
        """(N,) layers used."""
        return self.ran.sum(axis=1)

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=-1)


def exit_positions(gates: np.ndarray, ent: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """0-based exit position per row from gates (N, L) and the entropies of every position (N, L) (the last
    one, the head's, is not looked at): the first position < L-1 whose gate is open and whose entropy is below
    `threshold` (a number or one per row (N,)), else L-1."""
    g = np.asarray(gates, dtype=bool)
    n, L = g.shape
    thr = np.asarray(threshold, dtype=np.float64)
    thr = thr[:, None] if thr.ndim == 1 else thr
    hit = g[:, : L - 1] & exit_now(np.asarray(ent)[:, : L - 1], thr)
    return np.where(hit.any(axis=1), hit.argmax(axis=1), L - 1) if L > 1 else np.zeros(n, dtype=np.int64)


def skip_exit(gates: np.ndarray, probs: np.ndarray, threshold: float | np.ndarray,
              ent: np.ndarray | None = None) -> SkipExit:
    """The rule (module docstring) on gates (N, L) and probabilities (N, L, C); `ent` (N, L): their entropies,
    when already computed."""
    g = np.asarray(gates, dtype=bool)
    p = np.asarray(probs)
    if g.ndim != 2 or p.ndim != 3 or p.shape[:2] != g.shape:
        raise ValueError(f"gates (N, L) and probs (N, L, C) must agree, got {g.shape} and {p.shape}")
    at = exit_positions(g, entropy(p) if ent is None else ent, threshold)
    ran = g & (np.arange(g.shape[1])[None, :] <= at[:, None])
    return SkipExit(at, ran, p[np.arange(len(at)), at])
