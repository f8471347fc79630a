"""The shared half of the GPU backends: hidden states in pre-allocated device buffers, addressed by pointer.

    h0, h1            (B, T, H) ping-pong buffers: a full-batch layer reads one and writes the other
    sub_in, sub_out   (R, t, H) gathered open rows, trimmed to their longest row, and the layer's output
    ids, tt, mask     (B, T) inputs; mask_sub (R, t) for a gathered sub-batch
    gate, head        (B, 2) gate logits and (B, C) logits: the only things copied back to the host

gather/scatter copy runs of consecutive rows with one 2-D memcpy each (rows are T*H apart in h and t*H apart
in sub_in), so no kernel is needed. A subclass supplies `_run_unit(key, inputs, outputs)` that runs one
graph or engine on tensors given as (pointer, shape, dtype).
Not included: computing gate bits on the device (the (B, 2) logits are copied instead: 8 bytes a row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hadskip.runtime.backends.memory import Memory

HIDDEN_SLOTS = ("h0", "h1", "sub_in", "sub_out")
PARTNER = {"h0": "h1", "h1": "h0", "sub_in": "sub_out", "sub_out": "sub_in"}


@dataclass
class DeviceTensor:
    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    slot: str = ""


def row_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """[(first row, count)] of the maximal runs of consecutive indices in sorted `rows`."""
    if rows.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    return [(int(part[0]), len(part)) for part in np.split(rows, cuts)]


class PointerBackend:
    """Routing primitives over raw device buffers; see the module docstring."""

    name = "device"

    def __init__(self, memory: Memory, *, num_layers: int, hidden_size: int, num_labels: int, dtypes: dict,
                 max_batch: int = 32, max_seq_len: int = 128):
        self.mem = memory
        self.num_layers, self.hidden_size, self.num_labels = num_layers, hidden_size, num_labels
        # dtypes: hidden, mask, ids, gate, head -> numpy dtype of those tensors in the graphs/engines
        self.dt = {k: np.dtype(v) for k, v in dtypes.items()}
        self._slots: dict[str, int] = {}
        self._cap = (0, 0)  # (batch, tokens) the buffers hold
        self._full_mask: tuple[np.ndarray, DeviceTensor] | None = None
        self._reserve(max_batch, max_batch * max_seq_len)

    # -- buffers -----------------------------------------------------------------------------------------
    def _reserve(self, batch: int, tokens: int) -> None:
        if batch <= self._cap[0] and tokens <= self._cap[1]:
            return
        batch, tokens = max(batch, self._cap[0]), max(tokens, self._cap[1])
        self._release()
        sizes = {s: tokens * self.hidden_size * self.dt["hidden"].itemsize for s in HIDDEN_SLOTS}
        sizes.update(ids=tokens * self.dt["ids"].itemsize, tt=tokens * self.dt["ids"].itemsize,
                     mask=tokens * self.dt["mask"].itemsize, mask_sub=tokens * self.dt["mask"].itemsize,
                     gate=batch * 2 * self.dt["gate"].itemsize, head=batch * self.num_labels * self.dt["head"].itemsize)
        self._slots = {name: self.mem.alloc(n) for name, n in sizes.items()}
        self._cap = (batch, tokens)
        self._full_mask = None
        self._on_realloc()

    def _release(self) -> None:
        for ptr in self._slots.values():
            self.mem.free(ptr)
        self._slots = {}

    def _on_realloc(self) -> None:
        """Buffers moved: a subclass drops whatever captured their addresses (CUDA graphs)."""

    def synchronize(self) -> None:
        self.mem.synchronize()

    def close(self) -> None:
        self.mem.synchronize()
        self._release()

    def _tensor(self, slot: str, shape: tuple[int, ...], dtype: str) -> DeviceTensor:
        return DeviceTensor(self._slots[slot], tuple(int(x) for x in shape), self.dt[dtype], slot)

    def _upload(self, slot: str, array: np.ndarray, dtype: str) -> DeviceTensor:
        array = np.ascontiguousarray(array, dtype=self.dt[dtype])
        t = self._tensor(slot, array.shape, dtype)
        self.mem.h2d(t.ptr, array)
        return t

    def _mask(self, mask: np.ndarray) -> DeviceTensor:
        """The device copy of `mask`: the batch's own (uploaded once by run_embeddings) or a sub-batch's."""
        if self._full_mask is not None and mask is self._full_mask[0]:
            return self._full_mask[1]
        return self._upload("mask_sub", mask, "mask")

    def _run_unit(self, key: tuple[str, int], inputs: dict[str, DeviceTensor],
                  outputs: dict[str, DeviceTensor]) -> None:
        raise NotImplementedError

    # -- the router's Protocol -----------------------------------------------------------------------------
    def run_embeddings(self, input_ids, attention_mask, token_type_ids) -> DeviceTensor:
        b, t = input_ids.shape
        self._reserve(b, b * t)
        mask = self._upload("mask", attention_mask, "mask")
        self._full_mask = (attention_mask, mask)  # the router passes this same array for the whole batch
        out = self._tensor("h0", (b, t, self.hidden_size), "hidden")
        self._run_unit(("embeddings", 0), {"input_ids": self._upload("ids", input_ids, "ids"),
                                           "attention_mask": mask,
                                           "token_type_ids": self._upload("tt", token_type_ids, "ids")},
                       {"hidden": out})
        return out

    def run_gate(self, i: int, h: DeviceTensor, attention_mask) -> np.ndarray:
        b = h.shape[0]
        out = self._tensor("gate", (b, 2), "gate")
        self._run_unit(("gate", i), {"hidden": h, "attention_mask": self._mask(attention_mask)}, {"gate_logits": out})
        logits = np.empty((b, 2), dtype=out.dtype)
        self.mem.d2h(logits, out.ptr)  # the only per-layer copy to the host: 2 numbers a row
        return logits

    def run_layer(self, i: int, h: DeviceTensor, attention_mask) -> DeviceTensor:
        out = self._tensor(PARTNER[h.slot], h.shape, "hidden")
        self._run_unit(("layer", i), {"hidden": h, "attention_mask": self._mask(attention_mask)},
                       {"hidden_out": out})
        return out

    def gather(self, h: DeviceTensor, rows: np.ndarray, t: int) -> DeviceTensor:
        _, seq, hid = h.shape
        es = h.dtype.itemsize
        src_pitch, width = seq * hid * es, t * hid * es
        # into sub_in, or sub_out when h is in sub_in (the exit loop gathers a sub-batch again): never onto itself
        sub = self._tensor("sub_out" if h.slot == "sub_in" else "sub_in", (len(rows), t, hid), "hidden")
        j = 0
        for first, n in row_runs(rows):
            self.mem.copy2d(sub.ptr + j * width, width, h.ptr + first * src_pitch, src_pitch, width, n)
            j += n
        return sub

    def scatter(self, h: DeviceTensor, rows: np.ndarray, sub: DeviceTensor) -> DeviceTensor:
        _, seq, hid = h.shape
        es = h.dtype.itemsize
        dst_pitch, width = seq * hid * es, sub.shape[1] * hid * es
        j = 0
        for first, n in row_runs(rows):
            self.mem.copy2d(h.ptr + first * dst_pitch, dst_pitch, sub.ptr + j * width, width, width, n)
            j += n
        return h

    def run_head(self, h: DeviceTensor, attention_mask) -> np.ndarray:
        return self._logits(("head", 0), h, attention_mask)

    def run_exit(self, i: int, h: DeviceTensor, attention_mask) -> np.ndarray:
        """Exit head i of an early-exit model (its graph has the head's io and dtype)."""
        return self._logits(("exit", i), h, attention_mask)

    def _logits(self, key: tuple[str, int], h: DeviceTensor, attention_mask) -> np.ndarray:
        b = h.shape[0]
        out = self._tensor("head", (b, self.num_labels), "head")
        self._run_unit(key, {"hidden": h, "attention_mask": self._mask(attention_mask)}, {"logits": out})
        logits = np.empty((b, self.num_labels), dtype=out.dtype)
        self.mem.d2h(logits, out.ptr)
        return logits.astype(np.float32)
