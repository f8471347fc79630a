"""Evaluation of a (gated) model on a split: task metric and how many layers each input used."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from hadskip.data.batches import Encoded, loader
from hadskip.data.metrics import compute_metric


@dataclass
class EvalResult:
    metric: str
    value: float
    examples: int
    num_layers: int
    avg_layers: float
    layer_usage: list[float]  # P(layer i runs), i = 1..L
    layers_hist: dict[str, int]  # layers used -> number of inputs
    predictions: np.ndarray | None = None  # (N,) in the split's order

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("predictions")
        return d


def default_device() -> str:
    """"cuda" when torch sees a GPU, else "cpu" (evaluation of run dirs, dial sweeps, baselines)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def layer_stats(gates: np.ndarray) -> tuple[float, list[float], dict[str, int]]:
    """(avg layers, per-layer usage, histogram of layers used) from (N, L) 0/1 gate decisions."""
    used = gates.sum(axis=1).astype(int)
    counts = np.bincount(used, minlength=gates.shape[1] + 1)
    return (float(used.mean()) if len(used) else 0.0, [float(p) for p in gates.mean(axis=0)],
            {str(k): int(c) for k, c in enumerate(counts)})


@torch.no_grad()
def predict(model, enc: Encoded, pad_id: int, batch_size: int = 64, gates: str = "route",
            forced: np.ndarray | None = None, gate_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits (N, C), gate decisions (N, L), labels (N,)) in the order of `enc`. gates="off" counts every
    layer; gate_offset: the gate rule's offset (the budget dial, hadskip/evaluation/dial.py)."""
    model.eval()
    device = next(model.parameters()).device
    dl = loader(enc, batch_size, pad_id, shuffle=False)
    n, layers = len(enc), model.num_layers
    logits = np.zeros((n, model.config.num_labels), dtype=np.float32)
    used = np.ones((n, layers), dtype=np.float32)
    for idx, batch in zip(dl.dataset.batch_indices(), dl, strict=True):
        f = None if forced is None else torch.from_numpy(forced[idx]).float().to(device)
        b = {k: v.to(device) for k, v in batch.items()}
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], gates=gates, forced=f,
                    gate_offset=gate_offset)
        logits[idx] = out.logits.float().cpu().numpy()
        if out.gates is not None:
            used[idx] = out.gates.float().cpu().numpy()
    return logits, used, enc.labels


def summarize(logits: np.ndarray, used: np.ndarray, labels: np.ndarray, metric: str) -> EvalResult:
    """EvalResult from predict()'s outputs."""
    preds = logits.argmax(axis=1)
    avg, usage, hist = layer_stats(used)
    return EvalResult(metric=metric, value=compute_metric(metric, preds, labels, logits.shape[1]),
                      examples=len(labels), num_layers=used.shape[1], avg_layers=avg, layer_usage=usage,
                      layers_hist=hist, predictions=preds)


def evaluate(model, enc: Encoded, metric: str, pad_id: int, batch_size: int = 64, gates: str = "route") -> EvalResult:
    return summarize(*predict(model, enc, pad_id, batch_size, gates), metric)
