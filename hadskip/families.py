"""Encoder families: the one place where BERT, RoBERTa, ELECTRA, DistilBERT, ... differ (docs/architecture.md).

`family(model_type)` returns the adapter of a supported transformers model_type, or raises HadSkipError naming
why the type is refused. An adapter says

    embed(hf_embeddings, input_ids, token_type_ids)        -> (B, T, E)   the backbone's own embeddings module
    projection_path                                        ELECTRA's embeddings_project (E -> H) or None
    layers(hf_model)                                       -> the HF layer modules, in order
    call(layer, hidden, mask, output_attentions, export_form)
                                                           -> (hidden (B, T, H), attention probs or None); mask
                                                              is the plain (B, T) 0/1 mask, the family builds
                                                              what its layers take from it
    uses_token_types(hf_config)                            the token-type rule (the exporter writes the answer
                                                              into the manifest; the runtime reads only that)
    max_tokens(hf_config)                                  the longest input the position table embeds
    head_activation, head_dropout(hf_config), head_init    the classification head and its initialisation
    make_head(config, hf_model)                            the head unit (ModernBERT's holds the final norm)
    classifier, classifier_parts, base_key(key)            where our weights go in transformers'
                                                              XForSequenceClassification (baseline export, tests)

Needs torch (imported at module level): import it where the model is built.
Supported: BERT, RoBERTa (xlm-roberta, camembert), ELECTRA, DistilBERT, DeBERTa-v2/v3 (its relative position
embeddings, shared by all layers, are held once by the GatedEncoder and run inside every layer unit), ModernBERT
(rotary cos/sin computed inside every layer unit from positions 0..T-1, the sliding-window mask of its local
layers built there from the plain mask on the padded eager/sdpa path, and its final norm in the head unit, so it
follows whichever layer ran last).
Refused: ALBERT (one set of layer weights shared by every layer: there is no layer of its own to skip or to
export per layer), DeBERTa v1 (not ported), DeBERTa-v2 with a convolution layer or z_steps, ModernBERT loaded
for flash attention (the unpadded path), and everything that is not an encoder listed here.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from hadskip.errors import HadSkipError


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 0/1 mask -> (B, 1, 1, T) additive mask: 0 where attended, dtype-min where padded.

    torch.where rather than (1 - m) * min: in fp16 min rounds to -inf and 0 * -inf would be NaN.
    """
    keep = attention_mask[:, None, None, :].bool()
    return torch.where(keep, 0.0, torch.finfo(dtype).min).to(dtype)


def _run(layer: nn.Module, attention: nn.Module, call, output_attentions: bool, pick: int):
    """(hidden, probs or None) of `call()`, a layer call. The hidden state is `out[pick]` of a tuple, or the
    bare tensor transformers 5 returns; the probs come from `attention`'s (context, probs) output."""
    probs: list = []
    handle = None
    if output_attentions:
        def grab(_module, _args, out):
            probs.append(out[1] if isinstance(out, tuple) and len(out) > 1 else None)

        handle = attention.register_forward_hook(grab)
    try:
        out = call()
    finally:
        if handle is not None:
            handle.remove()
    h = out if isinstance(out, torch.Tensor) else out[pick]  # (B, T, H)
    if not output_attentions:
        return h, None
    if not probs or probs[-1] is None:
        raise ValueError("the backbone returned no attention probabilities: load it with attn_implementation='eager'")
    return h, probs[-1]


