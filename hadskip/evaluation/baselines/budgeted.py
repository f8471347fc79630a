"""Budgeted exit: the teacher cut to its first K layers, trained again with the task loss and distillation.

The student's layer j (1..K) learns from the teacher's layer round(j * L / K) (uniform mapping, as TinyBERT's
layer mapping), its embeddings from the teacher's, its logits from the teacher's; attention KD on the mapped
layers. A static, input-independent K-layer model: the cheapest thing HadSkip must beat.
Not included: fractional K (the nearest integer is trained; the comparison table shows the layers it used).
"""

from __future__ import annotations

import copy

import torch

from hadskip.evaluation.baselines.common import BaselineConfig, save, setup, train
from hadskip.errors import HadSkipError
from hadskip.evaluation.evaluate import evaluate
from hadskip.training.losses import LossWeights, attention_mse, kd_logits, masked_mse, task_loss


def truncate(model, k: int):
    """A copy of `model` keeping its first k layers (and gates)."""
    if not 1 <= k <= model.num_layers:
        raise HadSkipError(f"cannot keep {k} of {model.num_layers} layers")
    m = copy.deepcopy(model)
    m.layers = torch.nn.ModuleList(list(m.layers)[:k])
    m.gates = torch.nn.ModuleList(list(m.gates)[:k])
    m.config.num_layers = k
    m.config.hf_config = dict(m.config.hf_config, num_hidden_layers=k)
    if isinstance(m.config.hf_config.get("layer_types"), list):  # per-layer kinds (ModernBERT under transformers 5)
        m.config.hf_config["layer_types"] = m.config.hf_config["layer_types"][:k]
    return m


def layer_map(k: int, num_layers: int) -> list[int]:
    """Teacher layer (1-based) each of the student's k layers learns from: 6 of 3 -> [2, 4, 6]."""
    return [max(1, min(num_layers, round(j * num_layers / k))) for j in range(1, k + 1)]


def _step(student, teacher, weights: LossWeights, mapping: list[int], batch) -> dict:
    ids, mask, tt = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    inner = bool(weights.kd_hidden or weights.kd_attention or weights.kd_embedding)
    att = bool(weights.kd_attention)
    s = student(ids, mask, tt, gates="off", output_hidden=inner, output_attentions=att)
    parts = {"task": weights.task * task_loss(s.logits, batch["labels"])}
    if not (weights.kd_logits or inner):
        return parts
    with torch.no_grad():
        t = teacher(ids, mask, tt, gates="off", output_hidden=inner, output_attentions=att)
    if weights.kd_logits:
        parts["kd_logits"] = weights.kd_logits * kd_logits(s.logits, t.logits, weights.temperature)
    if weights.kd_embedding:
        parts["kd_embedding"] = weights.kd_embedding * masked_mse(s.hidden_states[0], t.hidden_states[0], mask)
    if weights.kd_hidden:
        parts["kd_hidden"] = weights.kd_hidden * torch.stack(
            [masked_mse(s.hidden_states[j + 1], t.hidden_states[m], mask) for j, m in enumerate(mapping)]).mean()
    if att:
        parts["kd_attention"] = weights.kd_attention * torch.stack(
            [attention_mse(s.attentions[j], t.attentions[m - 1], mask) for j, m in enumerate(mapping)]).mean()
    return parts


def train_budgeted_exit(cfg: BaselineConfig, k: int) -> dict:
    """Train the teacher's first k layers into the run dir cfg.out (kind "budgeted-exit"). Returns its metrics."""
    st = setup(cfg)
    L = st.teacher.num_layers
    if not 1 <= k <= L:
        raise HadSkipError(f"budgeted exit needs 1 <= K <= {L}, got {k}")
    mapping = layer_map(k, L)
    student = truncate(st.teacher, k).cpu().train()
    weights = cfg.weights()
    prep = st.prep

    def dev_fn(m) -> float:
        return evaluate(m, prep.dev, prep.spec.metric, prep.pad_id, cfg.eval_batch_size, gates="off").value

    model, parts, seconds, curve = train(st, student, lambda m, b: _step(m, st.teacher, weights, mapping, b),
                                         f"budgeted exit K={k}", dev_fn=dev_fn)
    dev = evaluate(model, prep.dev, prep.spec.metric, prep.pad_id, cfg.eval_batch_size, gates="off")
    test = evaluate(model, prep.test, prep.spec.metric, prep.pad_id, cfg.eval_batch_size, gates="off")
    metrics = {"dev": dev.value, "test": test.value, "seconds": round(seconds, 1), "k": k, "epochs": cfg.epochs,
               "dev_curve": curve,
               **{f"loss_{n}": round(v, 5) for n, v in parts.items()}}
    save(st, model, "budgeted-exit", metrics, {"layer_map": mapping})
    return metrics
