"""Encoder families (hadskip/modeling/families/): each supported family end to end on a tiny random config, at the
position limit, and the refused ones with their reason.

Per family: the exported model dir validates at inputs of max_tokens (the longest the position table takes),
the manifest carries the token-type fact the runtime reads, and the runtime routes padded batches of texts and
pairs (full-length rows included) like the PyTorch reference: 0 gate disagreements, fp32 logits within 1e-4.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_runtime_support import reference

torch = pytest.importorskip("torch")

from hadskip.modeling.backbone import load_config, max_tokens  # noqa: E402
from hadskip.errors import HadSkipError  # noqa: E402
from hadskip.modeling.families import REFUSED, base_state, family  # noqa: E402
from hadskip.runtime import Runtime  # noqa: E402
from hadskip.runtime.manifest import load_manifest  # noqa: E402
from hadskip.testing import TINY_SHAPES, tiny_model, tiny_run, tiny_sentences  # noqa: E402

FAMILIES = ["bert", "roberta", "electra", "distilbert", "deberta-v2", "modernbert"]
TOKEN_TYPES = {"bert": True, "roberta": False, "electra": True, "distilbert": False, "deberta-v2": False,
               "modernbert": False}
ATOL = 1e-4


@pytest.fixture(scope="module", params=FAMILIES)
def limit_model(request, tmp_path_factory):
    """(arch, run dir, model dir, Runtime) of a tiny run whose max_len is the backbone's position limit."""
    from hadskip.export import export_model

    arch = request.param
    root = tmp_path_factory.mktemp(f"limit-{arch}")
    model, _ = tiny_model(arch)
    limit = max_tokens(model.config.hf_config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tiny_run(root / "run", arch, max_len=limit)
        export_model(run, root / "model", max_batch=4, progress=False)  # validates at (4, limit) among others
    finally:
        torch.set_num_threads(threads)
    rt = Runtime.load(root / "model")
    yield arch, run, root / "model", rt
    rt.close()


def test_manifest_carries_the_family_facts(limit_model):
    arch, run, md, rt = limit_model
    m = load_manifest(md)
    assert m.backbone["token_types"] is TOKEN_TYPES[arch] and rt.info.token_types is TOKEN_TYPES[arch]
    assert m.max_seq_len == max_tokens(json.loads((run / "model_config.json").read_text())["hf_config"])
    assert [4, m.max_seq_len] in m.export["validation_cases"]
    assert all(0 <= v <= ATOL for v in m.validation.values())
    hidden = TINY_SHAPES[arch][0]
    assert rt.run_batch(np.array([[2, 7, 3]]), np.ones((1, 3), np.int64)).logits.shape == (1, 2)
    # ELECTRA's embeddings unit ends in its projection: the graph gives hidden_size, not embedding_size
    h = rt.backend.run_embeddings(np.array([[2, 7, 3]]), np.ones((1, 3), np.int64), np.zeros((1, 3), np.int64))
    assert np.asarray(h).shape == (1, 3, hidden)


def _pair_batch(rt: Runtime, n: int = 10, seed: int = 0):
    """Texts and pairs (some cut at max_seq_len) tokenised by the runtime, padded to one batch."""
    texts = tiny_sentences(n, seed, max_words=30)
    inputs = texts[: n // 2] + [(a, b) for a, b in zip(texts[n // 2:], reversed(texts), strict=False)]
    inputs += ["good " * 300, ("fun " * 200, "dull " * 200)]  # at the position limit
    enc = rt.encode(inputs)
    ids, mask, tt = rt.encoder.pad_batch(enc, list(range(len(inputs))))
    return inputs, ids, mask, tt


def test_runtime_parity_padded_pairs_at_the_position_limit(limit_model):
    arch, run, md, rt = limit_model
    inputs, ids, mask, tt = _pair_batch(rt)
    assert mask.shape[1] == rt.max_seq_len and mask.sum(1).min() < rt.max_seq_len  # full rows and padded rows
    assert tt.any() == TOKEN_TYPES[arch]  # the runtime's token types follow the manifest
    got = rt.run_batch(ids, mask, tt)
    logits, gates = reference(run, ids, mask, tt)
    assert int((got.gates != gates).sum()) == 0
    np.testing.assert_allclose(got.logits, logits, atol=ATOL, rtol=0)
    used = got.gates.sum(0)
    assert ((used > 0) & (used < len(ids))).any(), used  # some layer runs on some rows only: routing is tested
    # forced K = L/2 on every row, and random patterns
    L = rt.num_layers
    rng = np.random.default_rng(0)
    half = np.zeros((len(ids), L), bool)
    half[:, : L // 2] = True
    for forced in (half, rng.random((len(ids), L)) < 0.5):
        a = rt.run_batch(ids, mask, tt, forced=forced.astype(np.int64))
        ref, _ = reference(run, ids, mask, tt, forced=forced.astype(np.float32))
        np.testing.assert_allclose(a.logits, ref, atol=ATOL, rtol=0)
    # a padded row equals the row alone
    r = int(np.argmin(mask.sum(1)))
    n = int(mask[r].sum())
    alone = rt.run_batch(ids[r:r + 1, :n], mask[r:r + 1, :n], tt[r:r + 1, :n])
    np.testing.assert_array_equal(alone.gates[0], got.gates[r])
    np.testing.assert_allclose(alone.logits[0], got.logits[r], atol=1e-5, rtol=0)


def test_token_types_matter_exactly_where_the_family_reads_them(limit_model):
    arch, run, _, rt = limit_model
    _, ids, mask, tt = _pair_batch(rt)
    tt = np.where(mask.astype(bool), np.arange(ids.shape[1])[None, :] % 2, 0)  # types the tokenizer would not give
    with_types, _ = reference(run, ids, mask, tt, forced=np.ones((len(ids), rt.num_layers), np.float32))
    zeros, _ = reference(run, ids, mask, np.zeros_like(tt), forced=np.ones((len(ids), rt.num_layers), np.float32))
    assert (np.abs(with_types - zeros).max() > 1e-4) == TOKEN_TYPES[arch]


def _hf_base(model):
    """transformers' AutoModel (eager attention) holding a GatedEncoder's backbone weights."""
    from transformers import AutoConfig, AutoModel

    d = dict(model.config.hf_config)
    hf = AutoModel.from_config(AutoConfig.for_model(d.pop("model_type"), **d), attn_implementation="eager")
    hf.load_state_dict(base_state(model), strict=True)
    return hf.eval()


@pytest.mark.parametrize("arch,pooling", [("electra", None), ("distilbert", None), ("deberta-v2", None),
                                          ("modernbert", "cls"), ("modernbert", "mean")])
def test_gates_open_equal_transformers_model_and_classifier(arch, pooling):
    """Every layer on: the hidden states are transformers' AutoModel's bit for bit, and the logits are those of
    its XForSequenceClassification (the baseline export's mapping) up to attention-kernel rounding. ModernBERT:
    inputs longer than its local window (local layers differ from global ones there), its final norm (in our
    head unit) gives AutoModel's last_hidden_state, and both classifier poolings."""
    from hadskip.export.baseline import teacher_model

    model, tok = tiny_model(arch)
    if pooling:
        model.config.hf_config["classifier_pooling"] = model.head.pooling = pooling
    enc = tok(tiny_sentences(6, 0), padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert (mask == 0).any()
    hf = _hf_base(model)
    with torch.no_grad():
        out = model(ids, mask, gates="off", output_hidden=True)
        ref = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        for ours, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
            assert torch.equal(ours, theirs)
        last = model.head.final_norm(out.hidden_states[-1]) if arch == "modernbert" else out.hidden_states[-1]
        assert torch.equal(last, ref.last_hidden_state)
        teacher = teacher_model(model, ["a", "b"])(input_ids=ids, attention_mask=mask).logits
        if arch == "modernbert":  # the attention probs distillation reads (local layers: the window's)
            ours = model(ids, mask, gates="off", output_attentions=True).attentions
            theirs = hf(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
            assert len(ours) == len(theirs) == model.num_layers
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    torch.testing.assert_close(out.logits, teacher, atol=1e-6, rtol=0)


def test_electra_projection_is_trained_and_saved(tmp_path):
    from hadskip.modeling.checkpoint import load_run

    model, _ = tiny_model("electra")
    assert model.embeddings.project is not None
    assert model.embeddings.project.in_features == 24 and model.embeddings.project.out_features == 32
    assert any(n.startswith("embeddings.project.") for n, _ in model.named_parameters())
    again, _, _ = load_run(tiny_run(tmp_path / "run", "electra"))
    assert torch.equal(again.embeddings.project.weight, model.embeddings.project.weight)


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_refused_families_say_why(tmp_path, model_type):
    folder = tmp_path / model_type
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(HadSkipError) as err:
        load_config(str(folder))
    msg = str(err.value)
    assert "\n" not in msg and f"is a {model_type!r} model; {REFUSED[model_type]}" in msg
    with pytest.raises(HadSkipError, match="not supported"):
        family(model_type)


def test_albert_reason_names_the_shared_weights():
    assert "shares one set of layer weights" in REFUSED["albert"]
    assert "relative position" in REFUSED["deberta"]


def test_deberta_shared_relative_embeddings_are_saved_once_and_run_in_every_layer(tmp_path):
    from safetensors import safe_open

    from hadskip.modeling.checkpoint import load_run

    run = tiny_run(tmp_path / "run", "deberta-v2")
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert [k for k in keys if "rel_embeddings" in k] == ["shared.rel_embeddings.weight"]
    model, _, _ = load_run(run)
    assert all(layer.shared is model.shared for layer in model.layers)
    # every layer reads them: changing the shared table changes each layer's output
    h, mask = torch.randn(2, 9, 32), torch.ones(2, 9, dtype=torch.long)
    with torch.no_grad():
        before = [layer(h, mask) for layer in model.layers]
        w = model.shared["rel_embeddings"].weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))  # (LayerNorm'ed: not a scaling)
        after = [layer(h, mask) for layer in model.layers]
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize("extra,why", [({"conv_kernel_size": 3}, "convolution layer"), ({"z_steps": 2}, "z_steps")])
def test_unsupported_deberta_configurations_say_why(tmp_path, extra, why):
    folder = tmp_path / "deberta"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "deberta-v2", **extra}))
    with pytest.raises(HadSkipError, match=why):
        load_config(str(folder))


