"""The units of a gated encoder, with the same signatures as the exported graphs (docs/architecture.md):

    embeddings(input_ids, attention_mask, token_type_ids) -> hidden        # (B, T, H)
    gates[i](hidden, attention_mask)                      -> gate logits   # (B, 2); open: l1 - l0 > offset
    layers[i](hidden, attention_mask)                     -> hidden        # (B, T, H)
    head(hidden, attention_mask)                          -> logits        # (B, num_labels)

and the gate rule of the PyTorch side (`gate_open`). A leaf module: it imports nothing of hadskip; the family
adapter a unit calls (hadskip.modeling.families) is passed in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from hadskip.modeling.families import Family


def gate_margin(gate_logits: torch.Tensor) -> torch.Tensor:
    """logit_open - logit_closed in float64, the quantity the gate rule compares with the offset (the budget
    dial's sweep splits its offset intervals at it).  # (..., 2) -> (...,) float64"""
    return gate_logits[..., 1].double() - gate_logits[..., 0].double()


def gate_open(gate_logits: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """The gate rule, open iff logit_open - logit_closed > offset: the torch mirror of
    hadskip.runtime.router.gate_open (same float64 margin, ties and NaN closed), pinned to it by
    tests/test_gate_rule.py.  # (..., 2) -> (...,) bool"""
    return gate_margin(gate_logits) > offset


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the attended tokens.  # (B, T, H), (B, T) -> (B, H)"""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class Embeddings(nn.Module):
    """The backbone's embeddings module (`emb`), then its projection to hidden_size where the family has one
    (`project`, ELECTRA's embeddings_project). attention_mask is unused here."""

    def __init__(self, fam: Family, hf_model: nn.Module):
        super().__init__()
        self.family = fam
        self.emb = hf_model.embeddings
        self.project = fam.projection(hf_model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        h = self.family.embed(self.emb, input_ids, token_type_ids, attention_mask)  # (B, T, E)
        return h if self.project is None else self.project(h)  # (B, T, H)


class Layer(nn.Module):
    """One transformer layer taking the plain (B, T) mask, so every layer graph has the same io; the family
    builds what its layer takes from the mask (hadskip.modeling.families)."""

    def __init__(self, hf_layer: nn.Module, fam: Family, shared: nn.ModuleDict | None = None):
        super().__init__()
        self.layer = hf_layer
        self.family = fam
        # the modules all layers share (registered once, in GatedEncoder.shared): a tuple keeps them unregistered
        # here, so the weights are saved once
        self._shared = (shared if shared is not None else nn.ModuleDict(),)

    @property
    def shared(self) -> nn.ModuleDict:
        return self._shared[0]

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False):
        h, att = self.family.call(self.layer, hidden, attention_mask, output_attentions, shared=self.shared)
        return (h, att) if output_attentions else h  # (B, T, H) [, (B, heads, T, T)]


GATE_POOLS = ("mean", "attention")


class Gate(nn.Module):
    """Gate i: a summary of h_{i-1} -> Linear -> GELU -> Linear -> 2 logits (closed, open).

    pool "mean": the masked mean of the tokens (the paper's kind of gate input). Masked mean rather than [CLS]:
    the [CLS] row of the embedding output is the same for every input, so a CLS-only first gate could not depend
    on the input. pool "attention": the masked mean beside an attention-pooled summary (a learned score per
    token, softmax over the attended tokens; SmartBERT's richer gate input), so a gate can look at the tokens
    that matter for its decision.
    """

    def __init__(self, hidden_size: int, gate_hidden: int, open_bias: float = 2.0, pool: str = "mean"):
        super().__init__()
        if pool not in GATE_POOLS:
            raise ValueError(f"gate pool must be one of {GATE_POOLS}, got {pool!r}")
        self.pool = pool
        self.score = nn.Linear(hidden_size, 1) if pool == "attention" else None
        self.fc1 = nn.Linear(hidden_size * (2 if pool == "attention" else 1), gate_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(gate_hidden, 2)
        with torch.no_grad():
            self.fc2.bias.copy_(torch.tensor([0.0, open_bias]))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = masked_mean(hidden, attention_mask)  # (B, H)
        if self.score is not None:
            s = self.score(hidden).squeeze(-1)  # (B, T)
            s = s.masked_fill(attention_mask == 0, torch.finfo(s.dtype).min)
            w = torch.softmax(s, dim=-1).unsqueeze(-1)  # (B, T, 1)
            x = torch.cat([x, (w * hidden).sum(dim=1)], dim=-1)  # (B, 2H)
        return self.fc2(self.act(self.fc1(x)))  # (B, 2)


ACTIVATIONS = {"tanh": nn.Tanh, "gelu": nn.GELU, "relu": nn.ReLU}


EXIT_POOLS = ("first", "mean")


class MeanPooledHead(nn.Module):
    """A head that reads the mean over the attended tokens instead of the first token: the wrapped head (any
    family's, with its weights) gets a one-token sequence holding that mean. Exit heads after early layers use it
    (docs/results, adaptivity study: after layers 1-3 of MiniLM-L6 the first token's state barely varies between
    inputs, std ~1e-3 against ~0.15 for the mean, and first-token exits stayed at the majority class)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = masked_mean(hidden, attention_mask).unsqueeze(1)  # (B, 1, H)
        return self.head(x, torch.ones_like(attention_mask[:, :1]))  # (B, num_labels)


def exit_head(head: nn.Module, pool: str) -> nn.Module:
    """An exit head initialised as `head`: on the first token ("first") or on the mean of the tokens ("mean")."""
    import copy

    if pool not in EXIT_POOLS:
        raise ValueError(f"exit pool must be one of {EXIT_POOLS}, got {pool!r}")
    h = copy.deepcopy(head)
    return h if pool == "first" else MeanPooledHead(h)


class Head(nn.Module):
    """Classification head on the first token: dense + activation (the family's: tanh for BERT, initialised
    from its pooler; GELU for ELECTRA; ReLU for DistilBERT), dropout, linear."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1, activation: str = "tanh"):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.act(self.dense(hidden[:, 0]))  # (B, H)
        return self.out(self.dropout(x))  # (B, num_labels)
