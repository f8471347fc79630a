"""Per-row routing (docs/architecture.md, "The routing loop"): every backend runs this one loop through a
small Protocol, and the gate rule below is the one every runtime backend uses.

    h = embeddings(batch)                      # trimmed to the longest row first
    for i in range(L):
        g = gate_open(gate[i](h, mask), offset)  # bool per row (or the forced pattern)
        rows = nonzero(g)
        if rows is all:  h = layer[i](h, mask)
        elif rows:       h[rows, :t] = layer[i](h[rows, :t], mask[rows, :t])   # t = longest open row
    logits = head(h, mask)

Hidden states stay in the backend's memory (host for ORT-CPU, the GPU for the others); ids, masks and
row indices are host numpy arrays, and only gate logits (2 numbers a row) and logits come back to the host.
Inputs must be right-padded (a mask row is ones then zeros), which makes trimming a slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hadskip.errors import HadSkipError


class Backend(Protocol):
    """An execution engine for the four kinds of unit. `H` (Any here) is the backend's hidden-state handle."""

    name: str
    num_layers: int

    def run_embeddings(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                       token_type_ids: np.ndarray) -> Any: ...  # (B, T, hidden)

    def run_gate(self, i: int, h: Any, attention_mask: np.ndarray) -> np.ndarray: ...  # (B, 2) gate logits, host

    def run_layer(self, i: int, h: Any, attention_mask: np.ndarray) -> Any: ...  # (B, T, hidden)

    def gather(self, h: Any, rows: np.ndarray, t: int) -> Any: ...  # h[rows, :t]

    def scatter(self, h: Any, rows: np.ndarray, sub: Any) -> Any: ...  # h[rows, :t] = sub; returns h

    def run_head(self, h: Any, attention_mask: np.ndarray) -> np.ndarray: ...  # (B, num_labels) float32, host


@dataclass
class BatchResult:
    logits: np.ndarray  # (B, num_labels) float32
    gates: np.ndarray  # (B, L) bool: layer i ran on row b

    @property
    def layers_used(self) -> np.ndarray:
        return self.gates.sum(axis=1)  # (B,)


def gate_margin(gate_logits: np.ndarray) -> np.ndarray:
    """logit_open - logit_closed of each row, in float64 whatever the graph's dtype.  # (B, 2) -> (B,)

    Both logits are widened first: the float64 difference of two fp32/fp16 numbers is 0 only when they are
    equal and never has the wrong sign, so `margin > 0` is exactly `logit_open > logit_closed`."""
    z = np.asarray(gate_logits, dtype=np.float64)  # exact for fp16/fp32; no np.errstate here: it costs 8 us a call
    if z.shape[-1:] != (2,):
        raise HadSkipError(f"gate logits must be (..., 2) (closed, open), got shape {z.shape}")
    return z[..., 1] - z[..., 0]  # inf - inf is NaN (numpy warns): a closed gate


def gate_open(gate_logits: np.ndarray, offset: float | np.ndarray = 0.0) -> np.ndarray:
    """The gate rule: open iff logit_open - logit_closed > offset.  # (B, 2) -> (B,) bool

    offset 0 is the argmax of the two logits with a tie closing the gate; a larger offset closes more gates
    (the budget dial's knob), a smaller one opens more. A NaN margin closes the gate. `offset` may also be
    one float per row, (B,) (requests at different budgets in one batch). hadskip.modeling.encoder.gate_open is the
    PyTorch mirror, pinned to this function by tests/test_gate_rule.py."""
    if np.ndim(offset):
        return gate_margin(gate_logits) > np.asarray(offset, dtype=np.float64)
    return gate_margin(gate_logits) > float(offset)


def row_lengths(attention_mask: np.ndarray) -> np.ndarray:
    """(B,) number of attended tokens per row; refuses masks that are not right-padded."""
    mask = np.asarray(attention_mask)
    if mask.ndim != 2:
        raise HadSkipError(f"attention_mask must be (batch, seq), got shape {mask.shape}")
    lengths = (mask != 0).sum(axis=1)
    if not np.array_equal(mask != 0, np.arange(mask.shape[1])[None, :] < lengths[:, None]):
        raise HadSkipError("attention_mask must be right-padded (ones, then zeros) in every row")
    return lengths