def test_modernbert_local_layers_see_only_their_window_global_layers_everything():
    """A token far outside the window (|i - j| > local_attention // 2) changes a global layer's output at i but
    not a local layer's; a token inside the window changes both (layers 0, 2 global, 1, 3 local)."""
    from hadskip.testing import MODERNBERT_WINDOW

    model, _ = tiny_model("modernbert")
    T, half = 20, MODERNBERT_WINDOW // 2
    h = torch.randn(1, T, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, T, dtype=torch.long)
    bump = torch.randn(32, generator=torch.Generator().manual_seed(1))  # not a constant: LayerNorm would remove it
    far, near = h.clone(), h.clone()
    far[0, half + 1] += bump  # outside token 0's window
    near[0, half] += bump  # its window's edge
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            local = layer.layer.attn.local_attention != (-1, -1)
            assert local == (i % 2 == 1)
            base = layer(h, mask)[0, 0]
            assert (layer(far, mask)[0, 0] - base).abs().max() > 1e-4 or local
            assert torch.equal(layer(far, mask)[0, 0], base) or not local
            assert (layer(near, mask)[0, 0] - base).abs().max() > 1e-4


def test_modernbert_final_norm_follows_the_last_layer_that_ran():
    """Last layer skipped: the logits are transformers' classifier with that layer removed (its final norm after
    layer L-1); every gate closed: the head on the embeddings (a closed gate is the identity)."""
    from hadskip.export.baseline import teacher_model

    model, tok = tiny_model("modernbert")
    enc = tok(tiny_sentences(5, 1), padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    L = model.num_layers
    skip_last = torch.ones(len(ids), L)
    skip_last[:, -1] = 0
    teacher = teacher_model(model, ["a", "b"])
    with torch.no_grad():
        got = model(ids, mask, gates="hard", forced=skip_last).logits
        routed = model(ids, mask, gates="route", forced=skip_last).logits
        full = model(ids, mask, gates="off").logits
        teacher.model.layers = teacher.model.layers[:-1]
        shorter = teacher(input_ids=ids, attention_mask=mask).logits
        closed = model(ids, mask, gates="route", forced=torch.zeros(len(ids), L)).logits
        on_embeddings = model.head(model.embeddings(ids, mask, torch.zeros_like(ids)), mask)
    torch.testing.assert_close(got, shorter, atol=1e-6, rtol=0)
    torch.testing.assert_close(routed, shorter, atol=1e-6, rtol=0)
    assert (got - full).abs().max() > 1e-3  # the last layer mattered
    assert torch.equal(closed, on_embeddings)


def test_modernbert_refuses_the_unpadded_flash_path_and_unknown_poolings():
    from transformers import ModernBertConfig, ModernBertModel

    fam = family("modernbert")
    hf = ModernBertModel(ModernBertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=48, vocab_size=50, pad_token_id=0))
    hf.config._attn_implementation = "flash_attention_2"
    with pytest.raises(HadSkipError, match="unpadded"):
        fam.layers(hf)
    fam.check({"classifier_pooling": "mean"})
    with pytest.raises(HadSkipError, match="classifier_pooling 'max'"):  # (transformers' config refuses it too)
        fam.check({"classifier_pooling": "max"})
    with pytest.raises(HadSkipError, match="classifier_activation 'nope'"):
        fam.check({"classifier_activation": "nope"})


