"""Baselines at the same average layers as HadSkip: budgeted exit and entropy early exit.

- Budgeted exit: the fine-tuned teacher cut to its first K layers, then fine-tuned again (a static,
  input-independent K-layer model).
- Entropy early exit (DeeBERT / BranchyNet style): a classifier after every layer of the frozen teacher
  (the last one is the teacher's own head); an input exits at the first layer whose prediction entropy is
  below a threshold, chosen on dev so that the average number of layers used is K.
Not included: the exit classifiers are trained on frozen [CLS] features (DeeBERT's second stage), not
jointly with the backbone; fractional K for budgeted exit rounds to the nearest integer.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hadskip.batches import encode_split, loader
from hadskip.checkpoint import load_run, load_run_task, task_source
from hadskip.data.metrics import compute_metric
from hadskip.errors import HadSkipError


def truncate(model, k: int):
    """A copy of `model` keeping its first k layers (and gates)."""
    if not 1 <= k <= model.num_layers:
        raise HadSkipError(f"cannot keep {k} of {model.num_layers} layers")
    m = copy.deepcopy(model)
    m.layers = torch.nn.ModuleList(list(m.layers)[:k])
    m.gates = torch.nn.ModuleList(list(m.gates)[:k])
    m.config.num_layers = k
    m.config.hf_config = dict(m.config.hf_config, num_hidden_layers=k)
    return m


def train_budgeted_exit(teacher_dir: str, k: int, out: str, epochs: float = 2.0, progress: bool = True,
                        **train_options) -> dict:
    """Fine-tune the teacher's first k layers; the run dir `out` is a plain k-layer model."""
    from hadskip.train import TrainConfig, finetune

    teacher, tokenizer, info = load_run(teacher_dir)
    task, options = task_source(info.task)
    cfg = TrainConfig(backbone=teacher.config.backbone, task=task, out=out, max_len=info.max_len,
                      epochs=epochs, progress=progress, **options, **train_options)
    return finetune(cfg, init=(truncate(teacher, k).train(), tokenizer), kind="budgeted-exit")


@dataclass
class EarlyExitResult:
    threshold: float
    dev_value: float
    dev_avg_layers: float
    test_value: float
    test_avg_layers: float
    metric: str


@torch.no_grad()
def _layer_features(model, enc, pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """[CLS] hidden state after every layer of the plain model.  -> (N, L, H)"""
    model.eval()
    dl = loader(enc, batch_size, pad_id, shuffle=False)
    feats = torch.zeros(len(enc), model.num_layers, model.config.hidden_size)
    for idx, batch in zip(dl.dataset.batch_indices(), dl, strict=True):
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], gates="off",
                    output_hidden=True)
        feats[torch.from_numpy(idx)] = torch.stack([h[:, 0] for h in out.hidden_states[1:]], dim=1)
    return feats


def _head_logits(heads, feats: torch.Tensor) -> torch.Tensor:
    """(N, L, H) -> (N, L, C): head i applied to the [CLS] feature of layer i (heads see (B, 1, H))."""
    return torch.stack([h(feats[:, i:i + 1], None) for i, h in enumerate(heads)], dim=1)


def exit_layers(entropy: np.ndarray, threshold: float) -> np.ndarray:
    """0-based exit layer per input: the first layer whose entropy < threshold, else the last."""
    below = entropy < threshold
    return np.where(below.any(axis=1), below.argmax(axis=1), entropy.shape[1] - 1)


def threshold_for(entropy: np.ndarray, k: float, iters: int = 60) -> float:
    """The entropy threshold whose average layers used (exit index + 1) is closest to k (bisection)."""
    lo, hi = 0.0, float(entropy.max()) + 1e-6
    for _ in range(iters):
        mid = (lo + hi) / 2
        if exit_layers(entropy, mid).mean() + 1 > k:
            lo = mid  # too many layers: exit more eagerly
        else:
            hi = mid
    cands = [lo, hi]
    return min(cands, key=lambda t: abs(exit_layers(entropy, t).mean() + 1 - k))


def early_exit(teacher_dir: str, budgets: list[float], out: str | None = None, epochs: int = 3, lr: float = 1e-3,
               batch_size: int = 64, seed: int = 0) -> dict[float, EarlyExitResult]:
    """Train exit classifiers on the frozen teacher, pick a threshold per budget on dev, score on test."""
    teacher, tokenizer, info = load_run(teacher_dir)
    data = load_run_task(info.task)
    pad = tokenizer.pad_token_id or 0
    feats = {s: _layer_features(teacher, encode_split(data.split(s), tokenizer, info.max_len), pad)
             for s in ("train", "dev", "test")}
    labels = {s: torch.as_tensor(np.asarray(data.split(s).labels)) for s in ("train", "dev", "test")}
    L = teacher.num_layers
    torch.manual_seed(seed)
    heads = torch.nn.ModuleList(copy.deepcopy(teacher.head) for _ in range(L))  # start from the final head
    trainable = list(heads[:-1].parameters())  # the last layer's exit is the teacher's own head
    opt = torch.optim.AdamW(trainable, lr=lr)
    n = len(labels["train"])
    heads.train()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            logits = _head_logits(heads, feats["train"][idx])  # (B, L, C)
            loss = sum(torch.nn.functional.cross_entropy(logits[:, i], labels["train"][idx]) for i in range(L - 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    heads.eval()
    with torch.no_grad():
        probs = {s: _head_logits(heads, feats[s]).softmax(-1).numpy() for s in ("dev", "test")}
    entropy = {s: -(p * np.log(np.clip(p, 1e-12, 1))).sum(-1) for s, p in probs.items()}
    results = {}
    for k in budgets:
        t = threshold_for(entropy["dev"], k)
        r = {}
        for s in ("dev", "test"):
            ex = exit_layers(entropy[s], t)
            preds = probs[s][np.arange(len(ex)), ex].argmax(-1)
            r[s] = (compute_metric(data.spec.metric, preds, labels[s].numpy(), data.spec.num_labels),
                    float(ex.mean() + 1))
        results[k] = EarlyExitResult(t, r["dev"][0], r["dev"][1], r["test"][0], r["test"][1], data.spec.metric)
    if out:
        from safetensors.torch import save_file

        Path(out).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(Path(out) / "exit_heads.safetensors"))
        (Path(out) / "early_exit.json").write_text(json.dumps(
            {str(k): vars(v) for k, v in results.items()}, indent=2))
    return results


def nearest_int_budget(k: float) -> int:
    return max(1, int(math.floor(k + 0.5)))
