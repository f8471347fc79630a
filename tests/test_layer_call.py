"""The layer call under both transformers lines: 4.x returns (hidden, [attentions]) from a layer, 5.x a bare
(B, T, H) tensor, where `out[0]` would silently take batch row 0 (issue 15, item 2).

The stand-in layers give each shape of return value on whichever transformers is installed; the real-layer
tests run against the installed line (the suite is run under 4.57 and under 5.x, see docs/gpu.md).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from hadskip.modeling.families import call_layer, family  # noqa: E402
from hadskip.modeling.units import Layer  # noqa: E402
from hadskip.testing import tiny_model, tiny_sentences  # noqa: E402

B, T, H, HEADS = 3, 5, 8, 2


class _SelfAttention(nn.Module):
    """Returns (context, probs) like BertSelfAttention (eager) in both lines."""

    def forward(self, hidden, attention_mask=None, **kwargs):
        scores = hidden @ hidden.transpose(1, 2)  # (B, T, T)
        if attention_mask is not None:
            scores = scores + attention_mask[:, 0]
        probs = scores.softmax(-1)[:, None].expand(-1, HEADS, -1, -1)  # (B, heads, T, T)
        return probs[:, 0] @ hidden, probs


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.self = _SelfAttention()


class _Layer4(nn.Module):
    """transformers 4.x shape: a tuple, attentions appended when asked."""

    def __init__(self):
        super().__init__()
        self.attention = _Attention()

    def forward(self, hidden, attention_mask=None, output_attentions=False):
        ctx, probs = self.attention.self(hidden, attention_mask)
        return (ctx + 1.0, probs) if output_attentions else (ctx + 1.0,)


class _Layer5(_Layer4):
    """transformers 5.x shape: a bare tensor; output_attentions only travels in **kwargs."""

    def forward(self, hidden, attention_mask=None, **kwargs):
        ctx, _ = self.attention.self(hidden, attention_mask, **kwargs)
        return ctx + 1.0


@pytest.mark.parametrize("layer_cls", [_Layer4, _Layer5], ids=["transformers4-shape", "transformers5-shape"])
def test_layer_returns_the_whole_batch_and_attentions(layer_cls):
    hidden = torch.randn(B, T, H, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 3:] = 0
    layer = Layer(layer_cls(), family("bert"))
    out = layer(hidden, mask)
    assert out.shape == (B, T, H)  # `out[0]` of a bare tensor would be (T, H): batch row 0 only
    h, att = layer(hidden, mask, output_attentions=True)
    assert torch.equal(h, out)
    assert att.shape == (B, HEADS, T, T)
    assert torch.all(att[1, :, :, 3:] < 1e-6)  # the padded keys of row 1 got (numerically) no weight
    ref_ctx, ref_probs = layer_cls().attention.self(hidden, torch.where(
        mask[:, None, None, :].bool(), 0.0, torch.finfo(hidden.dtype).min))
    assert torch.equal(h, ref_ctx + 1.0) and torch.equal(att, ref_probs)


def test_export_wrapper_keeps_the_batch():
    from hadskip.export.units import LayerForExport

    wrapped = Layer(_Layer5(), family("bert"))
    hidden, mask = torch.randn(B, T, H), torch.ones(B, T, dtype=torch.long)
    assert LayerForExport(wrapped)(hidden, mask).shape == (B, T, H)
    assert torch.equal(LayerForExport(wrapped)(hidden, mask), wrapped(hidden, mask))


def test_missing_attention_probs_is_an_error_not_a_silent_none():
    class NoProbs(_Layer5):
        def __init__(self):
            super().__init__()
            self.attention.self.forward = lambda hidden, attention_mask=None, **kw: (hidden, None)  # like sdpa

    with pytest.raises(ValueError, match="eager"):
        call_layer(NoProbs(), torch.randn(B, T, H), torch.zeros(B, 1, 1, T), output_attentions=True)


@pytest.mark.parametrize("arch", ["bert", "roberta", "electra", "distilbert", "deberta-v2"])
def test_real_layers_match_the_installed_transformers(arch):
    """Hidden states and attentions of every layer equal what the installed transformers' model returns."""
    from transformers import AutoConfig, AutoModel

    model, tok = tiny_model(arch)
    enc = tok(tiny_sentences(4, 1), padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    tt = enc.get("token_type_ids", torch.zeros_like(ids))
    assert (mask == 0).any()
    from hadskip.modeling.families import base_state

    d = dict(model.config.hf_config)
    hf = AutoModel.from_config(AutoConfig.for_model(d.pop("model_type"), **d), attn_implementation="eager")
    missing, unexpected = hf.load_state_dict(base_state(model), strict=False)
    assert not unexpected and all(k.startswith("pooler.") for k in missing)
    hf.eval()
    types = {} if arch == "distilbert" else {"token_type_ids": tt}
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True, **types)
        out = model(ids, mask, tt, gates="off", output_hidden=True, output_attentions=True)
    assert out.hidden_states[-1].shape == (ids.shape[0], ids.shape[1], model.config.hidden_size)
    torch.testing.assert_close(out.hidden_states[-1], ref.last_hidden_state, rtol=0, atol=1e-5)
    assert len(out.attentions) == len(ref.attentions) == model.num_layers
    for mine, theirs in zip(out.attentions, ref.attentions, strict=True):
        assert mine.shape == (ids.shape[0], model.config.num_heads, ids.shape[1], ids.shape[1])
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)