def test_modernbert_folder_loads_with_its_final_norm_and_without_torch_compile(tmp_path):
    """A saved ModernBERT folder whose config asks for torch.compile (reference_compile, as the hub's
    ModernBERT-base does) builds a GatedEncoder on the plain eager path: its final norm comes from the folder,
    and with every layer on it gives transformers' own model's last hidden state."""
    from transformers import AutoModel

    from hadskip.modeling.backbone import build_gated
    from hadskip.testing import tiny_backbone_dir

    folder = tiny_backbone_dir(tmp_path / "mb", "modernbert")
    with torch.no_grad():
        hf = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
        hf.final_norm.weight.add_(1.0)  # differs from a fresh LayerNorm's ones: the test sees where it came from
        hf.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())  # (ModernBertConfig.to_dict leaves the switch out)
    (folder / "config.json").write_text(json.dumps({**cfg, "reference_compile": True}))
    with torch.no_grad():
        model, tok = build_gated(str(folder), num_labels=2)
        assert model.head.final_norm.weight.equal(hf.final_norm.weight)
        assert model.embeddings.emb.config.reference_compile is False
        assert all(layer.layer.config.reference_compile is False for layer in model.layers)
        enc = tok(tiny_sentences(4, 2), padding=True, return_tensors="pt")
        out = model.eval()(enc["input_ids"], enc["attention_mask"], gates="off", output_hidden=True)
        ref = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    assert torch.equal(model.head.final_norm(out.hidden_states[-1]), ref)
