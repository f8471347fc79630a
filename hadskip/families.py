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
    classifier, base_key(key)                              where our weights go in transformers'
                                                              XForSequenceClassification (baseline export, tests)

Needs torch (imported at module level): import it where the model is built.
Refused: ALBERT (one set of layer weights shared by every layer: there is no layer of its own to skip or to
export per layer), DeBERTa v1/v2/v3 (relative position embeddings shared by all layers, not yet carried
into each layer's unit), ModernBERT (rotary, alternating local/global attention and a final norm after the
last layer, not yet exported on the padded path), and everything that is not an encoder listed here.
"""

from __future__ import annotations

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
    classifier: tuple[str, str] = ("{prefix}.pooler.dense", "classifier")  # head.dense, head.out in XFor...
    dropout_keys: tuple[str, ...] = ("hidden_dropout_prob",)  # the first one set is the head's dropout

    # -- embeddings -----------------------------------------------------------------------------------------
    def embed(self, emb: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        return emb(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, T, E)

    def projection(self, hf_model: nn.Module) -> nn.Module | None:
        return getattr(hf_model, self.projection_path, None) if self.projection_path else None

    # -- layers ---------------------------------------------------------------------------------------------
    def layers(self, hf_model: nn.Module) -> list[nn.Module]:
        return list(hf_model.get_submodule(self.layer_path))

    def call(self, layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, output_attentions: bool = False,
             export_form: bool = False):
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
    def head_dropout(self, hf_config: dict) -> float:
        for key in self.dropout_keys:
            if hf_config.get(key) is not None:
                return float(hf_config[key])
        return 0.1

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
        return None


@dataclass(frozen=True)
class DistilBertFamily(Family):
    """DistilBERT: word + position embeddings only (no token types), layers under transformer.layer taking the
    plain (B, T) mask (`masked_fill(mask == 0, min)` inside), returning (hidden,) or (attentions, hidden)."""

    def embed(self, emb, input_ids, token_type_ids):
        return emb(input_ids)  # (B, T, H)

    def call(self, layer, hidden, mask, output_attentions=False, export_form=False):
        # the hidden state is the last element (4.x puts the attentions first); the probs come from the
        # MultiHeadSelfAttention's (context, weights)
        return _run(layer, layer.attention,
                    lambda: layer(hidden, attn_mask=mask, output_attentions=output_attentions),
                    output_attentions, -1)


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
)
SUPPORTED_MODEL_TYPES = tuple(t for f in FAMILIES for t in f.model_types)

REFUSED = {
    "albert": "ALBERT shares one set of layer weights across all its layers, so there is no layer of its own to "
              "skip, train or export per layer",
    "deberta": "DeBERTa's relative position embeddings are shared by all layers and are not yet carried into "
               "each exported layer unit",
    "deberta-v2": "DeBERTa-v2/v3's relative position embeddings are shared by all layers and are not yet carried "
                  "into each exported layer unit",
    "modernbert": "ModernBERT (rotary positions, alternating local/global attention, a final norm after the last "
                  "layer) is not yet exported on its padded attention path",
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
