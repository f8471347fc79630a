"""ort-cpu on a model dir whose gates are fused into the graph before them (manifest units["gate_form"] "fused",
written by `hadskip export --fuse-gates`; see hadskip.export.fuse_gates).

The hidden-state handle carries, per row, the logits of every gate computed on that row's current hidden state:
    Fused.h       (B, T, H) float32
    Fused.logits  (B, L, 2) float32; column j is gate j's logits on h (valid for every gate not yet passed)
The embeddings graph fills all L columns; layer i's graph refreshes columns i+1.. for the rows it ran. A row
that skips layer i keeps its hidden state, so its column i+1 is still exact. run_gate is then a lookup: a
routed batch makes one session call per layer it runs, and none per gate. The router (router.route) is
unchanged: gather/scatter carry the logits with the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hadskip.errors import HadSkipError
from hadskip.runtime.backends.ort import OrtCpuBackend
from hadskip.runtime.manifest import Manifest

OUTPUT = "gate_logits_next"


@dataclass
class Fused:
    h: np.ndarray  # (B, T, H)
    logits: np.ndarray  # (B, L, 2)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.h.shape


class OrtCpuFusedBackend(OrtCpuBackend):
    """OrtCpuBackend whose embeddings and layer graphs also return the logits of the gates after them (the
    separate gate graphs, kept in the model dir for other backends, are not opened)."""

    gate_graphs = False

    def __init__(self, model_dir: str | Path, manifest: Manifest, threads: int | None = None,
                 optimization: str = "all"):
        super().__init__(model_dir, manifest, threads=threads, optimization=optimization)
        # the last layer has no gate after it: its graph is the plain one
        for key, s in self.sessions.items():
            if key[0] in ("embeddings", "layer") and key != ("layer", self.num_layers - 1):
                if OUTPUT not in {o.name for o in s.get_outputs()}:
                    raise HadSkipError(f"{key[0]} graph {key[1]} lacks the {OUTPUT} output its manifest promises")

    def run_embeddings(self, input_ids, attention_mask, token_type_ids) -> Fused:
        h, logits = self._run_all(("embeddings", 0), {"input_ids": input_ids, "attention_mask": attention_mask,
                                                      "token_type_ids": token_type_ids})[:2]
        return Fused(h, np.ascontiguousarray(logits, dtype=np.float32))  # (B, T, H), (B, L, 2)

    def run_gate(self, i, h: Fused, attention_mask) -> np.ndarray:
        return h.logits[:, i]  # (B, 2), computed on h.h by the graph that produced it; router.gate_open decides

    def run_layer(self, i, h: Fused, attention_mask) -> Fused:
        out = self._run_all(("layer", i), {"hidden": h.h, "attention_mask": attention_mask})
        logits = h.logits
        if i + 1 < self.num_layers:
            logits = logits.copy()
            logits[:, i + 1:] = out[1]  # (B, L-1-i, 2)
        return Fused(out[0], logits)

    def gather(self, h: Fused, rows, t) -> Fused:
        return Fused(np.ascontiguousarray(h.h[rows, :t]), h.logits[rows])

    def scatter(self, h: Fused, rows, sub: Fused) -> Fused:
        hidden = h.h if h.h.flags.writeable else h.h.copy()
        hidden[rows, : sub.h.shape[1]] = sub.h
        logits = h.logits.copy()
        logits[rows] = sub.logits
        return Fused(hidden, logits)

    def run_head(self, h: Fused, attention_mask) -> np.ndarray:
        return super().run_head(h.h, attention_mask)
