"""The oracle headroom: can input-dependent routes pay on this task at all?

A backbone trained to work on any subset of its layers (the teacher trained again with a fresh random subset of
layers per row and step: the subset's size uniform in 1..L, then its layers uniform; task loss + KD of the
teacher's logits; LayerDrop's idea taken to every subset), then, at K layers:

    best subset  the fixed subset of K layers with the best dev metric, scored on test (a static route)
    oracle       each test row on the best subset for it: right when any K-subset gets it right (an upper
                 bound no router reaches; with many subsets and two classes it is optimistic)

oracle - best subset bounds what per-input routing over K layers could add on top of the best static choice of
this backbone; the share of rows on which the subsets disagree says how much there is to choose between.
"""

from __future__ import annotations

import copy
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from hadskip.data.metrics import compute_metric
from hadskip.evaluation.baselines.common import BaselineConfig, save, setup, train
from hadskip.evaluation.evaluate import default_device, predict
from hadskip.modeling.checkpoint import encode_run_split, load_run
from hadskip.training.losses import LossWeights, kd_logits, task_loss


def random_subsets(batch: int, num_layers: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, L) 0/1: per row a subset of size uniform in 1..L, its layers uniform among those of that size."""
    sizes = torch.randint(1, num_layers + 1, (batch,), generator=generator)
    order = torch.rand(batch, num_layers, generator=generator).argsort(dim=1)  # a random permutation per row
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(num_layers).expand(batch, -1))
    return (rank < sizes[:, None]).float()


def _step(model, teacher, weights: LossWeights, generator: torch.Generator, batch) -> dict:
    ids, mask, tt = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    forced = random_subsets(ids.shape[0], teacher.num_layers, generator).to(ids.device)
    s = model(ids, mask, tt, gates="hard", forced=forced)
    parts = {"task": weights.task * task_loss(s.logits, batch["labels"])}
    if weights.kd_logits:
        with torch.no_grad():
            t = teacher(ids, mask, tt, gates="off")
        parts["kd_logits"] = weights.kd_logits * kd_logits(s.logits, t.logits, weights.temperature)
    return parts


def train_any_subset(cfg: BaselineConfig) -> dict:
    """Train the any-subset backbone into the run dir cfg.out (kind "any-subset"). Returns its metrics."""
    st = setup(cfg)
    model = copy.deepcopy(st.teacher).cpu().train()
    weights = cfg.weights()
    gen = torch.Generator().manual_seed(cfg.seed)
    model, parts, seconds, _ = train(st, model, lambda m, b: _step(m, st.teacher, weights, gen, b),
                                     "any-subset backbone")
    metrics = {"seconds": round(seconds, 1), "epochs": cfg.epochs,
               **{f"loss_{n}": round(v, 5) for n, v in parts.items()}}
    save(st, model, "any-subset", metrics)
    return metrics


def subset_predictions(run: str | Path, k: int, split: str, batch_size: int = 64) -> tuple[list, np.ndarray, object]:
    """(subsets, predictions (S, N) of every k-subset of layers, labels and spec) of the any-subset run."""
    model, tokenizer, info = load_run(run)
    model.to(default_device())
    rs = encode_run_split(tokenizer, info, split)
    L = model.num_layers
    subsets = list(combinations(range(L), k))
    preds = []
    for sub in subsets:
        forced = np.zeros((len(rs.enc), L), dtype=np.float32)
        forced[:, list(sub)] = 1.0
        logits, _, _ = predict(model, rs.enc, rs.pad_id, batch_size, gates="route", forced=forced)
        preds.append(logits.argmax(axis=1))
    return subsets, np.stack(preds), rs


def headroom(run: str | Path, k: int) -> dict:
    """The best fixed k-subset (chosen on dev) and the per-row oracle over k-subsets, on test."""
    subsets, dev_preds, dev = subset_predictions(run, k, "dev")
    _, test_preds, test = subset_predictions(run, k, "test")
    spec = test.spec

    def metric(p: np.ndarray, labels: np.ndarray) -> float:
        return float(compute_metric(spec.metric, p, labels, spec.num_labels))

    dev_labels, test_labels = dev.enc.labels, test.enc.labels
    dev_scores = [metric(p, dev_labels) for p in dev_preds]
    best = int(np.argmax(dev_scores))
    hit = (test_preds == test_labels[None, :]).any(axis=0)
    oracle_preds = np.where(hit, test_labels, test_preds[best])
    disagree = float((test_preds != test_preds[:1]).any(axis=0).mean())
    return {"k": k, "subsets": len(subsets), "best_subset": [i + 1 for i in subsets[best]],
            "best_subset_dev": dev_scores[best], "best_subset_test": metric(test_preds[best], test_labels),
            "oracle_test": metric(oracle_preds, test_labels), "rows_where_subsets_disagree": round(disagree, 4),
            "best_subset_preds": test_preds[best]}
