"""The runtime against the PyTorch reference (`GatedEncoder(gates="route")`) on tiny BERT, RoBERTa,
TinyBERT-shaped (head size 26), ELECTRA and DistilBERT model dirs: logits within 1e-4, identical gate
decisions, forced patterns, a padded batch equal to each row alone, predict's ordering and truncation, and
the error paths."""

from __future__ import annotations

import numpy as np
import pytest
from test_runtime_support import ARCHS, cached_model, one_torch_thread, padded_batch, reference  # noqa: F401

from hadskip.errors import HadSkipError, MissingExtraError
from hadskip.runtime import Runtime
from hadskip.runtime.backends.device import row_runs
from hadskip.testing import tiny_sentences

# seeds whose gates route some rows and skip others
SEEDS = {"roberta": 1}  # a seed per family where the default 0 gives a model unfit for a test; 0 otherwise
BATCHES = {
    "mixed": [5, 12, 32, 3, 20, 7, 32, 9, 14, 25, 2, 30],
    "short": [4, 2, 6, 3],
    "single": [17],
}
ATOL = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {arch: cached_model(tmp_path_factory, arch, SEEDS.get(arch, 0)) for arch in ARCHS}


@pytest.fixture(scope="module")
def runtimes(models):
    return {arch: Runtime.load(md) for arch, (_, md) in models.items()}


def _vocab(rt: Runtime) -> int:
    return int(rt.info.manifest.backbone["vocab_size"])


