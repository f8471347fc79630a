"""The oracle headroom: can input-dependent routes pay on this task at all?

A backbone trained to work on any subset of its layers (the teacher trained again with a fresh random subset of
layers per row and step: the subset's size uniform in 1..L, then its layers uniform; task loss + KD of the
teacher's logits; LayerDrop's idea taken to every subset), then, at K layers:

    best subset  the fixed subset of K layers with the best dev metric, scored on test (a static route)
    oracle       each test row on the best subset for it: right when any K-subset gets it right (an upper
                 bound no router reaches; with many subsets and two classes it is optimistic)

oracle - best subset bounds what per-input routing over K layers could add on top of the best static choice of
this backbone; the share of rows on which the subsets disagree says how much there is to choose between; the
subset router (subset_router.py) says how much of it a route chosen from the input alone reaches.
"""

from __future__ import annotations

import copy
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from hadskip.data.metrics import compute_metric
from hadskip.evaluation.baselines.common import BaselineConfig, save, setup, train
from hadskip.data.batches import encode_split, pad_id
from hadskip.evaluation.baselines.subset_router import (fit_router, fit_router_on_dev, held_out_train,
                                                        routed_predictions, subset_outputs)
from hadskip.evaluation.evaluate import default_device
from hadskip.errors import HadSkipError
from hadskip.modeling.checkpoint import RunInfo, load_run, load_run_task, read_info
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


def _lineage(info) -> list:
    """The RunInfos of a run and of the runs it started from (its teacher, recorded in extra["teacher"])."""
    infos = [info]
    while infos[-1].extra.get("teacher") and len(infos) < 8:
        try:
            infos.append(read_info(infos[-1].extra["teacher"]))
        except HadSkipError:  # moved or removed: what it trained on is not known
            infos.append(RunInfo(task=infos[-1].task, max_len=0, kind="teacher"))
    return infos


def headroom(run: str | Path, k: int, batch_size: int = 64) -> dict:
    """The best fixed k-subset (chosen on dev), the per-row oracle over k-subsets and the subset router
    (subset_router.py: fitted on the training rows neither the run nor its teacher trained on, else cross-fitted
    on dev, "router_no_held_out" saying why), on test."""
    model, tokenizer, info = load_run(run)
    model.to(default_device())
    data = load_run_task(info.task)
    subsets = list(combinations(range(model.num_layers), k))
    spec, pad = data.spec, pad_id(tokenizer)
    dev, test = (subset_outputs(model, encode_split(data.split(s), tokenizer, info.max_len), pad, subsets, batch_size)
                 for s in ("dev", "test"))

    def metric(p: np.ndarray, labels: np.ndarray) -> float:
        return float(compute_metric(spec.metric, p, labels, spec.num_labels))

    dev_preds, test_preds = dev.logp.argmax(axis=2), test.logp.argmax(axis=2)  # (S, N)
    dev_labels, test_labels = dev.labels, test.labels
    dev_scores = [metric(p, dev_labels) for p in dev_preds]
    best = int(np.argmax(dev_scores))
    hit = (test_preds == test_labels[None, :]).any(axis=0)
    oracle_preds = np.where(hit, test_labels, test_preds[best])
    disagree = float((test_preds != test_preds[:1]).any(axis=0).mean())
    out = {"k": k, "subsets": len(subsets), "best_subset": [i + 1 for i in subsets[best]],
           "best_subset_dev": dev_scores[best], "best_subset_test": metric(test_preds[best], test_labels),
           "oracle_test": metric(oracle_preds, test_labels), "rows_where_subsets_disagree": round(disagree, 4),
           "best_subset_preds": test_preds[best]}
    held, why = held_out_train(data, tokenizer, info.max_len, _lineage(info))
    if held is None:  # fitted on dev, cross-fitted (subset_router.fit_router_on_dev)
        router, alpha, dev_value = fit_router_on_dev(dev, metric)
        out.update({"router_fit": "dev (5-fold cross-fitted)", "router_no_held_out": why})
    else:
        router, alpha, dev_value = fit_router(subset_outputs(model, held, pad, subsets, batch_size), dev, metric)
        out["router_fit"] = "held-out training rows"
    route = router.route(test.features)
    masks = np.zeros((len(subsets), model.num_layers), dtype=np.float32)
    for i, sub in enumerate(subsets):
        masks[i, list(sub)] = 1.0
    preds = routed_predictions(test, route)
    out.update({"router_dev": dev_value, "router_test": metric(preds, test_labels), "router_alpha": alpha,
                "router_train_rows": len(dev.labels) if held is None else len(held), "router_preds": preds,
                "router_gates": masks[route]})
    return out
