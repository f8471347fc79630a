"""The gated encoder: an encoder backbone with a binary gate before every layer (HadSkip).

The model is four kinds of unit with the same signatures as the exported graphs, so export is per unit
and the PyTorch eval path and every runtime share one gate rule (`gate_open`; docs/architecture.md):

    embeddings(input_ids, attention_mask, token_type_ids) -> hidden        # (B, T, H)
    gates[i](hidden, attention_mask)                      -> gate logits   # (B, 2); open: l1 - l0 > offset
    layers[i](hidden, attention_mask)                     -> hidden        # (B, T, H)
    head(hidden, attention_mask)                          -> logits        # (B, num_labels)

Gate modes of `GatedEncoder.forward`:
    "off"    plain encoder, every layer on every row (stage I, the teacher)
    "sample" training: ReinMax (or STE) samples g, h_i = g*f_i(h) + (1-g)*h
    "hard"   g = gate_open, same masked formula, every layer computed on every row (a reference for tests)
    "route"  g = gate_open, each layer runs only on its open rows (gather, run, scatter) - the eval path
Family differences (how to embed, call a layer, start the head) live in hadskip/families.py, never here.
Not included: cross-attention / decoder use of the backbone, token-level (rather than row-level) skipping.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from hadskip.families import SUPPORTED_MODEL_TYPES, Family, additive_mask, call_layer, family
from hadskip.reinmax import ESTIMATORS

GateMode = Literal["off", "sample", "hard", "route"]
__all__ = ["SUPPORTED_MODEL_TYPES", "additive_mask", "call_layer", "GatedEncoder", "ModelConfig", "gate_open"]


@dataclass
class ModelConfig:
    """What it takes to rebuild a GatedEncoder without the original backbone files."""

    backbone: str  # the name the user gave (hub name, local path or an offline alias)
    model_type: str  # transformers model_type of the backbone
    num_layers: int
    hidden_size: int
    num_heads: int
    num_labels: int
    gate_hidden: int = 64
    estimator: str = "reinmax"  # "reinmax" | "ste"
    tau: float = 1.0  # ReinMax temperature
    gate_open_bias: float = 2.0  # initial logit1 - logit0 of every gate (gates start mostly open)
    hf_config: dict = field(default_factory=dict)  # the backbone's transformers config, as a dict

    def __post_init__(self) -> None:
        family(self.model_type)  # HadSkipError naming why another family is refused
        if self.num_layers < 1 or self.num_labels < 2 or self.gate_hidden < 1:
            raise ValueError("num_layers >= 1, num_labels >= 2 and gate_hidden >= 1 are required")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {self.estimator!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**d)


def gate_open(gate_logits: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """The gate rule, open iff logit_open - logit_closed > offset: the torch mirror of
    hadskip.runtime.router.gate_open (same float64 margin, ties and NaN closed), pinned to it by
    tests/test_gate_rule.py.  # (..., 2) -> (...,) bool"""
    return (gate_logits[..., 1].double() - gate_logits[..., 0].double()) > offset


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
    builds what its layer takes from the mask (hadskip.families)."""

    def __init__(self, hf_layer: nn.Module, fam: Family | None = None, shared: nn.ModuleDict | None = None):
        super().__init__()
        self.layer = hf_layer
        self.family = fam if fam is not None else family("bert")
        # the modules all layers share (registered once, in GatedEncoder.shared): a tuple keeps them unregistered
        # here, so the weights are saved once
        self._shared = (shared if shared is not None else nn.ModuleDict(),)

    @property
    def shared(self) -> nn.ModuleDict:
        return self._shared[0]

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False):
        h, att = self.family.call(self.layer, hidden, attention_mask, output_attentions, shared=self.shared)
        return (h, att) if output_attentions else h  # (B, T, H) [, (B, heads, T, T)]


class Gate(nn.Module):
    """Gate i: masked mean of h_{i-1} -> Linear -> GELU -> Linear -> 2 logits (closed, open).

    Masked mean rather than [CLS]: the [CLS] row of the embedding output is the same for every input,
    so a CLS-only first gate could not depend on the input.
    """

    def __init__(self, hidden_size: int, gate_hidden: int, open_bias: float = 2.0):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, gate_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(gate_hidden, 2)
        with torch.no_grad():
            self.fc2.bias.copy_(torch.tensor([0.0, open_bias]))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(masked_mean(hidden, attention_mask))))  # (B, 2)


ACTIVATIONS = {"tanh": nn.Tanh, "gelu": nn.GELU, "relu": nn.ReLU}


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


@dataclass
class EncoderOutput:
    logits: torch.Tensor  # (B, num_labels)
    gates: torch.Tensor | None = None  # (B, L) 1 = layer ran; carries the estimator's gradient in "sample"
    gate_logits: torch.Tensor | None = None  # (B, L, 2)
    hidden_states: list[torch.Tensor] | None = None  # [embeddings, h_1, ..., h_L], each (B, T, H)
    attentions: list[torch.Tensor] | None = None  # per layer (B, heads, T, T) of the layer's own computation


class GatedEncoder(nn.Module):
    """A backbone whose layers are each preceded by a gate; see the module docstring for the modes."""

    def __init__(self, config: ModelConfig, hf_model: nn.Module):
        super().__init__()
        self.config = config
        self.family = fam = family(config.model_type)
        fam.check(config.hf_config)
        self.embeddings = Embeddings(fam, hf_model)
        self.shared = nn.ModuleDict(fam.shared(hf_model))  # e.g. DeBERTa's relative position embeddings
        self.layers = nn.ModuleList(Layer(layer, fam, self.shared) for layer in fam.layers(hf_model))
        if len(self.layers) != config.num_layers:
            raise ValueError(f"backbone has {len(self.layers)} layers, config says {config.num_layers}")
        self.gates = nn.ModuleList(
            Gate(config.hidden_size, config.gate_hidden, config.gate_open_bias) for _ in self.layers
        )
        self.head = fam.make_head(config, hf_model)  # Head, or the family's (ModernBERT's holds its final norm)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def backbone_parameters(self):
        """Everything but the gates (frozen in stage II)."""
        for name, p in self.named_parameters():
            if not name.startswith("gates."):
                yield p

    def gate_parameters(self):
        return self.gates.parameters()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, *, gates: GateMode = "route",
                forced: torch.Tensor | None = None, output_hidden: bool = False,
                output_attentions: bool = False, generator: torch.Generator | None = None,
                gate_offset: float = 0.0) -> EncoderOutput:
        """Run the encoder. `forced` (B, L) of 0/1 overrides the gate decisions in "hard" and "route";
        otherwise they are gate_open(gate logits, gate_offset)."""
        if token_type_ids is None or not self.family.uses_token_types(self.config.hf_config):
            token_type_ids = torch.zeros_like(input_ids)  # the rule the manifest carries to the runtime
        if gates == "route" and output_attentions:
            raise ValueError("attentions are only defined when every layer runs on every row")
        sample = ESTIMATORS[self.config.estimator]
        h = self.embeddings(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        hidden = [h] if output_hidden else None
        attentions: list[torch.Tensor] | None = [] if output_attentions else None
        g_all, logit_all = [], []
        for i, layer in enumerate(self.layers):
            g = None
            if gates != "off":
                logits_i = self.gates[i](h, attention_mask)  # (B, 2)
                logit_all.append(logits_i)
                if forced is not None:
                    g = forced[:, i].to(h.dtype)
                elif gates == "sample":
                    g = sample(logits_i, self.config.tau, generator)[:, 1]  # (B,) hard 0/1 with a gradient
                else:
                    g = gate_open(logits_i, gate_offset).to(h.dtype)
                g_all.append(g)
            if gates == "route":
                h = self._route(layer, h, attention_mask, g)
            else:
                out = layer(h, attention_mask, output_attentions=output_attentions)
                f, att = out if output_attentions else (out, None)
                if att is not None:
                    attentions.append(att)
                h = f if g is None else g[:, None, None] * f + (1 - g[:, None, None]) * h
            if hidden is not None:
                hidden.append(h)
        return EncoderOutput(
            logits=self.head(h, attention_mask),
            gates=torch.stack(g_all, dim=1) if g_all else None,
            gate_logits=torch.stack(logit_all, dim=1) if logit_all else None,
            hidden_states=hidden,
            attentions=attentions,
        )

    @staticmethod
    def _route(layer: Layer, h: torch.Tensor, mask: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Run `layer` only on the rows whose gate is open (gather, run, scatter). The runtime's loop
        (hadskip.runtime.router.route) does the same and also trims padding; docs/architecture.md ("The routing
        loop") says why this one stays, and tests/test_gate_rule.py pins the two together."""
        rows = g.bool()
        if bool(rows.all()):
            return layer(h, mask)
        if not bool(rows.any()):
            return h
        idx = rows.nonzero().squeeze(1)  # (R,)
        return h.index_copy(0, idx, layer(h.index_select(0, idx), mask.index_select(0, idx)))