@pytest.mark.parametrize("case", sorted(BATCHES))
@pytest.mark.parametrize("arch", ARCHS)
def test_route_matches_pytorch(models, runtimes, arch, case):
    rt = runtimes[arch]
    ids, mask, tt = padded_batch(BATCHES[case], _vocab(rt), seed=len(case))
    got = rt.run_batch(ids, mask, tt)
    logits, gates = reference(models[arch][0], ids, mask, tt)
    np.testing.assert_array_equal(got.gates, gates)
    np.testing.assert_allclose(got.logits, logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_fixture_gates_really_route(runtimes, arch):
    """The parity above only proves routing if some layer runs on some rows and not on others."""
    rt = runtimes[arch]
    ids, mask, tt = padded_batch(BATCHES["mixed"], _vocab(rt), seed=len("mixed"))
    open_rows = rt.run_batch(ids, mask, tt).gates.sum(axis=0)  # (L,)
    assert ((open_rows > 0) & (open_rows < len(ids))).any(), open_rows


@pytest.mark.parametrize("arch", ARCHS)
def test_forced_patterns_match_pytorch(models, runtimes, arch):
    rt = runtimes[arch]
    n_layers = rt.num_layers
    ids, mask, tt = padded_batch(BATCHES["mixed"], _vocab(rt), seed=3)
    b = len(ids)
    rng = np.random.default_rng(0)
    patterns = [np.zeros((b, n_layers), bool), np.ones((b, n_layers), bool),
                *(rng.random((b, n_layers)) < 0.5 for _ in range(3))]
    for k in range(n_layers + 1):
        p = np.zeros((b, n_layers), bool)
        p[:, :k] = True
        patterns.append(p)
    for pattern in patterns:
        got = rt.run_batch(ids, mask, tt, forced=pattern.astype(np.int64))
        logits, gates = reference(models[arch][0], ids, mask, tt, forced=pattern.astype(np.float32))
        np.testing.assert_array_equal(got.gates, pattern)
        np.testing.assert_array_equal(gates, pattern)
        np.testing.assert_allclose(got.logits, logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_padded_batch_equals_each_row_alone(runtimes, arch):
    rt = runtimes[arch]
    lengths = BATCHES["mixed"]
    ids, mask, tt = padded_batch(lengths, _vocab(rt), seed=5)
    batch = rt.run_batch(ids, mask, tt)
    for r, n in enumerate(lengths):
        alone = rt.run_batch(ids[r:r + 1, :n], mask[r:r + 1, :n], tt[r:r + 1, :n])
        np.testing.assert_array_equal(alone.gates[0], batch.gates[r])
        np.testing.assert_allclose(alone.logits[0], batch.logits[r], atol=1e-5, rtol=0)
    # extra right padding beyond the longest row changes nothing either
    wide = [np.pad(a, ((0, 0), (0, 7))) for a in (ids, mask, tt)]
    again = rt.run_batch(*wide)
    np.testing.assert_array_equal(again.gates, batch.gates)
    np.testing.assert_allclose(again.logits, batch.logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "tinybert"])
def test_fused_layer_graphs_match_pytorch(tmp_path_factory, arch):
    """Layer graphs with onnxruntime's fused attention (export optimize=True) route the same way."""
    run, md = cached_model(tmp_path_factory, arch, SEEDS.get(arch, 0), optimize=True)
    rt = Runtime.load(md)
    assert rt.info.manifest.optimization["layers"] == "ort-fused"
    ids, mask, tt = padded_batch(BATCHES["mixed"], _vocab(rt), seed=4)
    for forced in (None, np.random.default_rng(3).random((len(ids), rt.num_layers)) < 0.5):
        got = rt.run_batch(ids, mask, tt, forced=forced)
        logits, gates = reference(run, ids, mask, tt, forced=None if forced is None else forced.astype(np.float32))
        np.testing.assert_array_equal(got.gates, gates)
        np.testing.assert_allclose(got.logits, logits, atol=ATOL, rtol=0)


def test_tokenizer_matches_the_training_tokenizer(models, runtimes):
    """tokenizer.json through `tokenizers` gives the ids the HF tokenizer of the run gives (pairs included)."""
    from transformers import AutoTokenizer

    run, _ = models["bert"]
    hf = AutoTokenizer.from_pretrained(str(run / "tokenizer"))
    texts = tiny_sentences(6, seed=2) + ["good " * 50]
    pairs = [("a good movie", "not very fun"), ("the plot", "dull " * 40)]
    enc = runtimes["bert"].encode(texts + pairs)
    want = hf(texts, truncation=True, max_length=32)["input_ids"] + \
        hf([p[0] for p in pairs], [p[1] for p in pairs], truncation=True, max_length=32)["input_ids"]
    assert [e.tolist() for e in enc.ids] == want
    want_types = hf([p[0] for p in pairs], [p[1] for p in pairs], truncation=True, max_length=32)["token_type_ids"]
    assert [e.tolist() for e in enc.type_ids[-2:]] == want_types


@pytest.mark.parametrize("arch", ARCHS)
def test_predict_matches_pytorch_and_keeps_order(models, runtimes, arch):
    rt = runtimes[arch]
    texts = tiny_sentences(23, seed=7, max_words=40) + [("good plot", "bad acting in a dull film")]
    preds = rt.predict(texts, batch_size=5)
    assert len(preds) == len(texts)
    enc = rt.encode(texts)
    for n in range(len(texts)):  # each input alone through the reference, in input order
        ids, mask, tt = rt.encoder.pad_batch(enc, [n])
        logits, gates = reference(models[arch][0], ids, mask, tt)
        probs = np.exp(logits[0] - logits[0].max())
        np.testing.assert_allclose(preds.probabilities[n], probs / probs.sum(), atol=1e-4)
        assert preds[n].layers == np.flatnonzero(gates[0]).tolist()
        assert preds[n].num_layers == int(gates[0].sum())
        assert preds[n].label == rt.labels[int(logits[0].argmax())]
    one_batch = rt.predict(texts, batch_size=64)
    np.testing.assert_allclose(one_batch.probabilities, preds.probabilities, atol=1e-5)
    assert one_batch.layers == preds.layers


def test_predict_results_shape_and_truncation(runtimes):
    rt = runtimes["bert"]
    long = "good " * 100
    preds = rt.predict(["fun", long, ("good", "bad " * 60)])
    assert [p.truncated for p in preds] == [False, True, True]
    assert preds[1].tokens == rt.max_seq_len == 32
    assert preds[0].tokens == 3  # [CLS] fun [SEP]
    d = preds[0].to_dict()
    assert set(d) >= {"label", "label_id", "probs", "layers", "num_layers", "tokens", "truncated"}
    assert set(d["probs"]) == set(rt.labels) and abs(sum(d["probs"].values()) - 1) < 1e-5
    assert preds.labels == [p.label for p in preds]
    assert preds.avg_layers == pytest.approx(np.mean([p.num_layers for p in preds]))
    assert len(rt.predict([])) == 0
    assert len(rt.predict("a single text")) == 1


def test_device_backend_on_host_pointers(models, runtimes):
    """The ort-cuda code path (IOBinding on raw pointers, 2-D row-run copies) on host memory."""
    from hadskip.runtime.backends.ort import OrtDeviceBackend
    from hadskip.runtime.core import Runtime as RT

    for arch in ("bert", "tinybert"):
        rt = runtimes[arch]
        dev = RT(OrtDeviceBackend(models[arch][1], rt.info.manifest, device="cpu", max_batch=2), rt.info)
        ids, mask, tt = padded_batch(BATCHES["mixed"], _vocab(rt), seed=9)  # 12 rows > max_batch: buffers grow
        rng = np.random.default_rng(1)
        for forced in (None, rng.random((len(ids), rt.num_layers)) < 0.5):
            a, b = rt.run_batch(ids, mask, tt, forced=forced), dev.run_batch(ids, mask, tt, forced=forced)
            np.testing.assert_array_equal(a.gates, b.gates)
            np.testing.assert_allclose(a.logits, b.logits, atol=1e-6, rtol=0)
        dev.close()


@pytest.mark.usefixtures("one_torch_thread")
def test_torch_backend_cpu_matches_onnx(models, runtimes):
    for arch in ARCHS:
        run, _ = models[arch]
        ref = Runtime.load(run, backend="torch", device="cpu")
        rt = runtimes[arch]
        ids, mask, tt = padded_batch(BATCHES["mixed"], _vocab(rt), seed=11)
        for forced in (None, np.random.default_rng(2).random((len(ids), rt.num_layers)) < 0.5):
            a, b = rt.run_batch(ids, mask, tt, forced=forced), ref.run_batch(ids, mask, tt, forced=forced)
            np.testing.assert_array_equal(a.gates, b.gates)
            np.testing.assert_allclose(a.logits, b.logits, atol=ATOL, rtol=0)
        texts = tiny_sentences(9, seed=4)
        assert ref.predict(texts).labels == rt.predict(texts).labels


@pytest.mark.usefixtures("one_torch_thread")
def test_torch_backend_from_a_model_dir_torch_folder(models, runtimes, tmp_path):
    """The proposed MODEL/torch/{model.safetensors, model_config.json} layout (not written by export yet)."""
    import shutil

    run, md = models["bert"]
    copy = tmp_path / "model"
    shutil.copytree(md, copy)
    (copy / "torch").mkdir()
    for name in ("model.safetensors", "model_config.json"):
        shutil.copy(run / name, copy / "torch" / name)
    rt = Runtime.load(copy, backend="torch", device="cpu")
    texts = tiny_sentences(7, seed=5)
    np.testing.assert_allclose(rt.predict(texts).probabilities, runtimes["bert"].predict(texts).probabilities,
                               atol=1e-5)


def test_row_runs():
    assert row_runs(np.array([], dtype=np.int64)) == []
    assert row_runs(np.array([0, 1, 2, 5, 7, 8])) == [(0, 3), (5, 1), (7, 2)]
    assert row_runs(np.array([4])) == [(4, 1)]


def test_errors(models, runtimes, tmp_path):
    _, md = models["bert"]
    rt = runtimes["bert"]
    with pytest.raises(HadSkipError, match="unknown backend"):
        Runtime.load(md, backend="tpu")
    with pytest.raises(HadSkipError, match="right-padded"):
        rt.run_batch(np.ones((1, 3), np.int64), np.array([[0, 1, 1]]))
    with pytest.raises(HadSkipError, match="forced"):
        rt.run_batch(np.ones((2, 3), np.int64), np.ones((2, 3), np.int64), forced=np.ones((2, 1)))
    with pytest.raises(HadSkipError, match="string or a"):
        rt.predict([3])
    with pytest.raises(HadSkipError, match="torch backend needs a run dir"):
        Runtime.load(md, backend="torch", device="cpu")
    with pytest.raises(HadSkipError, match="manifest.json is missing"):
        Runtime.load(tmp_path)


def test_missing_gpu_packages_name_their_extra(models):
    import importlib.util

    import onnxruntime as ort

    _, md = models["bert"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(MissingExtraError, match=r"hadskip\[gpu\]"):
            Runtime.load(md, backend="ort-cuda")
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(MissingExtraError, match=r"hadskip\[trt\]"):
            Runtime.load(md, backend="trt")
