"""Per-row outputs of the methods `hadskip compare` scores (what the paired intervals across seeds resample) and
the path diversity of gated routes.

A record is one method at one budget on one split: the prediction and the layers run of every row, and for a
gated route the path (the set of layers that ran, as a bitmask). `OUT/rows.npz` holds the test records of one
comparison, keyed "METHOD@BUDGET/preds|layers|paths".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hadskip.evaluation.evaluate import default_device, predict
from hadskip.modeling.checkpoint import encode_run_split, load_run

ROWS_FILE = "rows.npz"


@dataclass
class Outputs:
    """One run on one split: logits (N, C), gate decisions (N, L) (all ones for a model without gates), labels."""

    logits: np.ndarray
    gates: np.ndarray
    labels: np.ndarray
    metric: str
    num_labels: int
    task: str

    @property
    def probs(self) -> np.ndarray:
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def run_outputs(run: str | Path, split: str, gate_offset: float = 0.0, batch_size: int = 64) -> Outputs:
    """Every row of `split` through a run dir (its own gates, at `gate_offset` of the dial)."""
    model, tokenizer, info = load_run(run)
    model.to(default_device())
    run_split = encode_run_split(tokenizer, info, split)
    logits, gates, labels = predict(model, run_split.enc, run_split.pad_id, batch_size,
                                    gates="route" if info.is_gated else "off", gate_offset=gate_offset)
    spec = run_split.spec
    return Outputs(logits, gates, np.asarray(labels), spec.metric, spec.num_labels, spec.name)


def path_codes(gates: np.ndarray) -> np.ndarray:
    """(N, L) 0/1 decisions -> (N,) the set of layers that ran as a bitmask (layer i -> bit i)."""
    g = (np.asarray(gates) > 0.5).astype(np.int64)
    return (g << np.arange(g.shape[1], dtype=np.int64)).sum(axis=1)


def path_diversity(codes: np.ndarray, num_layers: int) -> dict:
    """How input-dependent the routes are: the entropy (bits) of the distribution of paths over rows, the number
    of distinct paths, the share of rows on the most common path and that path (1-based layers)."""
    codes = np.asarray(codes, dtype=np.int64)
    if len(codes) == 0:
        return {"path_entropy_bits": 0.0, "distinct_paths": 0, "top_path_share": 0.0, "top_path": []}
    values, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    top = int(values[counts.argmax()])
    return {"path_entropy_bits": round(float(-(p * np.log2(p)).sum()) + 0.0, 4), "distinct_paths": int(len(values)),
            "top_path_share": round(float(p.max()), 4),
            "top_path": [i + 1 for i in range(num_layers) if top >> i & 1]}


def record(preds: np.ndarray, layers: np.ndarray, paths: np.ndarray | None = None) -> dict[str, np.ndarray]:
    out = {"preds": np.asarray(preds, dtype=np.int64), "layers": np.asarray(layers, dtype=np.float32)}
    if paths is not None:
        out["paths"] = np.asarray(paths, dtype=np.int64)
    return out


def save_records(root: Path, labels: np.ndarray, records: dict[tuple[str, float], dict]) -> Path:
    """OUT/rows.npz: the test labels and every method's test record."""
    arrays = {"labels": np.asarray(labels, dtype=np.int64)}
    for (method, budget), rec in records.items():
        for name, a in rec.items():
            arrays[f"{method}@{float(budget)!r}/{name}"] = a  # repr: the budget reads back exactly
    path = Path(root) / ROWS_FILE
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def load_records(root: Path) -> tuple[np.ndarray, dict[tuple[str, float], dict]]:
    """(test labels, {(method, budget): record}) from OUT/rows.npz."""
    with np.load(Path(root) / ROWS_FILE) as z:
        labels = z["labels"]
        records: dict[tuple[str, float], dict] = {}
        for key in z.files:
            if key == "labels":
                continue
            head, name = key.rsplit("/", 1)
            method, budget = head.rsplit("@", 1)
            records.setdefault((method, float(budget)), {})[name] = z[key]
    return labels, records
