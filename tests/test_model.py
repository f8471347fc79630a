"""The gated encoder against the plain backbone, and its training/eval paths against each other."""

import pytest
import torch

from hadskip.modeling.families import FAMILIES
from hadskip.testing import tiny_model, tiny_sentences

# every family (hadskip.modeling.families), and TinyBERT's head size 26
ARCHS = [*(f.name for f in FAMILIES), "tinybert"]


def _batch(tokenizer, n=6, seed=0):
    enc = tokenizer(tiny_sentences(n, seed), padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any(), "the batch must contain padding"
    return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


def _hf_backbone(model):
    """The transformers model whose modules the GatedEncoder wraps (same weights)."""
    from transformers import AutoModel

    from hadskip.modeling.families import base_state

    hf = AutoModel.from_config(_cfg(model), attn_implementation="eager")
    missing, unexpected = hf.load_state_dict(base_state(model), strict=False)
    assert not unexpected and all(k.startswith("pooler.") for k in missing)  # the pooler: not ours
    return hf.eval()


def _cfg(model):
    from transformers import AutoConfig

    d = dict(model.config.hf_config)
    return AutoConfig.for_model(d.pop("model_type"), **d)


@pytest.mark.parametrize("arch", ARCHS)
def test_gates_open_equals_plain_backbone_exactly(arch):
    model, tok = tiny_model(arch)
    ids, mask, tt = _batch(tok)
    types = {} if arch in ("distilbert", "modernbert") else {"token_type_ids": tt}  # these take no token types
    out = _hf_backbone(model)(input_ids=ids, attention_mask=mask, output_hidden_states=True, **types)
    # ModernBERT's last_hidden_state is after its final_norm, which hadskip runs in the head unit (it follows
    # whichever layer ran last): compare the last layer's output before it
    ref = out.hidden_states[-1] if arch == "modernbert" else out.last_hidden_state
    with torch.no_grad():
        off = model(ids, mask, tt, gates="off", output_hidden=True)
        ones = torch.ones(ids.shape[0], model.num_layers)
        forced = model(ids, mask, tt, gates="hard", forced=ones, output_hidden=True)
        routed = model(ids, mask, tt, gates="route", forced=ones)
    assert torch.equal(off.hidden_states[-1], ref)
    assert torch.equal(forced.hidden_states[-1], ref)
    assert torch.equal(routed.logits, off.logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_closed_gate_is_identity(arch):
    model, tok = tiny_model(arch)
    ids, mask, tt = _batch(tok)
    L = model.num_layers
    with torch.no_grad():
        for closed in range(L):
            f = torch.ones(ids.shape[0], L)
            f[:, closed] = 0
            out = model(ids, mask, tt, gates="hard", forced=f, output_hidden=True)
            assert torch.equal(out.hidden_states[closed + 1], out.hidden_states[closed])
        none = model(ids, mask, tt, gates="route", forced=torch.zeros(ids.shape[0], L), output_hidden=True)
        assert all(torch.equal(h, none.hidden_states[0]) for h in none.hidden_states)


@pytest.mark.parametrize("arch", ARCHS)
def test_route_equals_masked_formula_with_hard_gates(arch):
    model, tok = tiny_model(arch, seed=1)
    ids, mask, tt = _batch(tok, n=12, seed=3)
    with torch.no_grad():
        hard = model(ids, mask, tt, gates="hard")
        route = model(ids, mask, tt, gates="route")
        assert torch.equal(hard.gates, route.gates)
        torch.testing.assert_close(route.logits, hard.logits, atol=1e-6, rtol=0)
        # mixed per-row patterns, forced
        g = torch.Generator().manual_seed(0)
        f = (torch.rand(ids.shape[0], model.num_layers, generator=g) > 0.5).float()
        torch.testing.assert_close(model(ids, mask, tt, gates="route", forced=f).logits,
                                   model(ids, mask, tt, gates="hard", forced=f).logits, atol=1e-6, rtol=0)


def test_route_skips_closed_rows_for_real():
    model, tok = tiny_model("bert")
    ids, mask, tt = _batch(tok)
    seen = []
    handle = model.layers[1].register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    f = torch.ones(ids.shape[0], model.num_layers)
    f[:4, 1] = 0
    with torch.no_grad():
        model(ids, mask, tt, gates="route", forced=f)
    handle.remove()
    assert seen == [ids.shape[0] - 4]


def test_sample_mode_gates_are_hard_and_carry_gradient():
    model, tok = tiny_model("bert")
    model.train()
    ids, mask, tt = _batch(tok)
    out = model(ids, mask, tt, gates="sample", generator=torch.Generator().manual_seed(0))
    assert set(out.gates.detach().unique().tolist()) <= {0.0, 1.0}
    out.gates.sum().backward()
    grads = [p.grad for p in model.gates.parameters()]
    assert all(gr is not None for gr in grads) and any(gr.abs().sum() > 0 for gr in grads)


def test_padded_batch_row_equals_row_alone():
    model, tok = tiny_model("roberta", seed=1)
    texts = tiny_sentences(5, seed=7)
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        batch = model(enc["input_ids"], enc["attention_mask"], gates="route")
        for i, t in enumerate(texts):
            one = tok([t], return_tensors="pt")
            alone = model(one["input_ids"], one["attention_mask"], gates="route")
            assert torch.equal(alone.gates[0], batch.gates[i])
            torch.testing.assert_close(alone.logits[0], batch.logits[i], atol=1e-5, rtol=0)
