"""Early exit in the runtime (torch-free): the entropy exit rule and the per-row exit loop of an early-exit model
dir (manifest route "early-exit": exit heads MODEL/exits/NN.onnx after layers 1..L-1, the head after layer L).

The rule (DeeBERT's entropy rule; hadskip.evaluation.baselines.rules imports it from here, so the baseline that
`hadskip compare` measures and the runtime decide with one function):

    probs = softmax(exit logits);  entropy = -sum(p * ln(clip(p, 1e-12, 1)))   (nats)
    a row exits after layer i iff entropy < threshold          (a NaN entropy never exits: the row goes on)

threshold 0 never exits (entropy >= 0): every row runs all L layers, the full model. A larger threshold exits
earlier (fewer layers), as a larger gate offset closes more gates; the model dir's dial maps a budget (a target
average of layers, calibrated on dev by `hadskip export`) to a threshold.

The loop (hadskip.runtime.router.route's counterpart; the rows that exit stop, the rest of the batch goes on):

    h = embeddings(batch)                                   # trimmed to the longest row
    for i in range(L):
        h = layer[i](h, mask)                               # only the rows still running
        z = exit[i](h, mask) if i < L - 1 else head(h, mask)
        stop = exit_now(entropy(softmax(z)), threshold)     # or the row's cap of layers is reached
        logits[stopped rows] = z[stop];  h = h[rows that go on, :t]   # t = their longest row
"""

from __future__ import annotations

import numpy as np

from hadskip.errors import HadSkipError
from hadskip.runtime.router import BatchResult, trim_batch

ENTROPY_FLOOR = 1e-12  # probabilities are clipped here before the log (a zero probability adds 0)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis, computed in float64, returned as float32.  # (..., C) -> (..., C)"""
    z = np.asarray(logits, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # a row with +inf or NaN logits gives NaN probabilities, silently
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Prediction entropy in nats over the last axis.  # (..., C) -> (...)"""
    return -(probs * np.log(np.clip(probs, ENTROPY_FLOOR, 1.0))).sum(-1)


def exit_now(ent: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """The exit rule: exit iff entropy < threshold (NaN: never).  # (B,) -> (B,) bool"""
    return np.asarray(ent) < threshold  # a comparison with NaN is False (and numpy does not warn)


def exit_layers(ent: np.ndarray, threshold: float) -> np.ndarray:
    """0-based exit layer per input from per-layer entropies (N, L): the first layer where the rule exits, else
    the last."""
    below = exit_now(ent, threshold)
    return np.where(below.any(axis=1), below.argmax(axis=1), ent.shape[1] - 1)


def _per_row(value, b: int, name: str, dtype) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == 0:
        return np.full(b, arr, dtype=dtype)
    if arr.shape != (b,):
        raise HadSkipError(f"{name} must be a number or one per row ({b},), got shape {arr.shape}")
    return arr


def route_exits(backend, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None,
                threshold: float | np.ndarray = 0.0, max_layers: int | np.ndarray | None = None) -> BatchResult:
    """Run one batch through an early-exit model on `backend` (which has run_exit(i, h, mask) -> (B, C) logits,
    besides the router's Protocol). `threshold`: a float or one per row (B,); `max_layers` (an int or (B,), each
    1..L; None: L): a row exits at that layer at the latest. BatchResult.gates[b, i] is True for every layer
    row b ran (its first layers); logits are those of the exit (or head) the row left at."""
    ids, mask, tt, lengths = trim_batch(input_ids, attention_mask, token_type_ids)
    b, n_layers = ids.shape[0], backend.num_layers
    thr = _per_row(threshold, b, "threshold", np.float64)
    if np.isnan(thr).any():
        raise HadSkipError("the exit threshold must be a number, got NaN")
    caps = np.full(b, n_layers, dtype=np.int64) if max_layers is None else _per_row(max_layers, b, "max_layers",
                                                                                    np.int64)
    if ((caps < 1) | (caps > n_layers)).any():
        raise HadSkipError(f"max_layers of an early-exit model must be within 1..{n_layers} (a row runs at least "
                           "one layer)")
    gates = np.zeros((b, n_layers), dtype=bool)
    logits: np.ndarray | None = None
    rows = np.arange(b)  # the rows still running, in the order of h
    h = backend.run_embeddings(ids, mask, tt)
    sub_mask = mask
    for i in range(n_layers):
        h = backend.run_layer(i, h, sub_mask)
        gates[rows, i] = True
        last = i == n_layers - 1
        z = np.asarray(backend.run_head(h, sub_mask) if last else backend.run_exit(i, h, sub_mask), dtype=np.float32)
        if logits is None:
            logits = np.zeros((b, z.shape[1]), dtype=np.float32)
        stop = np.ones(len(rows), dtype=bool) if last else \
            exit_now(entropy(softmax(z)), thr[rows]) | (caps[rows] <= i + 1)
        logits[rows[stop]] = z[stop]
        go = np.flatnonzero(~stop)
        if go.size == 0:
            break
        if go.size < rows.size:
            rows = rows[go]
            t = max(1, int(lengths[rows].max()))  # trim the sub-batch to its own longest row
            h = backend.gather(h, go, t)
            sub_mask = np.ascontiguousarray(mask[rows, :t])
    return BatchResult(logits, gates)
