"""The family adapter (`Family`: BERT's way, which most families keep) and the layer-call helpers every family
uses; the families that differ subclass it (distilbert.py, deberta.py, modernbert.py)."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from hadskip.modeling.units import Head


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
        """The head unit of a GatedEncoder of hadskip.modeling.encoder.ModelConfig `config`:
        (hidden (B, T, H), attention_mask (B, T)) -> logits (B, num_labels)."""
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
