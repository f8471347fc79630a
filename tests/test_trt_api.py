"""TensorRT API use, on CPU, through a stand-in of the tensorrt module in its 10.x and 11.x shapes
(tests/trt_standin.py): the engine build (strongly typed, fp16 from an fp16 graph, no removed API) and the
trt backend (scratch size, routing over its buffers, CUDA-graph capture and its cleanup)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import trt_standin as st

from hadskip.runtime.router import route

MAJORS = [10, 11]


# -- the engine build (export/trt.py) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def layer_onnx(tmp_path_factory):
    """The fp32 graph of one tiny BERT layer, as the exporter writes it."""
    pytest.importorskip("onnx")
    from hadskip.export.units import build_specs, export_onnx
    from hadskip.testing import tiny_model

    model, tok = tiny_model("bert")
    hf = model.config.hf_config
    spec = next(s for s in build_specs(model, vocab_size=hf["vocab_size"], pad_token_id=tok.pad_token_id,
                                       type_vocab_size=hf["type_vocab_size"]) if s.kind == "layer")
    path = tmp_path_factory.mktemp("onnx") / "layer.onnx"
    export_onnx(spec, path)
    return path


def _builder(major, calls, tmp_path, monkeypatch):
    from hadskip.export.trt import EngineBuilder

    monkeypatch.setenv("HADSKIP_CACHE", str(tmp_path / "cache"))
    return EngineBuilder(max_batch=4, max_seq_len=16, hidden_size=32, trt=st.make_trt(major, calls),
                         device_name="Stand-in GPU")


@pytest.mark.parametrize("major", MAJORS)
def test_fp16_plan_is_strongly_typed_from_an_fp16_graph(major, layer_onnx, tmp_path, monkeypatch):
    import onnx

    from hadskip.export.optimize import op_counts

    calls: list = []
    report = _builder(major, calls, tmp_path, monkeypatch).build(layer_onnx, tmp_path / "p" / "l.plan", fp16=True)
    assert ("create_network", 1 << int(st.make_trt(major, []).NetworkDefinitionCreationFlag.STRONGLY_TYPED)) in calls
    assert not [c for c in calls if c[0] == "set_flag" or c[0].startswith("layer.")]  # no weak-typing API
    assert ("clear_flag", "TF32") in calls
    parsed = [c[1] for c in calls if c[0] == "parse"]
    assert len(parsed) == 1 and parsed[0].endswith(".trt-fp16.onnx") and parsed[0] != str(layer_onnx)
    graph = onnx.load(parsed[0]).graph
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)  # the weights are fp16
    io = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
    assert io["hidden"] == io["hidden_out"] == onnx.TensorProto.FLOAT  # the runtime's buffers stay fp32
    counts = op_counts(parsed[0])
    assert report["fp32_layers"] == counts["LayerNormalization"] + counts["Softmax"] > 0
    ln = [n for n in graph.node if n.op_type == "LayerNormalization"]
    produced = {o: n for n in graph.node for o in n.output}
    for node in ln:  # LayerNorm reads fp32: a Cast to float (1) feeds it, never an fp16 tensor
        src = produced.get(node.input[0])
        assert src is not None and src.op_type == "Cast" and src.attribute[0].i == onnx.TensorProto.FLOAT
    assert (tmp_path / "p" / "l.plan").read_bytes() == b"plan"
    profile = [c[1] for c in calls if c[0] == "add_optimization_profile"][0]
    assert profile["hidden"] == ((1, 1, 32), (4, 16, 32), (4, 16, 32))


@pytest.mark.parametrize("major", MAJORS)
def test_fp32_plan_parses_the_fp32_graph_with_tf32_off(major, layer_onnx, tmp_path, monkeypatch):
    calls: list = []
    b = _builder(major, calls, tmp_path, monkeypatch)
    assert b.build(layer_onnx, tmp_path / "l.plan", fp16=False) == {"fp32_layers": 0}
    assert [c[1] for c in calls if c[0] == "parse"] == [str(layer_onnx)]
    assert [c for c in calls if c[0] == "build"][0][1]["config_flags"] == []
    assert ("clear_flag", "TF32") in calls and not [c for c in calls if c[0] == "set_flag"]
    b.save_cache()
    assert (tmp_path / "cache" / "trt" / f"timing-{major}.0.0-Stand-in_GPU.cache").read_bytes() == b"cache"


# -- the trt backend (runtime/backends/trt.py) ------------------------------------------------------------
L = 3


class NumpyBackend:
    """The reference: the stand-in units on numpy arrays through the same router."""

    name, num_layers = "numpy", L

    def run_embeddings(self, ids, mask, tt):
        return st.unit("embeddings", 0, {"input_ids": ids, "attention_mask": mask}).astype(np.float32)

    def run_gate(self, i, h, mask):
        return st.unit("gate", i, {"hidden": h, "attention_mask": mask}).astype(np.float32)  # (B, 2) logits

    def run_layer(self, i, h, mask):
        return st.unit("layer", i, {"hidden": h, "attention_mask": mask}).astype(np.float32)

    def gather(self, h, rows, t):
        return np.ascontiguousarray(h[rows, :t])

    def scatter(self, h, rows, sub):
        h = h.copy()
        h[rows, : sub.shape[1]] = sub
        return h

    def run_head(self, h, mask):
        return st.unit("head", 0, {"hidden": h}).astype(np.float32)


def _model_dir(tmp_path):
    rels = {"embeddings": "engines/embeddings.plan", "head": "engines/head.plan",
            "layers": [f"engines/layers/{i:02d}.plan" for i in range(L)],
            "gates": [f"engines/gates/{i:02d}.plan" for i in range(L)]}
    blobs = {rels["embeddings"]: "embeddings:0", rels["head"]: "head:0"}
    blobs.update({p: f"layer:{i}" for i, p in enumerate(rels["layers"])})
    blobs.update({p: f"gate:{i}" for i, p in enumerate(rels["gates"])})
    for rel, blob in blobs.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(blob)
    return types.SimpleNamespace(units={"engines": rels}, num_layers=L, backbone={"hidden_size": st.HIDDEN},
                                 labels=["neg", "pos"], max_seq_len=16)


def _batch(seed, b=6, t=9):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, size=b)
    lengths[0] = t
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(5, 60, size=(b, t)) * mask
    return ids, mask, np.zeros_like(ids)


def _backend(major, graphs, tmp_path, monkeypatch, calls=None, memory=None):
    from hadskip.runtime.backends.trt import TrtBackend

    calls = [] if calls is None else calls
    memory = memory or st.GraphMemory()
    monkeypatch.setattr(st.Context, "memory", memory)
    be = TrtBackend(tmp_path, _model_dir(tmp_path), max_batch=2, cuda_graphs=graphs, trt=st.make_trt(major, calls),
                    memory=memory)
    return be, memory


@pytest.mark.parametrize("graphs", ["off", "on"])
@pytest.mark.parametrize("major", MAJORS)
def test_trt_backend_routes_like_the_reference(major, graphs, tmp_path, monkeypatch):
    calls: list = []
    be, mem = _backend(major, graphs, tmp_path, monkeypatch, calls)
    assert ("set_device_memory", 1024) in calls  # v2 size, also where the v1 attribute is gone (11) or 0 (10)
    assert {c[1] for c in calls if c[0] == "create_execution_context"} == {"USER_MANAGED"}
    opened = set()
    for seed in (0, 1, 0, 1, 0):  # repeats of one shape: first plain, then captured, then replayed
        ids, mask, tt = _batch(seed)
        ref, got = route(NumpyBackend(), ids, mask, tt), route(be, ids, mask, tt)
        np.testing.assert_array_equal(got.gates, ref.gates)
        np.testing.assert_array_equal(got.logits, ref.logits)
        opened.update(map(tuple, ref.gates.astype(int)))
    assert len(opened) > 1 and 0 < ref.gates.mean() < 1  # rows took different paths
    if graphs == "on":
        assert mem.execs and "abort" not in mem.events
    else:
        assert not mem.events
    execs = len(mem.execs)
    be.close()
    assert len([e for e in mem.events if e.startswith("destroy:")]) == execs and not mem.execs


def test_a_refused_enqueue_during_capture_leaves_no_graph_and_runs_plainly(tmp_path, monkeypatch):
    be, mem = _backend(11, "on", tmp_path, monkeypatch)
    mem.fail_enqueue = True
    for seed in (0, 0, 0):
        ids, mask, tt = _batch(seed)
        np.testing.assert_array_equal(route(be, ids, mask, tt).logits, route(NumpyBackend(), ids, mask, tt).logits)
    assert "abort" in mem.events and not any(e.startswith("instantiate") for e in mem.events)
    assert not mem.execs and be._no_graph  # nothing instantiated, so nothing leaks; those shapes stay plain
    aborted = mem.events.count("abort")
    route(be, *_batch(0))
    assert mem.events.count("abort") == aborted  # no second attempt at a shape that failed


def test_an_invalidated_capture_falls_back_to_plain_runs(tmp_path, monkeypatch):
    be, mem = _backend(10, "on", tmp_path, monkeypatch)
    mem.invalidate_capture = True
    for seed in (1, 1, 1):
        ids, mask, tt = _batch(seed)
        np.testing.assert_array_equal(route(be, ids, mask, tt).logits, route(NumpyBackend(), ids, mask, tt).logits)
    assert "end:invalidated" in mem.events and not mem.execs and be._no_graph


# -- CudaMemory's capture cleanup, over a stand-in libcudart ---------------------------------------------
class _Cudart:
    """Records calls; cudaStreamEndCapture returns `end_code` and hands out a graph when `graph` is set."""

    def __init__(self, end_code=0, graph=True, instantiate_code=0):
        self.calls, self.end_code, self.graph, self.instantiate_code = [], end_code, graph, instantiate_code

    def __getattr__(self, name):
        def fn(*args):
            self.calls.append(name)
            if name == "cudaStreamEndCapture":
                if self.graph:
                    args[1]._obj.value = 0x1000
                return self.end_code
            if name == "cudaGraphInstantiateWithFlags":
                if self.instantiate_code == 0:
                    args[0]._obj.value = 0x2000
                return self.instantiate_code
            return 0
        return fn


def _memory(lib):
    from hadskip.runtime.backends.memory import CudaMemory

    mem = object.__new__(CudaMemory)
    mem.lib, mem.stream = lib, 7
    return mem


def test_capture_invalidated_by_cuda_clears_the_error():
    lib = _Cudart(end_code=901, graph=False)  # cudaErrorStreamCaptureInvalidated: no graph comes back
    assert _memory(lib).end_capture() is None
    assert lib.calls == ["cudaStreamEndCapture", "cudaGetLastError"]


def test_capture_ended_after_a_failed_enqueue_destroys_the_graph_and_clears_the_error():
    lib = _Cudart()
    _memory(lib).abort_capture()
    assert lib.calls == ["cudaStreamEndCapture", "cudaGraphDestroy", "cudaGetLastError"]


def test_a_good_capture_is_instantiated_and_its_graph_freed():
    lib = _Cudart()
    assert _memory(lib).end_capture() == 0x2000
    assert lib.calls == ["cudaStreamEndCapture", "cudaGraphInstantiateWithFlags", "cudaGraphDestroy"]
    lib = _Cudart(instantiate_code=1)
    assert _memory(lib).end_capture() is None
    assert lib.calls[-2:] == ["cudaGraphDestroy", "cudaGetLastError"]


def test_scratch_size_comes_from_v2_even_when_it_is_zero():
    from hadskip.runtime.backends.trt import TrtBackend

    assert TrtBackend._device_memory_size(types.SimpleNamespace(device_memory_size_v2=0)) == 0  # TensorRT 11
    assert TrtBackend._device_memory_size(types.SimpleNamespace(device_memory_size_v2=5, device_memory_size=9)) == 5
    assert TrtBackend._device_memory_size(types.SimpleNamespace(device_memory_size=9)) == 9  # TensorRT 10.0


def test_numpy_dtypes_without_tensorrt_helpers():
    from hadskip.runtime.backends.trt import np_dtype

    trt = types.SimpleNamespace()  # no trt.nptype: the names are enough
    assert [np_dtype(trt, d) for d in (st.DataType.FLOAT, st.DataType.HALF, st.DataType.INT64)] == \
        [np.float32, np.float16, np.int64]
