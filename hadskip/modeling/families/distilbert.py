"""DistilBERT: its layers take (x, attn_mask) and it has no token types."""

from __future__ import annotations


import torch

from hadskip.modeling.families.base import Family, _forward_takes, _run, additive_mask


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