def call_layer(hf_layer: nn.Module, hidden: torch.Tensor, ext_mask: torch.Tensor,
               output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One BERT-shaped HF encoder layer: (hidden (B, T, H), attention probs (B, heads, T, T) or None).

    transformers 4.x returns a tuple (hidden, [attentions]) from BertLayer.forward, transformers 5 a bare
    (B, T, H) tensor (it records attentions with hooks), so `out[0]` would take batch row 0 there. The
    attention probs are read from the self-attention module's (context, probs) output, which both lines
    return with eager attention.
    """
    kw = {"output_attentions": True} if output_attentions else {}
    return _run(hf_layer, hf_layer.attention.self, lambda: hf_layer(hidden, attention_mask=ext_mask, **kw),
                output_attentions, 0)


@dataclass(frozen=True)
class Family:
    """BERT-shaped encoders (BERT, RoBERTa and its kin, ELECTRA): word + position + type embeddings, layers
    under encoder.layer taking the (B, 1, 1, T) additive mask."""

    name: str
    model_types: tuple[str, ...]
    layer_path: str = "encoder.layer"  # where the layers are in the base model
    projection_path: str | None = None  # a Linear E -> H after the embeddings (ELECTRA), when the model has it
    token_types: bool = True  # reads token types (when its type vocabulary has >= 2 entries)
    positions_after_padding: bool = False  # RoBERTa numbers positions from padding_idx + 1
    head_activation: str = "tanh"  # of the classification head's dense layer
    head_init: str | None = "pooler.dense"  # base-model module whose weights start head.dense, when present
    classifier: tuple[str, ...] = ("{prefix}.pooler.dense", "classifier")  # head.dense, head.out in XFor...
    classifier_parts: tuple[str, ...] = ("dense", "out")  # the head modules `classifier` names, in its order
    dropout_keys: tuple[str, ...] = ("hidden_dropout_prob",)  # the first one set is the head's dropout

    # -- embeddings -----------------------------------------------------------------------------------------
    shared_paths: tuple[tuple[str, str], ...] = ()  # (our name, base-model path) of modules every layer uses

    def embed(self, emb: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
        return emb(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, T, E)

    def projection(self, hf_model: nn.Module) -> nn.Module | None:
        return getattr(hf_model, self.projection_path, None) if self.projection_path else None

    def check(self, hf_config: dict) -> None:
        """HadSkipError (one line) for a configuration of the family that is not supported."""

    def shared(self, hf_model: nn.Module) -> dict[str, nn.Module]:
        """Modules every layer uses (DeBERTa's relative position embeddings): the GatedEncoder holds them once
        (`shared.<name>`) and every layer unit calls them, so each exported layer graph contains them."""
        out = {}
        for name, path in self.shared_paths:
            try:
                out[name] = hf_model.get_submodule(path)
            except AttributeError:
                continue
        return out

    # -- layers ---------------------------------------------------------------------------------------------
    def layers(self, hf_model: nn.Module) -> list[nn.Module]:
        return list(hf_model.get_submodule(self.layer_path))

    def call(self, layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, output_attentions: bool = False,
             export_form: bool = False, shared: dict | None = None):
        """export_form builds the additive mask as HF's classic `(1 - mask) * min`: the same values for a 0/1
        mask, in the Unsqueeze-Cast-Sub-Mul form onnxruntime's Attention fusion recognises."""
        if export_form:
            ext = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min  # (B,1,1,T)
        else:
            ext = additive_mask(mask, hidden.dtype)
        return call_layer(layer, hidden, ext, output_attentions)

    # -- facts ----------------------------------------------------------------------------------------------
    def uses_token_types(self, hf_config: dict) -> bool:
        """A backbone sees the tokenizer's token types (1 on a pair's second text) only if its family reads
        them and it has at least two; otherwise every token type is 0. Not recorded counts as two."""
        n = hf_config.get("type_vocab_size")
        return self.token_types and not (isinstance(n, int) and n < 2)

    def max_tokens(self, hf_config: dict) -> int:
        """The longest input (in tokens, specials included) the backbone's position table can embed."""
        table = int(hf_config.get("max_position_embeddings") or 0)
        if self.positions_after_padding:
            return table - int(hf_config.get("pad_token_id") or 0) - 1
        return table

    def position_note(self, hf_config: dict) -> str:
        why = f"its position table has {hf_config.get('max_position_embeddings')} rows"
        if self.positions_after_padding:
            why += f" and its positions start at padding_idx + 1 = {int(hf_config.get('pad_token_id') or 0) + 1}"
        return why

    # -- head -----------------------------------------------------------------------------------------------
    def head_act(self, hf_config: dict) -> str:
        return self.head_activation

    def head_dropout(self, hf_config: dict) -> float:
        for key in self.dropout_keys:
            if hf_config.get(key) is not None:
                return float(hf_config[key])
        return 0.1

    def make_head(self, config, hf_model: nn.Module) -> nn.Module:
        """The head unit of a GatedEncoder of hadskip.model.ModelConfig `config`:
        (hidden (B, T, H), attention_mask (B, T)) -> logits (B, num_labels)."""
        from hadskip.model import Head

        hf = config.hf_config
        head = Head(config.hidden_size, config.num_labels, self.head_dropout(hf), self.head_act(hf))
        self.init_head(head, hf_model)
        return head

    def init_head(self, head: nn.Module, hf_model: nn.Module) -> None:
        """Start head.dense from the backbone's pooler where it has one (BERT); else it stays fresh."""
        if not self.head_init:
            return
        try:
            src = hf_model.get_submodule(self.head_init)
        except AttributeError:
            return
        head.dense.load_state_dict(src.state_dict())

    # -- weights in transformers' layout --------------------------------------------------------------------
    def base_key(self, key: str) -> str | None:
        """The base model's key of a GatedEncoder key (None for gates and head)."""
        if key.startswith("embeddings.emb."):
            return "embeddings." + key[len("embeddings.emb."):]
        if key.startswith("embeddings.project.") and self.projection_path:
            return f"{self.projection_path}." + key[len("embeddings.project."):]
        if key.startswith("layers."):
            i, rest = key[len("layers."):].split(".", 1)
            return f"{self.layer_path}.{i}.{rest.removeprefix('layer.')}"
        if key.startswith("shared."):
            name, rest = key[len("shared."):].split(".", 1)
            return f"{dict(self.shared_paths)[name]}.{rest}"
        return None


@functools.lru_cache(maxsize=None)
def _forward_takes(layer_type: type, name: str) -> bool:
    """Whether `layer_type.forward` has a parameter called `name` (not merely **kwargs)."""
    return name in inspect.signature(layer_type.forward).parameters


@dataclass(frozen=True)
class DistilBertFamily(Family):
    """DistilBERT: word + position embeddings only (no token types), layers under transformer.layer.

    The two transformers lines call the layer differently. 4.x: `forward(x, attn_mask, ...)` takes the plain
    (B, T) mask (`masked_fill(mask == 0, min)` inside) and returns (hidden,) or (attentions, hidden).
    5.x: `forward(hidden_states, attention_mask, **kwargs)` takes the additive mask DistilBertModel builds
    (0 / dtype-min, added to the scores) and returns the bare (B, T, H) tensor; an `attn_mask=` keyword there
    lands in **kwargs and is ignored, so the padded keys would be attended."""

    def embed(self, emb, input_ids, token_type_ids, mask):
        return emb(input_ids)  # (B, T, H)

    def call(self, layer, hidden, mask, output_attentions=False, export_form=False, shared=None):
        if _forward_takes(type(layer), "attn_mask"):  # transformers 4.x
            # the hidden state is the last element (4.x puts the attentions first); the probs come from the
            # MultiHeadSelfAttention's (context, weights)
            return _run(layer, layer.attention,
                        lambda: layer(hidden, attn_mask=mask, output_attentions=output_attentions),
                        output_attentions, -1)
        if export_form:  # the BERT-family form, see Family.call
            ext = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min  # (B,1,1,T)
        else:
            ext = additive_mask(mask, hidden.dtype)  # (B, 1, 1, T)
        # transformers 5.x: a bare tensor; the probs come from DistilBertSelfAttention's (context, weights)
        return _run(layer, layer.attention, lambda: layer(hidden, attention_mask=ext), output_attentions, 0)


@dataclass(frozen=True)
class DebertaV2Family(Family):
    """DeBERTa-v2/v3: embeddings multiplied by the mask (token types only where type_vocab_size >= 2, none in
    v3), layers taking the (B, 1, T, T) pairwise mask, the relative positions of the sequence (a function of T
    only) and the relative position embeddings of the encoder (optionally LayerNorm'ed), which all layers
    share: the GatedEncoder holds them once and every layer unit runs them."""

    def embed(self, emb, input_ids, token_type_ids, mask):
        return emb(input_ids=input_ids, token_type_ids=token_type_ids, mask=mask)  # (B, T, H)

    def check(self, hf_config: dict) -> None:
        if int(hf_config.get("conv_kernel_size") or 0) > 0:
            raise HadSkipError("DeBERTa-v2 models with a convolution layer (conv_kernel_size > 0, the v2 xlarge/"
                               "xxlarge ones) are not supported: it mixes the embeddings into layer 0's output")
        if int(hf_config.get("z_steps") or 0) > 1:
            raise HadSkipError("DeBERTa-v2 models with z_steps > 1 (the last layer run again) are not supported")
        act = hf_config.get("pooler_hidden_act", "gelu")
        if act not in ("gelu", "tanh", "relu"):
            raise HadSkipError(f"DeBERTa-v2 pooler activation {act!r} is not supported (gelu, tanh, relu)")

    def head_act(self, hf_config: dict) -> str:
        return str(hf_config.get("pooler_hidden_act", "gelu"))

    def call(self, layer, hidden, mask, output_attentions=False, export_form=False, shared=None):
        shared = shared or {}
        att = layer.attention.self
        pair = mask[:, None, None, :] * mask[:, None, :, None]  # (B, 1, T, T): i attends to j iff both are tokens
        rel, rel_pos = None, None
        if "rel_embeddings" in shared:
            rel = shared["rel_embeddings"].weight  # (2 * span, H)
            if "rel_norm" in shared:
                rel = shared["rel_norm"](rel)
            with warnings.catch_warnings():  # its module scripts helpers at import (a torch deprecation notice)
                warnings.simplefilter("ignore", DeprecationWarning)
                from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

            rel_pos = build_relative_position(hidden, hidden, bucket_size=att.position_buckets,
                                              max_position=att.max_relative_positions)  # (1, T, T)
        return _run(layer, att, lambda: layer(hidden, pair, relative_pos=rel_pos, rel_embeddings=rel,
                                              output_attentions=output_attentions), output_attentions, 0)


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


FAMILIES: tuple[Family, ...] = (
    Family("bert", ("bert",)),
    Family("roberta", ("roberta", "xlm-roberta", "camembert"), token_types=False, positions_after_padding=True,
           classifier=("classifier.dense", "classifier.out_proj")),
    Family("electra", ("electra",), projection_path="embeddings_project", head_activation="gelu", head_init=None,
           classifier=("classifier.dense", "classifier.out_proj"),
           dropout_keys=("classifier_dropout", "hidden_dropout_prob")),
    DistilBertFamily("distilbert", ("distilbert",), layer_path="transformer.layer", token_types=False,
                     head_activation="relu", head_init=None, classifier=("pre_classifier", "classifier"),
                     dropout_keys=("seq_classif_dropout",)),
    DebertaV2Family("deberta-v2", ("deberta-v2",), head_activation="gelu", head_init=None,
                    classifier=("pooler.dense", "classifier"), dropout_keys=("cls_dropout", "hidden_dropout_prob"),
                    shared_paths=(("rel_embeddings", "encoder.rel_embeddings"), ("rel_norm", "encoder.LayerNorm"))),
    ModernBertFamily("modernbert", ("modernbert",), layer_path="layers", token_types=False, head_activation="gelu",
                     head_init=None, classifier=("head.dense", "head.norm", "classifier"),
                     classifier_parts=("dense", "norm", "out"), dropout_keys=("classifier_dropout",)),
)
SUPPORTED_MODEL_TYPES = tuple(t for f in FAMILIES for t in f.model_types)

REFUSED = {
    "albert": "ALBERT shares one set of layer weights across all its layers, so there is no layer of its own to "
              "skip, train or export per layer",
    "deberta": "DeBERTa v1's relative position embeddings are shared by all layers and its adapter is not written "
               "yet (DeBERTa-v2/v3, model_type deberta-v2, is supported)",
}


def why_not(model_type: str) -> str:
    """Why `model_type` is refused, in words (the reason, or the list of what is supported)."""
    supported = ", ".join(SUPPORTED_MODEL_TYPES)
    if model_type in REFUSED:
        return f"{REFUSED[model_type]} (hadskip supports {supported})"
    return f"hadskip supports the encoder model types {supported}"


def family(model_type: str) -> Family:
    """The adapter of `model_type`; HadSkipError (one line) naming why another type is refused."""
    for f in FAMILIES:
        if model_type in f.model_types:
            return f
    raise HadSkipError(f"{model_type!r} models are not supported: {why_not(model_type)}")


def base_state(model) -> dict:
    """The backbone weights of a GatedEncoder as the state dict of transformers' base model (AutoModel)."""
    f = model.family
    return {k: v for key, v in model.state_dict().items() if (k := f.base_key(key)) is not None}
