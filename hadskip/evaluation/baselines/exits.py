"""Early exit with exits trained jointly with the backbone: one multi-exit model serves the entropy rule
(DeeBERT / BranchyNet) and the patience rule (PABEE) at any budget (hadskip.evaluation.baselines.rules).

    exit i (1..L-1): a classification head (as the model's own, initialised from it) on the mean of layer i's
                     tokens (BaselineConfig.exit_pool; "first": its first token, as runs before it did),
                     trained at the learning rate HadSkip's gates get (new modules; BaselineConfig.new_lr)
    exit L: the model's own head
    loss = sum_i i * (CE_i + a1 * KL(teacher logits || exit_i logits)) / sum_i i        (PABEE's weighting)
           + the hidden, attention and embedding distillation of HadSkip's stage III (all layers run)

Per-layer probabilities are computed batch by batch on the model's device and only (N, L, C) is kept, so
memory does not grow with the hidden size (the old frozen-feature baseline held N x L x H floats).
Not included: DeeBERT's two-stage training (the exits here train with the backbone, as PABEE's and BERxiT's).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hadskip.data.batches import loader
from hadskip.data.metrics import compute_metric
from hadskip.errors import HadSkipError
from hadskip.evaluation.baselines.common import BaselineConfig, save, setup, train
from hadskip.evaluation.evaluate import default_device
from hadskip.modeling.checkpoint import load_run, load_weights
from hadskip.modeling.units import exit_head
from hadskip.training.losses import LossWeights, distillation, kd_logits

HEADS_FILE = "exit_heads.safetensors"


class MultiExit(nn.Module):
    """A plain (gates off) GatedEncoder plus a head after every layer but the last, reading `pool`
    (units.EXIT_POOLS: the mean of the tokens, or the first token as the model's own head does)."""

    def __init__(self, encoder: nn.Module, pool: str = "mean"):
        super().__init__()
        self.encoder, self.pool = encoder, pool
        self.exits = nn.ModuleList(exit_head(encoder.head, pool) for _ in range(encoder.num_layers - 1))

    @property
    def num_layers(self) -> int:
        return self.encoder.num_layers

    def forward(self, ids, mask, tt, output_attentions: bool = False):
        """-> (exit logits (B, L, C), the encoder's EncoderOutput with every hidden state)."""
        out = self.encoder(ids, mask, tt, gates="off", output_hidden=True, output_attentions=output_attentions)
        logits = [head(h, mask) for head, h in zip(self.exits, out.hidden_states[1:-1], strict=True)]
        return torch.stack([*logits, out.logits], dim=1), out


def _step(model, teacher, weights: LossWeights, batch) -> dict:
    ids, mask, tt = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    att = bool(weights.kd_attention)
    exit_logits, s = model(ids, mask, tt, output_attentions=att)
    L = exit_logits.shape[1]
    w = torch.arange(1, L + 1, dtype=exit_logits.dtype, device=exit_logits.device)
    w = w / w.sum()
    ce = torch.stack([nn.functional.cross_entropy(exit_logits[:, i], batch["labels"]) for i in range(L)])
    parts = {"task": weights.task * (w * ce).sum()}
    inner = bool(weights.kd_hidden or weights.kd_attention or weights.kd_embedding)
    if weights.kd_logits or inner:
        with torch.no_grad():
            t = teacher(ids, mask, tt, gates="off", output_hidden=inner, output_attentions=att)
        if weights.kd_logits:
            kl = torch.stack([kd_logits(exit_logits[:, i], t.logits, weights.temperature) for i in range(L)])
            parts["kd_logits"] = weights.kd_logits * (w * kl).sum()
        if inner:
            inner_w = LossWeights(**{**vars(weights), "kd_logits": 0.0})
            parts.update(distillation(s, t, mask, inner_w))
    return parts


def train_exit_model(cfg: BaselineConfig) -> dict:
    """Train the multi-exit model into the run dir cfg.out (kind "early-exit": the encoder as a run, the exit
    heads in exit_heads.safetensors). Returns its metrics."""
    from safetensors.torch import save_file

    st = setup(cfg)
    pool = cfg.exit_pool or "mean"
    model = MultiExit(copy.deepcopy(st.teacher).cpu(), pool).train()
    weights = cfg.weights()
    prep = st.prep

    def dev_fn(m) -> list[float]:  # the dev metric of each exit
        probs = exit_probs(m, prep.dev, prep.pad_id, cfg.eval_batch_size)
        return [round(float(compute_metric(prep.spec.metric, probs[:, i].argmax(-1), prep.dev.labels,
                                           prep.spec.num_labels)), 5) for i in range(probs.shape[1])]

    model, parts, seconds, curve = train(st, model, lambda m, b: _step(m, st.teacher, weights, b),
                                         "early exit (joint)", new=list(model.exits.parameters()), dev_fn=dev_fn)
    model = model.cpu()
    metrics = {"seconds": round(seconds, 1), "epochs": cfg.epochs, "dev_curve": curve,
               **{f"loss_{n}": round(v, 5) for n, v in parts.items()}}
    out = save(st, model.encoder, "early-exit", metrics, extra={"exit_pool": pool})
    if st.acc.is_main_process:
        save_file({k: v.contiguous() for k, v in model.exits.state_dict().items()}, str(out / HEADS_FILE))
    return metrics


def load_exit_model(run_dir: str | Path, device: str | None = None):
    """(MultiExit in eval mode on `device` (default: cuda when available), tokenizer, RunInfo)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    encoder, tokenizer, info = load_run(run_dir)
    if info.kind != "early-exit" or not (run_dir / HEADS_FILE).is_file():
        raise HadSkipError(f"{run_dir} is not an early-exit run (kind {info.kind!r}, {HEADS_FILE})")
    model = MultiExit(encoder, (info.extra or {}).get("exit_pool", "first"))  # runs before exit_pool: first token
    load_weights(model.exits, load_file(str(run_dir / HEADS_FILE)), f"{run_dir / HEADS_FILE} does not fit")
    device = device or default_device()
    return model.to(device).eval(), tokenizer, info


@torch.no_grad()
def exit_probs(model: MultiExit, enc, pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Class probabilities at every exit, (N, L, C), computed on the model's device batch by batch."""
    model.eval()
    device = next(model.parameters()).device
    out = None
    dl = loader(enc, batch_size, pad_id, shuffle=False)
    for idx, batch in zip(dl.dataset.batch_indices(), dl, strict=True):
        b = {k: v.to(device) for k, v in batch.items()}
        logits, _ = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        p = logits.float().softmax(-1).cpu().numpy()
        if out is None:
            out = np.zeros((len(enc), *p.shape[1:]), dtype=np.float32)
        out[idx] = p
    return out if out is not None else np.zeros((0, model.num_layers, 0), dtype=np.float32)
