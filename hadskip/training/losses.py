"""HadSkip's loss parts: task loss, budget penalty, and distillation from the fine-tuned teacher.

Stage III loss = task + a1*KL(logits) + a2*MSE(hidden, per layer) + a3*MSE(attention, per layer)
                 + a4*MSE(embeddings) + beta*(mean g - s)^2          (weights default to 1, paper App. E)
(--gate-penalty per-layer replaces the last term by the mean over layers of (layer l's rate over the batch - s)^2.)
With exit heads (--exit-heads) it adds "exits" = sum_i i * (CE_i + a1*KL(teacher logits || exit_i)) / sum_i i over
exits i = 1..L-1 (PABEE's weighting, as the early-exit baseline's), each on the gated hidden state after layer i.
Hidden and embedding MSEs average over attended tokens only; attention MSE over attended query/key pairs.
In training ("sample" gates) every layer runs on every row: hidden KD compares the mixed state g*f + (1-g)*h (what
the student passes on), attention KD each layer's own attention, also on rows whose gate closed (sampled gates
are not the inference rule, so a layer skipped in one sample may run at inference; tests/test_losses.py pins it).

beta defaults to 20, not 1: the penalty is one scalar over B*L gates, so with beta = 1 its gradient on each
gate is ~L/2 times smaller than the task loss's and the gates of a MiniLM-L6 stayed open at k = 4 of 6
(measured: mean gate 0.90, eval layers 6.0). On MiniLM-L6 + rotten-tomatoes at K = 3, beta = 10 ended at
3.34 test layers and beta = 20 at 3.01-3.10, inside the +-0.3 band.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hadskip.training.config import GATE_PENALTIES, LossWeights

__all__ = ["GATE_PENALTIES", "LossWeights", "budget_penalty", "distillation", "exit_loss", "kd_logits", "masked_mse",
           "task_loss"]


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def budget_penalty(gates: torch.Tensor, target: float, rule: str = "mean") -> torch.Tensor:
    """gates (B, L), s = K / L.
    "mean"       (mean over batch and layers of g - s)^2: the paper's; any fixed subset of K layers meets it.
    "per-layer"  mean over layers of (layer l's execution rate over the batch - s)^2 (ConvNet-AIG's per-layer
                 targets): every layer must run for a share s of the rows, so no fixed subset meets it and a
                 route has to depend on the input. Its gradient on one gate has the same scale as "mean"'s."""
    if rule == "mean":
        return (gates.mean() - target) ** 2
    if rule == "per-layer":
        return ((gates.mean(dim=0) - target) ** 2).mean()
    raise ValueError(f"unknown gate penalty {rule!r}; one of {GATE_PENALTIES}")


def exit_loss(exit_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
              w: LossWeights) -> torch.Tensor:
    """The exit heads' part: exit i (1-based, i = 1..L-1) weighted i / sum of the weights (PABEE), each
    CE + a1 * KL(teacher || exit) (no KL without teacher logits or with a1 = 0).
    exit_logits (B, L-1, C), labels (B,), teacher_logits (B, C) -> scalar"""
    n = exit_logits.shape[1]
    weight = torch.arange(1, n + 1, dtype=exit_logits.dtype, device=exit_logits.device)
    per_exit = []
    for i in range(n):
        part = task_loss(exit_logits[:, i], labels)
        if teacher_logits is not None and w.kd_logits:
            part = part + w.kd_logits * kd_logits(exit_logits[:, i], teacher_logits, w.temperature)
        per_exit.append(part)
    return (weight * torch.stack(per_exit)).sum() / weight.sum()


def kd_logits(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.softmax(teacher / t, -1), reduction="batchmean") * t * t


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over attended tokens.  (B, T, H), (B, T, H), (B, T) -> scalar"""
    m = mask.unsqueeze(-1).to(student.dtype)
    return ((student - teacher) ** 2 * m).sum() / (m.sum() * student.shape[-1]).clamp(min=1.0)


def attention_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE of attention probabilities over attended (query, key) pairs.  (B, h, T, T) -> scalar"""
    m = mask.to(student.dtype)
    pair = (m[:, None, :, None] * m[:, None, None, :]).expand_as(student)  # (B, h, T, T)
    return ((student - teacher) ** 2 * pair).sum() / pair.sum().clamp(min=1.0)


def distillation(student, teacher, mask: torch.Tensor, w: LossWeights) -> dict[str, torch.Tensor]:
    """The KD parts for one batch; `student` and `teacher` are EncoderOutputs with hidden and attentions."""
    parts: dict[str, torch.Tensor] = {}
    if w.kd_logits:
        parts["kd_logits"] = w.kd_logits * kd_logits(student.logits, teacher.logits, w.temperature)
    if w.kd_embedding:
        parts["kd_embedding"] = w.kd_embedding * masked_mse(student.hidden_states[0], teacher.hidden_states[0], mask)
    if w.kd_hidden:
        pairs = zip(student.hidden_states[1:], teacher.hidden_states[1:], strict=True)
        parts["kd_hidden"] = w.kd_hidden * torch.stack([masked_mse(s, t, mask) for s, t in pairs]).mean()
    if w.kd_attention:
        pairs = zip(student.attentions, teacher.attentions, strict=True)
        parts["kd_attention"] = w.kd_attention * torch.stack([attention_mse(s, t, mask) for s, t in pairs]).mean()
    return parts
