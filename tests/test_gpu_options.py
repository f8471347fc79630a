"""GPU settings that are checked without a GPU (issue 15, item 5): TF32 off on onnxruntime's CUDA provider,
which both the routed ort-cuda backend and the bench's full-model session use, and the extras that pull the
CUDA libraries onnxruntime-gpu and TensorRT need."""

from __future__ import annotations

from pathlib import Path

import pytest

from hadskip.runtime.backends import ort as ort_backend


def test_cuda_provider_turns_tf32_off():
    assert ort_backend.cuda_provider(1) == ("CUDAExecutionProvider", {"device_id": "1", "use_tf32": "0"})
    name, opts = ort_backend.cuda_provider(0, stream=4242)
    assert opts == {"device_id": "0", "use_tf32": "0", "user_compute_stream": "4242"}


def test_ort_cuda_backend_opens_its_sessions_with_those_options(monkeypatch, tmp_path):
    import onnxruntime as ort

    from hadskip.runtime.backends import memory

    class Memory:
        device, stream = "cuda", 99

        def __init__(self, device_id):
            self.device_id = device_id

    seen = []

    class Opened(Exception):
        pass

    def open_session(path, options, providers):
        seen.append(providers)
        raise Opened

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(memory, "CudaMemory", Memory)
    monkeypatch.setattr(ort_backend, "open_session", open_session)
    manifest = type("M", (), {"units": {"embeddings": "e.onnx", "head": "h.onnx", "layers": [], "gates": []}})()
    with pytest.raises(Opened):
        ort_backend.OrtDeviceBackend(tmp_path, manifest, device="cuda", device_id=2)
    assert seen == [[("CUDAExecutionProvider", {"device_id": "2", "use_tf32": "0", "user_compute_stream": "99"})]]


def test_extras_pull_the_cuda_libraries_and_allow_tensorrt_10_and_11():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    gpu = [Requirement(r) for r in extras["gpu"]]
    ort_gpu = next(r for r in gpu if r.name == "onnxruntime-gpu")
    assert {"cuda", "cudnn"} <= ort_gpu.extras
    trt = next(Requirement(r) for r in extras["trt"] if Requirement(r).name == "tensorrt")
    assert trt.specifier.contains("10.13.0") and trt.specifier.contains("11.4.0")
    assert not trt.specifier.contains("9.3.0") and not trt.specifier.contains("12.0.0")
