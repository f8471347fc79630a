"""The gated encoder: an encoder backbone with a binary gate before every layer (HadSkip).

The model is four kinds of unit (hadskip.modeling.units) with the same signatures as the exported graphs, so
export is per unit and the PyTorch eval path and every runtime share one gate rule (`gate_open`;
docs/architecture.md).

Gate modes of `GatedEncoder.forward`:
    "off"    plain encoder, every layer on every row (stage I, the teacher)
    "sample" training: ReinMax (or STE) samples g, h_i = g*f_i(h) + (1-g)*h
    "hard"   g = gate_open, same masked formula, every layer computed on every row (a reference for tests)
    "route"  g = gate_open, each layer runs only on its open rows (gather, run, scatter) - the eval path
Family differences (how to embed, call a layer, start the head) live in hadskip/modeling/families/, never here.

With `ModelConfig.exit_heads` the encoder also owns `exits`: L-1 heads (each built as its head is), exit i after
position i (1..L-1), reading the hidden state after that position whether its layer ran or was skipped
(`exit_logits`; the skip + exit route, hadskip.evaluation.skip_exit). `forward` never calls them.
Not included: cross-attention / decoder use of the backbone, token-level (rather than row-level) skipping.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal


import torch
from torch import nn

from hadskip.modeling.families import SUPPORTED_MODEL_TYPES, additive_mask, call_layer, family
from hadskip.modeling.reinmax import ESTIMATORS
from hadskip.modeling.units import Embeddings, Gate, Layer, exit_head, gate_open

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
    gate_pool: str = "mean"  # what a gate reads of its input: units.GATE_POOLS
    exit_heads: bool = False  # exit heads after layers 1..L-1 (skip + exit); old configs without it: none
    exit_pool: str = "first"  # what the exit heads read (units.EXIT_POOLS); configs without it: "first"
    hf_config: dict = field(default_factory=dict)  # the backbone's transformers config, as a dict

    def __post_init__(self) -> None:
        family(self.model_type)  # HadSkipError naming why another family is refused
        if self.num_layers < 1 or self.num_labels < 2 or self.gate_hidden < 1:
            raise ValueError("num_layers >= 1, num_labels >= 2 and gate_hidden >= 1 are required")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.exit_heads and self.num_layers < 2:
            raise ValueError("exit heads need at least 2 layers (an exit after each layer but the last)")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {self.estimator!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["exit_heads"]:  # a model without exit heads writes the config it always did
            del d["exit_heads"], d["exit_pool"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**d)


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
            Gate(config.hidden_size, config.gate_hidden, config.gate_open_bias, config.gate_pool)
            for _ in self.layers
        )
        self.head = fam.make_head(config, hf_model)  # Head, or the family's (ModernBERT's holds its final norm)
        self.exits = nn.ModuleList(exit_head(self.head, config.exit_pool) for _ in range(config.num_layers - 1)) \
            if config.exit_heads else None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def backbone_parameters(self):
        """Everything but the gates and the exit heads (frozen in stage II)."""
        for name, p in self.named_parameters():
            if not name.startswith(("gates.", "exits.")):
                yield p

    def gate_parameters(self):
        return self.gates.parameters()

    def exit_parameters(self):
        """The exit heads' parameters (none without exit heads)."""
        return iter(()) if self.exits is None else self.exits.parameters()

    def add_exits(self, pool: str = "mean") -> None:
        """Give this encoder exit heads initialised as its head, reading `pool` (units.EXIT_POOLS; config.exit_heads
        becomes True)."""
        self.config.exit_heads, self.config.exit_pool = True, pool
        self.exits = nn.ModuleList(exit_head(self.head, pool) for _ in range(self.num_layers - 1))

    def exit_logits(self, hidden_states: list[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
        """Exit i's logits on the hidden state after position i, i = 1..L-1, from forward's hidden_states
        ([embeddings, h_1, ..., h_L]).  # -> (B, L-1, num_labels)"""
        if self.exits is None:
            raise ValueError("this model has no exit heads")
        return torch.stack([head(h, attention_mask) for head, h in zip(self.exits, hidden_states[1:-1],
                                                                       strict=True)], dim=1)

    def token_types(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """The token-type ids the embeddings get: the given ones where the family uses token types, else zeros
        (the rule the manifest carries to the runtime as backbone.token_types)."""
        if token_type_ids is None or not self.family.uses_token_types(self.config.hf_config):
            return torch.zeros_like(input_ids)
        return token_type_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, *, gates: GateMode = "route",
                forced: torch.Tensor | None = None, output_hidden: bool = False,
                output_attentions: bool = False, generator: torch.Generator | None = None,
                gate_offset: float = 0.0, max_layers: int | torch.Tensor | None = None) -> EncoderOutput:
        """Run the encoder. `forced` (B, L) of 0/1 overrides the gate decisions in "hard" and "route";
        otherwise they are gate_open(gate logits, gate_offset). `max_layers` (an int or (B,); "hard" and
        "route"): once a row has run that many layers its remaining gates close (the runtime's cap_gates)."""
        token_type_ids = self.token_types(input_ids, token_type_ids)
        if gates == "route" and output_attentions:
            raise ValueError("attentions are only defined when every layer runs on every row")
        sample = ESTIMATORS[self.config.estimator]
        h = self.embeddings(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        hidden = [h] if output_hidden else None
        attentions: list[torch.Tensor] | None = [] if output_attentions else None
        g_all, logit_all = [], []
        if max_layers is not None and gates == "sample":
            raise ValueError("max_layers applies to the hard gates (modes hard and route), not to sampling")
        used = torch.zeros(input_ids.shape[0], dtype=h.dtype, device=h.device)
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
                if max_layers is not None:
                    g = g * (used < torch.as_tensor(max_layers, device=h.device)).to(h.dtype)
                    used = used + g
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