class _DistilAttention(nn.Module):
    """(context, probs) from an additive (B, 1, 1|T, T) mask or none, like DistilBertSelfAttention (5.x, eager)."""

    def forward(self, hidden, attention_mask=None, **kwargs):
        scores = (hidden @ hidden.transpose(1, 2))[:, None]  # (B, 1, T, T)
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = scores.softmax(-1).expand(-1, HEADS, -1, -1)  # (B, heads, T, T)
        return probs[:, 0] @ hidden, probs


class _DistilBlock4(nn.Module):
    """transformers 4.x DistilBERT TransformerBlock shape: the plain (B, T) mask as `attn_mask`, masked_fill
    inside, (attentions, hidden) or (hidden,) back."""

    def __init__(self):
        super().__init__()
        self.attention = _DistilAttention()

    def forward(self, x, attn_mask=None, head_mask=None, output_attentions=False):
        ext = torch.zeros(x.shape[0], 1, 1, x.shape[1]).masked_fill(
            (attn_mask == 0)[:, None, None, :], torch.finfo(x.dtype).min)
        ctx, probs = self.attention(x, ext)
        return (probs, ctx + 1.0) if output_attentions else (ctx + 1.0,)


class _DistilBlock5(_DistilBlock4):
    """transformers 5.x shape: the additive mask as `attention_mask`, other keywords swallowed by **kwargs (an
    `attn_mask=` there would be ignored silently), a bare tensor back."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        ctx, _ = self.attention(hidden_states, attention_mask, **kwargs)
        return ctx + 1.0


@pytest.mark.parametrize("block_cls", [_DistilBlock4, _DistilBlock5],
                         ids=["transformers4-shape", "transformers5-shape"])
@pytest.mark.parametrize("export_form", [False, True])
def test_distilbert_layer_masks_padding_under_both_call_shapes(block_cls, export_form):
    from hadskip.modeling.families import family

    hidden = torch.randn(B, T, H, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[2, 2:] = 0
    h, att = family("distilbert").call(block_cls(), hidden, mask, output_attentions=True, export_form=export_form)
    assert h.shape == (B, T, H) and att.shape == (B, HEADS, T, T)
    assert torch.all(att[2, :, :, 2:] < 1e-6)  # the padded keys of row 2 got (numerically) no weight
    ctx, probs = _DistilAttention()(hidden, torch.where(mask[:, None, None, :].bool(), 0.0,
                                                        torch.finfo(hidden.dtype).min))
    torch.testing.assert_close(h, ctx + 1.0, rtol=0, atol=1e-6)
    torch.testing.assert_close(att, probs, rtol=0, atol=1e-7)
    h2, none = family("distilbert").call(block_cls(), hidden, mask, export_form=export_form)
    assert none is None and torch.equal(h2, h)
