"""--engine trt: one clear line without tensorrt or a GPU (the ONNX part kept); the build itself on a GPU."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")

from hadskip.export import export_model  # noqa: E402
from hadskip.export.trt import TRTUnavailableError, profile_shapes  # noqa: E402
from hadskip.runtime.manifest import load_manifest  # noqa: E402
from hadskip.testing import tiny_run  # noqa: E402

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT and a GPU are here: the build runs instead")
def test_trt_without_tensorrt_or_gpu_says_what_is_missing_and_keeps_onnx(tmp_path):
    run_dir = tiny_run(tmp_path / "run", "bert")
    with pytest.raises(TRTUnavailableError) as err:
        export_model(run_dir, tmp_path / "model", engine="trt", max_batch=4, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and ("pip install 'hadskip[trt]'" in msg or "no CUDA GPU" in msg)
    assert str(tmp_path / "model") in msg
    m = load_manifest(tmp_path / "model")  # the validated ONNX export is there and loads
    assert m.engine == "onnx" and m.units["engines"] is None and m.export["engine_requested"] == "trt"
    assert not (tmp_path / "model" / "engines").exists()


def test_profile_spans_one_to_max():
    p = profile_shapes(64, 128)
    assert p["batch"][0] == 1 and p["batch"][-1] == 64 and p["seq"] == [1, 128, 128]
    assert profile_shapes(4, 32) == {"batch": [1, 4, 4], "seq": [1, 32, 32]}


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="needs tensorrt (pip install 'hadskip[trt]') and a CUDA GPU")
@pytest.mark.parametrize("fp16", [False, True])
def test_trt_engines_built_and_checked(tmp_path, fp16):
    run_dir = tiny_run(tmp_path / "run", "tinybert")
    report = export_model(run_dir, tmp_path / "model", engine="trt", fp16=fp16, optimize=True, max_batch=8,
                          progress=False)
    m = load_manifest(tmp_path / "model")  # every plan's sha256 checked
    e = m.units["engines"]
    assert m.engine == "trt" and report.engine == "trt" and m.precision == ("fp16" if fp16 else "fp32")
    assert len(e["layers"]) == len(e["gates"]) == m.num_layers and e["embeddings"] and e["head"]
    assert e["gates_precision"] == "fp32" and e["profile"]["batch"] == [1, 8, 8]
    assert all(p in m.files for p in [*e["layers"], *e["gates"], e["embeddings"], e["head"]])
    trt_diffs = {k: v for k, v in m.validation.items() if k.startswith("trt/")}
    assert len(trt_diffs) == 2 * m.num_layers + 2
    assert all(v <= 1e-4 for k, v in trt_diffs.items() if k.startswith("trt/gate"))
    if fp16:
        assert e["fp32_pinned_layers"] > 0


def test_a_failing_trt_build_keeps_the_onnx_dir(tmp_path, monkeypatch):
    from hadskip.export import ExportError, trt

    def boom(*args, **kwargs):
        raise RuntimeError("parser exploded\nsecond line")

    monkeypatch.setattr(trt, "require_tensorrt", lambda: None)
    monkeypatch.setattr(trt, "build_engines", boom)
    with pytest.raises(ExportError, match=r"^TensorRT build failed: RuntimeError: parser exploded \(the validated"):
        export_model(tiny_run(tmp_path / "run", "bert"), tmp_path / "model", engine="trt", max_batch=2,
                     progress=False)
    assert load_manifest(tmp_path / "model").engine == "onnx"
