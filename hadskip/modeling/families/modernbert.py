"""ModernBERT: rotary cos/sin and the local layers' window mask built inside every layer unit, the final norm in
the head unit."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hadskip.errors import HadSkipError
from hadskip.modeling.families.base import Family, _run


class ModernBertHead(nn.Module):
    """ModernBERT's head unit: the backbone's final norm (after whichever layer ran last, so a skipped last layer
    stays correct), then ModernBertForSequenceClassification's classifier: "cls" (first token) or "mean" (masked
    mean) pooling, dense + activation + LayerNorm, dropout, linear.  (B, T, H), (B, T) -> (B, num_labels)"""

    def __init__(self, final_norm: nn.Module, hidden_size: int, num_labels: int, hf_config: dict):
        super().__init__()
        from transformers.activations import ACT2FN

        eps, bias = float(hf_config.get("norm_eps", 1e-5)), bool(hf_config.get("norm_bias", False))
        self.final_norm = final_norm  # the backbone's own module (its pre-trained weights)
        self.pooling = str(hf_config.get("classifier_pooling", "cls"))
        self.dense = nn.Linear(hidden_size, hidden_size, bias=bool(hf_config.get("classifier_bias", False)))
        self.act = ACT2FN[str(hf_config.get("classifier_activation", "gelu"))]
        self.norm = nn.LayerNorm(hidden_size, eps=eps, bias=bias)
        self.dropout = nn.Dropout(float(hf_config.get("classifier_dropout") or 0.0))
        self.out = nn.Linear(hidden_size, num_labels)
        # transformers' initialisation of a fresh ModernBertForSequenceClassification head
        std = float(hf_config.get("initializer_range", 0.02))
        cut = float(hf_config.get("initializer_cutoff_factor") or 3.0)
        layers = int(hf_config.get("num_hidden_layers", 1))
        for lin, s in ((self.dense, std / (2.0 * layers) ** 0.5), (self.out, hidden_size ** -0.5)):
            nn.init.trunc_normal_(lin.weight, std=s, a=-cut * s, b=cut * s)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.final_norm(hidden)  # (B, T, H)
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            x = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # (B, H)
        else:
            x = h[:, 0]  # (B, H)
        return self.out(self.dropout(self.norm(self.act(self.dense(x)))))  # (B, num_labels)


@dataclass(frozen=True)
class ModernBertFamily(Family):
    """ModernBERT: token embeddings + LayerNorm (no positions, no token types), layers under `layers` with rotary
    positions and, on all but every global_attn_every_n_layers-th layer, sliding-window attention
    (|i - j| <= local_attention // 2). Every layer call builds, from the plain (B, T) mask and T alone, the
    positions 0..T-1 its rotary module turns into cos/sin and its additive mask (the window's on local layers), on
    the padded eager/sdpa path, so each exported layer graph is self-contained. The final norm after the last
    layer lives in the head unit (ModernBertHead)."""

    POOLINGS = ("cls", "mean")

    def embed(self, emb, input_ids, token_type_ids, mask):
        return emb(input_ids=input_ids)  # (B, T, H)

    def check(self, hf_config: dict) -> None:
        from transformers.activations import ACT2FN

        if hf_config.get("classifier_pooling", "cls") not in self.POOLINGS:
            raise HadSkipError(f"ModernBERT classifier_pooling {hf_config.get('classifier_pooling')!r} is not "
                               f"supported ({', '.join(self.POOLINGS)})")
        if str(hf_config.get("classifier_activation", "gelu")) not in ACT2FN:
            raise HadSkipError(f"ModernBERT classifier_activation {hf_config.get('classifier_activation')!r} is "
                               "not a transformers activation")

    def layers(self, hf_model):
        impl = getattr(hf_model.config, "_attn_implementation", "eager")
        if impl not in ("eager", "sdpa"):
            raise HadSkipError(f"ModernBERT loaded with attn_implementation={impl!r} (the unpadded path) is not "
                               "supported: load it with 'eager' or 'sdpa'")
        # layers and embeddings are called one by one, never through ModernBertModel.forward (which turns
        # torch.compile off on CPU): keep them on their plain, traceable path
        hf_model.config.reference_compile = False
        return super().layers(hf_model)

    def call(self, layer, hidden, mask, output_attentions=False, export_form=False, shared=None):
        att = layer.attn
        pos = torch.arange(hidden.shape[1], device=hidden.device)  # (T,) positions 0..T-1 of the padded rows
        keep = mask[:, None, None, :].bool()  # (B, 1, 1, T): key j is a token
        if att.local_attention != (-1, -1):  # a local layer: also |i - j| <= local_attention // 2
            keep = keep & ((pos[None, :] - pos[:, None]).abs() <= att.local_attention[0])[None, None]  # (B,1,T,T)
        ext = torch.where(keep, 0.0, torch.finfo(hidden.dtype).min).to(hidden.dtype)
        # the layer's attention picks sliding_window_mask on local layers, attention_mask on global ones
        return _run(layer, att, lambda: layer(hidden, attention_mask=ext, sliding_window_mask=ext,
                                              position_ids=pos[None, :], output_attentions=output_attentions),
                    output_attentions, 0)

    def make_head(self, config, hf_model):
        return ModernBertHead(hf_model.final_norm, config.hidden_size, config.num_labels, config.hf_config)

    def position_note(self, hf_config: dict) -> str:
        return (f"it was pre-trained on up to max_position_embeddings = {hf_config.get('max_position_embeddings')} "
                "rotary positions")

    def base_key(self, key: str) -> str | None:
        if key.startswith("head.final_norm."):
            return key[len("head."):]
        return super().base_key(key)
