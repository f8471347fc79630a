"""GPU backends against the CPU runtime (run with `pytest -m gpu`; every test skips cleanly without a GPU or
without the package it names). Tolerance 1e-3 (fp32 on both sides; TF32 is off in our ORT and TensorRT
settings and torch's default, but GPU kernels sum in other orders)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from test_runtime_support import cached_model, padded_batch

from hadskip.runtime import Runtime
from hadskip.runtime.backends.memory import cuda_device_count
from hadskip.testing import tiny_sentences

pytestmark = pytest.mark.gpu
GPU_ATOL = 1e-3
HAS_GPU = cuda_device_count() > 0


def _torch_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU visible to the CUDA runtime (libcudart)")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return cached_model(tmp_path_factory, "bert", 0)


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    """A run dir only: the torch backend needs no ONNX export (and no `onnx` package)."""
    from hadskip.testing import tiny_run

    return tiny_run(tmp_path_factory.mktemp("bert-run") / "run", "bert")


def _compare(ref: Runtime, rt: Runtime, seed: int = 0) -> None:
    m = ref.info.manifest
    vocab = int(m.backbone["vocab_size"] if m is not None else ref.backend.model.config.hf_config["vocab_size"])
    ids, mask, tt = padded_batch([5, 12, 32, 3, 20, 7, 32, 9, 14, 25, 2, 30], vocab, seed=seed)
    rng = np.random.default_rng(seed)
    for forced in (None, rng.random((len(ids), ref.num_layers)) < 0.5, np.ones((len(ids), ref.num_layers), bool)):
        a, b = ref.run_batch(ids, mask, tt, forced=forced), rt.run_batch(ids, mask, tt, forced=forced)
        np.testing.assert_array_equal(a.gates, b.gates)
        np.testing.assert_allclose(a.logits, b.logits, atol=GPU_ATOL, rtol=0)
    texts = tiny_sentences(40, seed=seed, max_words=40)
    pa, pb = ref.predict(texts, batch_size=8), rt.predict(texts, batch_size=8)
    assert pa.layers == pb.layers
    np.testing.assert_allclose(pa.probabilities, pb.probabilities, atol=GPU_ATOL)


@pytest.mark.parametrize("graphs", ["auto", "off"])
@pytest.mark.skipif(not _torch_cuda(), reason="torch sees no CUDA GPU (no GPU, or a CPU-only torch build)")
def test_torch_backend_on_cuda(bert_run, graphs):
    rt = Runtime.load(bert_run, backend="torch", device="cuda", cuda_graphs=graphs)
    assert rt.backend_name == "torch-cuda"
    ref = Runtime.load(bert_run, backend="torch", device="cpu")
    for seed in (0, 0, 1, 1, 0):  # shapes repeat: eager, captured, then replayed graphs
        _compare(ref, rt, seed=seed)
    graphs_used = rt.backend.graphs
    assert (graphs_used is None) == (graphs == "off")
    if graphs_used is not None:
        assert graphs_used.replays > 0 and not graphs_used.failed


@pytest.mark.skipif(not _ort_cuda(), reason="onnxruntime-gpu is not installed (pip install 'hadskip[gpu]')")
@needs_gpu
def test_ort_cuda_backend(bert):
    _, model = bert
    rt = Runtime.load(model, backend="ort-cuda", max_batch=4)  # 12-row batches make the buffers grow
    assert rt.backend_name == "ort-cuda"
    _compare(Runtime.load(model), rt)
    rt.close()


@pytest.mark.parametrize("graphs", ["off", "on"])
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="tensorrt is not installed (pip install 'hadskip[trt]')")
@needs_gpu
def test_trt_backend(bert, tmp_path_factory, graphs):
    run, model = bert
    trt_dir = tmp_path_factory.getbasetemp() / "bert-trt"
    if not (trt_dir / "manifest.json").is_file():
        from hadskip.export import export_model

        export_model(run, trt_dir, engine="trt", max_batch=16, validate=False, progress=False)
    rt = Runtime.load(trt_dir, backend="trt", cuda_graphs=graphs)
    _compare(Runtime.load(model), rt)
    _compare(Runtime.load(model), rt, seed=1)  # same shapes again: replays the captured graphs
    rt.close()