def cap_gates(g: np.ndarray, used: np.ndarray, max_layers: int | np.ndarray | None) -> np.ndarray:
    """The per-row hard cap: once a row has run `max_layers` layers, its remaining gates are closed.  # (B,) bool
    `used` (B,) counts the layers each row ran so far; max_layers is an int, one per row (B,), or None (no cap).
    hadskip.modeling.encoder applies the same rule in its "hard" and "route" modes (tests/test_gate_rule.py)."""
    if max_layers is None:
        return g
    return g & (used < np.asarray(max_layers))


def trim_batch(input_ids, attention_mask, token_type_ids=None) -> tuple:
    """(ids, mask, token types, lengths (B,)): int64 copies cut to the longest row (right padding checked)."""
    ids = np.asarray(input_ids, dtype=np.int64)
    lengths = row_lengths(attention_mask)
    t = max(1, int(lengths.max(initial=0)))  # trim the batch to its longest row
    ids = np.ascontiguousarray(ids[:, :t])
    mask = np.ascontiguousarray(np.asarray(attention_mask, dtype=np.int64)[:, :t])
    tt = np.zeros_like(ids) if token_type_ids is None else \
        np.ascontiguousarray(np.asarray(token_type_ids, dtype=np.int64)[:, :t])
    return ids, mask, tt, lengths


def route(backend: Backend, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None,
          forced: np.ndarray | None = None, gate_offset: float | np.ndarray = 0.0,
          max_layers: int | np.ndarray | None = None) -> BatchResult:
    """Run one batch through `backend`, each row on its own path. `forced` (B, L) 0/1 replaces the gates;
    otherwise gate i is `gate_open(backend.run_gate(i, ...), gate_offset)`, gate_offset a float or (B,).
    `max_layers` (an int or (B,) ints; None: no cap): a row never runs more layers (cap_gates).
    A backend with `run_routed(ids, mask, tt, gate_offset, max_layers)` may run the whole (trimmed) batch itself,
    applying this rule and cap on its device (hadskip.modeling.cuda_conditional, pinned by
    tests/test_cuda_conditional.py); it returns (logits, gates), or None to have this loop run it."""
    ids, mask, tt, lengths = trim_batch(input_ids, attention_mask, token_type_ids)
    b, n_layers = ids.shape[0], backend.num_layers
    if forced is not None:
        forced = np.asarray(forced) != 0
        if forced.shape != (b, n_layers):
            raise HadSkipError(f"forced must be (batch, layers) = ({b}, {n_layers}), got {forced.shape}")
    if np.ndim(gate_offset) and np.shape(gate_offset) != (b,):
        raise HadSkipError(f"gate_offset must be a number or one per row ({b},), got shape {np.shape(gate_offset)}")
    if max_layers is not None:
        max_layers = np.asarray(max_layers)
        if max_layers.ndim and max_layers.shape != (b,):
            raise HadSkipError(f"max_layers must be a number or one per row ({b},), got shape {max_layers.shape}")
        if max_layers.dtype.kind not in "iu" or (max_layers < 0).any():
            raise HadSkipError("max_layers must be whole numbers of layers >= 0")
    routed = getattr(backend, "run_routed", None)  # a backend that decides the gates on its device (torch on CUDA)
    if forced is None and routed is not None:
        done = routed(ids, mask, tt, gate_offset, max_layers)  # the same rule and cap, or None: the loop below
        if done is not None:
            return BatchResult(np.asarray(done[0], dtype=np.float32), np.asarray(done[1], dtype=bool))
    gates = np.zeros((b, n_layers), dtype=bool)
    used = np.zeros(b, dtype=np.int64)

    h = backend.run_embeddings(ids, mask, tt)  # (B, T, H)
    for i in range(n_layers):
        g = forced[:, i] if forced is not None else gate_open(backend.run_gate(i, h, mask), gate_offset)  # (B,)
        g = cap_gates(g, used, max_layers)
        gates[:, i] = g
        used += g
        rows = np.flatnonzero(g)
        if rows.size == b:
            h = backend.run_layer(i, h, mask)
        elif rows.size:
            ts = max(1, int(lengths[rows].max()))  # trim the sub-batch to its own longest row
            sub = backend.run_layer(i, backend.gather(h, rows, ts), np.ascontiguousarray(mask[rows, :ts]))
            h = backend.scatter(h, rows, sub)
    logits = backend.run_head(h, mask)
    return BatchResult(np.asarray(logits, dtype=np.float32), gates)
