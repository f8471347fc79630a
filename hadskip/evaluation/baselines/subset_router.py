"""A router supervised by searched per-row best paths (the idea of Dr.LLM and of depth-adaptive transformers'
supervised halting): can the input tell which K-subset of layers will get it right?

The oracle headroom (anysubset.headroom) lets every test row pick its best subset knowing the label. This router
has to pick it from the input alone, before any layer runs, so it is the headroom a real route could reach:

    features   the mean over attended tokens of the embeddings' output (what HadSkip's first gate reads)
               and the log of the row's length
    targets    per row and K-subset s of the any-subset backbone, log p(true label) with the layers of s
               (clipped at ln 1e-4), on the training rows no run trained on: neither the any-subset run nor the
               teacher it is a copy of (so the teacher too must be fine-tuned on a --train-examples subset)
    model      ridge regression from the standardised features to every subset's target (closed form, numpy;
               a few hundred features and tens of targets need no library), route = the argmax
    selection  the ridge strength on dev (a strong one routes every row to the subset with the best mean
               target: the router nests a static choice); test is reported

Without held-out training rows (no --train-examples, as many as the split has, or a teacher fine-tuned on the
whole split: training rows the backbone learned from say little about rows it has not seen) the router is fitted
on dev instead, its strength chosen by 5-fold cross-fitting on dev (each dev row routed by a router fitted on the
other folds; that cross-fitted metric is its dev number), then fitted on all of dev; test is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hadskip.data.batches import encode_split, loader
from hadskip.data.sources import load_task
from hadskip.modeling.checkpoint import task_source
from hadskip.modeling.units import masked_mean

LOGP_FLOOR = float(np.log(1e-4))
ALPHAS = tuple(10.0 ** e for e in range(-1, 6))


@dataclass
class SubsetOutputs:
    """One split through every subset: log-probabilities (S, N, C), features (N, F), labels (N,)."""

    logp: np.ndarray
    features: np.ndarray
    labels: np.ndarray

    def target(self) -> np.ndarray:
        """(N, S) log p(true label) under each subset, floored."""
        n = len(self.labels)
        return np.maximum(self.logp[:, np.arange(n), self.labels].T, LOGP_FLOOR)


@torch.no_grad()
def subset_outputs(model, enc, pad_id: int, subsets: list[tuple[int, ...]], batch_size: int = 64) -> SubsetOutputs:
    """Every row of `enc` through each subset of layers (the whole batch on one subset: the route a forced
    gate pattern gives), the embeddings computed once per batch."""
    model.eval()
    device = next(model.parameters()).device
    n, c = len(enc), model.config.num_labels
    logp = np.zeros((len(subsets), n, c), dtype=np.float32)
    feats = np.zeros((n, model.config.hidden_size + 1), dtype=np.float32)
    dl = loader(enc, batch_size, pad_id, shuffle=False)
    for idx, batch in zip(dl.dataset.batch_indices(), dl, strict=True):
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        h0 = model.embeddings(ids, mask, model.token_types(ids, batch["token_type_ids"].to(device)))
        feats[idx, :-1] = masked_mean(h0, mask).float().cpu().numpy()
        feats[idx, -1] = np.log(mask.sum(dim=1).float().cpu().numpy().clip(min=1))
        for s, sub in enumerate(subsets):
            h = h0
            for i in sub:
                h = model.layers[i](h, mask)
            logp[s, idx] = torch.log_softmax(model.head(h, mask).float(), dim=-1).cpu().numpy()
    return SubsetOutputs(logp, feats, np.asarray(enc.labels))


def _row_keys(split) -> list[tuple]:
    return list(zip(split.texts, split.pairs if split.pairs is not None else [None] * len(split.texts), strict=True))


def trained_rows(info) -> set[tuple] | None:
    """The (text, pair) of every training row the run `info` learned from, loaded as its training loaded them
    (its task's source with its seed, max_examples and train_examples: training.loop.load_data); None when that is
    not known (a teacher imported from a transformers classifier, a run without its settings)."""
    config = info.extra.get("config")
    if info.extra.get("imported_from") or not isinstance(config, dict):
        return None
    name, options = task_source(info.task)
    split = load_task(name, **options, seed=config.get("seed", 0), max_examples=config.get("max_examples"),
                      train_examples=config.get("train_examples")).train
    return set(_row_keys(split))


def held_out_train(data, tokenizer, max_len: int, runs: list) -> tuple[object | None, str | None]:
    """(the encoded training rows of `data` that none of `runs` trained on, None) or (None, why there are none).
    `runs`: the RunInfos of the any-subset run and of every run it started from (its teacher: the backbone is a
    copy of it, so rows the teacher learned are not held out). Rows are matched by content: a copy of a trained
    row is not held out either."""
    seen: set[tuple] = set()
    for info in runs:
        rows = trained_rows(info)
        if rows is None:
            return None, f"the training rows of its {info.kind} run are not known"
        seen |= rows
    rest = [i for i, key in enumerate(_row_keys(data.train)) if key not in seen]
    if not rest:
        kinds = " and ".join(dict.fromkeys(info.kind for info in runs))
        return None, f"no training row is held out from its {kinds} runs (its teacher trained on every row?)"
    return encode_split(data.train.subset(rest), tokenizer, max_len), None


@dataclass
class Ridge:
    """Standardised features -> one score per subset; route = argmax."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # (F, S)
    bias: np.ndarray  # (S,)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, alpha: float) -> Ridge:
        x = np.asarray(x, dtype=np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        z = (x - mean) / scale
        ym = y.mean(axis=0)
        w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - ym))
        return cls(mean, scale, w, ym)

    def route(self, x: np.ndarray) -> np.ndarray:
        """(N,) the index of the subset each row goes to."""
        return (((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.weights + self.bias).argmax(axis=1)


def routed_predictions(out: SubsetOutputs, route: np.ndarray) -> np.ndarray:
    """(N,) each row's prediction on the subset it was routed to."""
    return out.logp[route, np.arange(len(route))].argmax(axis=1)


def fit_router(train: SubsetOutputs, dev: SubsetOutputs, metric, alphas=ALPHAS) -> tuple[Ridge, float, float]:
    """(router, its alpha, its dev metric): the alpha with the best dev metric (ties: the stronger one)."""
    best = None
    for a in sorted(alphas):
        r = Ridge.fit(train.features, train.target(), a)
        v = metric(routed_predictions(dev, r.route(dev.features)), dev.labels)
        if best is None or v >= best[2]:
            best = (r, a, v)
    return best


def fit_router_on_dev(dev: SubsetOutputs, metric, alphas=ALPHAS, folds: int = 5,
                      seed: int = 0) -> tuple[Ridge, float, float]:
    """Without held-out training rows: (router fitted on the whole dev split, its alpha, its cross-fitted dev
    metric). Each dev row is routed by a router fitted on the other folds; the alpha with the best cross-fitted
    dev metric (ties: the stronger one) is then fitted on all of dev. No row ever scores a router fitted on it."""
    n = len(dev.labels)
    fold = np.random.default_rng(seed).permutation(n) % max(2, min(folds, n))
    y = dev.target()
    best = None
    for a in sorted(alphas):
        route = np.zeros(n, dtype=np.int64)
        for f in np.unique(fold):
            rows = fold == f
            route[rows] = Ridge.fit(dev.features[~rows], y[~rows], a).route(dev.features[rows])
        v = metric(routed_predictions(dev, route), dev.labels)
        if best is None or v >= best[1]:
            best = (a, v)
    return Ridge.fit(dev.features, y, best[0]), best[0], best[1]
