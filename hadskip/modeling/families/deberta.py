"""DeBERTa-v2/v3: relative position embeddings held once (GatedEncoder.shared) and run inside every layer unit."""

from __future__ import annotations

import warnings


from hadskip.errors import HadSkipError
from hadskip.modeling.families.base import Family, _run


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
