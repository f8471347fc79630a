"""Gates decided on the GPU (hadskip.modeling.cuda_conditional), checked without one:

- the gate kernel's C source (RULE_SOURCE + KERNEL_BODY, the very text NVRTC compiles) built for the host with the
  system C++ compiler and run against hadskip.runtime.router.gate_open / cap_gates over NaN, +-inf, ties, one-ulp
  gaps, subnormals and offsets (skipped without a compiler; the numpy reference of the rule is checked always);
- the static-shape compaction of the compact mode against the rule's rows;
- the outer-graph builder against a stand-in of cuda-bindings that records and checks every call
  (tests/cuda_standin.py) and executes the graph on the host: a routed batch through the graph equals the
  router's host loop, a failing call at any point leaves nothing allocated and falls back to the host loop;
- the one-line fallback (no cuda-bindings, a driver or runtime older than the conditional nodes need).
The test marked gpu runs the real thing (scripts/gpu_check.sh)."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cuda_standin  # noqa: E402
from hadskip.modeling import cuda_conditional as cc  # noqa: E402
from hadskip.modeling.torch_backend import TorchBackend  # noqa: E402
from hadskip.runtime.router import cap_gates, gate_open, route  # noqa: E402
from hadskip.testing import id_batch, tiny_model  # noqa: E402

CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler to build the kernel source for the host")


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    """The kernel source built for the host: hadskip_gate_open, hadskip_gate_rows, hadskip_gate."""
    if CXX is None:
        pytest.skip("no C++ compiler")
    return cuda_standin.build_host_kernel(tmp_path_factory.mktemp("kernel"))


def _edge_logits(rng) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) float32 logits and (N,) float64 offsets over the rule's edge cases, plus random ones."""
    f = np.float32
    tiny = np.finfo(f).smallest_subnormal
    special = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, np.inf, -np.inf, np.nan, tiny, -tiny, np.finfo(f).max,
                        -np.finfo(f).max, np.finfo(f).tiny, 1e-30, np.nextafter(f(1), f(2)),
                        np.nextafter(f(1), f(0)), 65504.0, -65504.0], dtype=f)
    pairs = np.array([(a, b) for a in special for b in special], dtype=f)  # every pair: ties, inf - inf, NaN
    rand = rng.normal(size=(2000, 2)).astype(f)
    rand[::7, 1] = rand[::7, 0]  # ties
    rand[1::11, 1] = np.nextafter(rand[1::11, 0], np.float32(np.inf))  # one-ulp gaps
    rand[2::13] = np.float16(rand[2::13]).astype(f)  # fp16 logits widened
    logits = np.concatenate([pairs, rand])
    offsets_pool = np.array([0.0, -0.0, 0.25, -0.25, 1e-300, -1e-300, 1.0, -3.0, np.inf, -np.inf, np.nan,
                             float(np.nextafter(f(1), f(2))) - 1.0])
    offsets = np.concatenate([rng.choice(offsets_pool, size=len(logits) // 2),
                              rng.normal(scale=0.5, size=len(logits) - len(logits) // 2)])
    return logits, offsets


def _rows(so, logits, offsets, used, cap, buckets=()):
    """hadskip_gate_rows on numpy arrays: (decisions bool, used after, value)."""
    logits = np.ascontiguousarray(logits, np.float32)
    offsets = np.ascontiguousarray(offsets, np.float64)
    used = np.array(used, dtype=np.int32)
    cap = np.ascontiguousarray(cap, np.int32)
    dec = np.zeros(len(logits), dtype=np.uint8)
    b = np.ascontiguousarray(buckets or [0], np.int32)
    value = so.hadskip_gate_rows(len(logits), logits.ctypes.data, offsets.ctypes.data, used.ctypes.data,
                                 cap.ctypes.data, dec.ctypes.data, b.ctypes.data, len(buckets))
    return dec.astype(bool), used, value


@needs_cxx
def test_the_kernel_rule_is_the_runtime_rule(host_lib):
    rng = np.random.default_rng(0)
    logits, offsets = _edge_logits(rng)
    with np.errstate(invalid="ignore"):
        want = gate_open(logits, offsets)
        want_scalar = {o: gate_open(logits, o) for o in (0.0, 0.7, -np.inf, np.inf)}
    got = np.array([host_lib.hadskip_gate_open(c, o, off) for (c, o), off in zip(logits, offsets, strict=True)],
                   dtype=bool)
    np.testing.assert_array_equal(got, want)
    assert want.any() and not want.all()
    n = len(logits)
    for o, w in want_scalar.items():  # one offset for the whole batch
        np.testing.assert_array_equal(_rows(host_lib, logits, np.full(n, o), np.zeros(n), np.full(n, 99))[0], w)
    # whole rows: the rule, then the cap (router.cap_gates)
    used = rng.integers(0, 4, size=len(logits))
    cap = rng.integers(0, 5, size=len(logits))
    dec, used_after, _ = _rows(host_lib, logits, offsets, used, cap)
    np.testing.assert_array_equal(dec, cap_gates(want, used, cap))
    np.testing.assert_array_equal(used_after, used + dec)


def test_the_numpy_reference_is_the_runtime_rule():
    rng = np.random.default_rng(1)
    logits, offsets = _edge_logits(rng)
    used, cap = rng.integers(0, 4, size=len(logits)), rng.integers(0, 5, size=len(logits))
    g, after, value = cc.reference_gate_rows(logits, offsets, used, cap)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(g, cap_gates(gate_open(logits, offsets), used, cap))
    assert value == int(g.any()) and np.array_equal(after, used + g)


@needs_cxx
@pytest.mark.parametrize("rows", [1, 3, 32])
def test_the_conditional_value_picks_the_bucket(host_lib, rows):
    rng = np.random.default_rng(rows)
    buckets = cc.buckets_for(rows)
    assert buckets[-1] == rows and list(buckets) == sorted(set(buckets))
    for trial in range(200):
        logits = rng.normal(size=(rows, 2)).astype(np.float32)
        if trial % 10 == 0:
            logits[:, 1] = logits[:, 0] - (trial % 20 == 0)  # all closed: ties, then below
        offsets = rng.normal(scale=0.3, size=rows)
        used = np.zeros(rows, dtype=np.int64)
        cap = np.full(rows, 99)
        for b in ((), buckets):
            dec, _, value = _rows(host_lib, logits, offsets, used, cap, b)
            ref_g, _, ref_value = cc.reference_gate_rows(logits, offsets, used, cap, b)
            np.testing.assert_array_equal(dec, ref_g)
            assert value == ref_value
            n = int(dec.sum())
            if b and n:
                assert buckets[value] >= n and (value == 0 or buckets[value - 1] < n)
            elif b:
                assert value == len(buckets)  # no case runs
            else:
                assert value == (n > 0)


def _gate_cases(rng, b):
    yield rng.normal(size=(b, 2)).astype(np.float32), 0.0
    yield np.tile(np.float32([0.0, 5.0]), (b, 1)), 0.0  # all open
    yield np.tile(np.float32([5.0, 0.0]), (b, 1)), 0.0  # all closed
    z = rng.normal(size=(b, 2)).astype(np.float32)
    z[::2, 1] = z[::2, 0]  # ties close
    z[1::3] = np.nan  # NaN closes
    yield z, rng.normal(scale=0.2, size=b)


@pytest.mark.parametrize("how", cc.COMPACTIONS)
def test_compaction_selects_exactly_the_open_rows_and_scatters_back_only_them(how):
    rng = np.random.default_rng(2)
    disagreements = 0
    for b in (1, 2, 5, 32):
        for _ in range(20):
            for logits, offset in _gate_cases(rng, b):
                with np.errstate(invalid="ignore"):
                    want = np.flatnonzero(gate_open(logits, offset))
                g = torch.from_numpy(gate_open(logits, offset) if np.ndim(offset) else
                                     gate_open(logits, float(offset)))
                for size in [s for s in cc.buckets_for(b) if s >= len(want)]:
                    idx = cc.compact_rows(g, size, b, how)
                    assert idx.shape == (size,) and idx.dtype == torch.int64
                    disagreements += int(not np.array_equal(idx[:len(want)].numpy(), want))
                    assert (idx[len(want):] == b).all()  # padding: the scratch row
                    h = torch.arange(1, (b + 1) * 3 + 1, dtype=torch.float32).reshape(b + 1, 3)
                    before = h.clone()
                    h.index_copy_(0, idx, h.index_select(0, idx) * -1)  # "the layer" on the gathered rows
                    changed = np.flatnonzero((h[:b] != before[:b]).any(1).numpy())
                    np.testing.assert_array_equal(changed, want)  # only the open rows; the scratch row b aside
    assert disagreements == 0


# -- the builder against the stand-in ---------------------------------------------------------------------

def _standin(host_lib, **kwargs):
    return cuda_standin.host_cuda(host_lib, **kwargs)


def _device_gates(model, cuda, mode="dense", **kwargs) -> cc.DeviceGates:
    units = TorchBackend(model, "cpu", cuda_graphs="off").units()
    return cc.DeviceGates(units, "cpu", mode, api=cuda, capture=cuda.capture, arch=(9, 0),
                          stream=lambda: 0, **kwargs)


@pytest.fixture(scope="module")
def model():
    return tiny_model("bert")[0]


@needs_cxx
@pytest.mark.parametrize("mode", cc.MODES)
def test_one_graph_per_batch_equals_the_host_loop(host_lib, model, mode):
    cuda = _standin(host_lib)
    gates = _device_gates(model, cuda, mode)
    host = TorchBackend(model, "cpu", cuda_graphs="off")
    dev = TorchBackend(model, "cpu", cuda_graphs="off", gate_graphs=gates)
    rng = np.random.default_rng(5)
    L = model.num_layers
    batches = [id_batch(rng, 1), id_batch(rng, 7), id_batch(np.random.default_rng(9), 7)]
    mixed = calls = 0
    for ids, mask, tt in batches:
        b = len(ids)
        row0_closed = np.where(np.arange(b) == 0, np.inf, rng.normal(scale=0.3, size=b))
        five_of_seven = np.where(np.arange(b) % 6 == 0, 0, L)  # b = 7: 5 rows open, a bucket of 7 with 2 padding slots
        for offset, cap in ((0.0, None), (0.4, None), (rng.normal(scale=0.5, size=b), None), (-0.3, 1),
                            (row0_closed, None), (-np.inf, five_of_seven),
                            (0.0, rng.integers(0, L + 1, size=b)), (np.inf, None), (-np.inf, None)):
            for _ in range(2):  # a new shape: first sight on the host, then its graph
                want = route(host, ids, mask, tt, gate_offset=offset, max_layers=cap)
                got = route(dev, ids, mask, tt, gate_offset=offset, max_layers=cap)
                calls += 1
                np.testing.assert_array_equal(got.gates, want.gates)
                np.testing.assert_allclose(got.logits, want.logits, atol=1e-5, rtol=0)  # the host trims padding
                mixed += 0 < want.gates[:, 1:].mean() < 1
        forced = rng.random((len(ids), L)) < 0.5  # a forced pattern takes the host loop
        np.testing.assert_array_equal(route(dev, ids, mask, tt, forced=forced).gates, forced)
    assert mixed  # rows took different paths
    st = cuda.state
    assert gates.builds == 2 and st.instantiations == 2  # one per shape (1 x 12, 7 x 12), however many calls
    assert gates.launches == st.launches == calls - 2  # every call but the first sight of each shape
    assert not gates.failed


@needs_cxx
@pytest.mark.parametrize("mode", cc.MODES)
def test_the_outer_graph_is_wired_from_the_units(host_lib, model, mode):
    cuda = _standin(host_lib)
    gates = _device_gates(model, cuda, mode)
    ids, mask, tt = id_batch(np.random.default_rng(3), 4)
    assert gates.run(ids, mask, tt) is None and gates.run(ids, mask, tt) is not None
    st, L = cuda.state, model.num_layers
    names = [c[0] for c in st.calls]
    # the context torch made current, then the kernel: compiled once for the device's architecture, the program
    # released, the module loaded; then the graph
    assert names[:10] == ["cuInit", "cuCtxGetCurrent", "nvrtcCreateProgram", "nvrtcCompileProgram",
                          "nvrtcGetCUBINSize", "nvrtcGetCUBIN", "nvrtcDestroyProgram", "cuModuleLoadData",
                          "cuModuleGetFunction", "cuGraphCreate"]
    (source,) = cuda.sources.values()
    assert source.decode() == cc.KERNEL_SOURCE and cc.RULE_SOURCE in cc.KERNEL_SOURCE
    assert b"--gpu-architecture=sm_90" in st.calls[names.index("nvrtcCompileProgram")][1][2]
    outer = [g for g in st.graphs.values() if g.owner is None]
    assert len(outer) == 1
    nodes = outer[0].nodes
    assert [n["kind"] for n in nodes] == ["child"] + ["child", "kernel", "conditional"] * L + ["child"]
    assert all(n["deps"] == [p["id"]] for p, n in zip(nodes, nodes[1:], strict=False))  # one chain
    shape = gates.shapes[(4, ids.shape[1], mode)]
    captured = shape.outer.keep[-1].captured  # in capture order: embeddings, per layer gate then bodies, head
    n_bodies = 1 if mode == "dense" else len(cc.buckets_for(4))
    assert len(captured) == 2 + L * (1 + n_bodies)
    unit_of = {uid: fn for uid, fn in st.units.items()}
    assert unit_of[nodes[0]["unit"]] == shape.embeddings and unit_of[nodes[-1]["unit"]] == shape.head
    for i in range(L):
        gate, kernel, cond = nodes[1 + 3 * i: 4 + 3 * i]
        assert unit_of[gate["unit"]] is captured[1 + i * (1 + n_bodies)]
        assert kernel["grid"] == (1, 1, 1) and kernel["block"] == (1, 1, 1)
        handle, logits, offsets, used, cap, dec, rows, buckets, nb = kernel["args"]
        assert handle == cond["handle"] and rows == 4 and nb == (0 if mode == "dense" else n_bodies)
        assert logits == shape.glog[i].data_ptr() and dec == shape.dec[i].data_ptr()
        assert (offsets, used, cap) == (shape.offsets.data_ptr(), shape.used.data_ptr(), shape.cap.data_ptr())
        assert cond["type"] == (0 if mode == "dense" else 2) and len(cond["bodies"]) == n_bodies
        for k, body in enumerate(cond["bodies"]):
            (child,) = st.graphs[body].nodes  # each body: layer i's graph (at bucket k's rows), as a child graph
            assert child["kind"] == "child" and unit_of[child["unit"]] is captured[2 + i * (1 + n_bodies) + k]
    before = len(st.calls)
    for _ in range(3):
        gates.run(ids, mask, tt)
    assert [c[0] for c in st.calls[before:]] == ["cuGraphLaunch"] * 3  # instantiated once, launched per call
    gates.close()
    assert st.live() == {"graphs": 0, "execs": 0, "modules": 0, "programs": 0}


def _build_calls(host_lib, model) -> list[str]:
    cuda = _standin(host_lib)
    gates = _device_gates(model, cuda)
    ids, mask, tt = id_batch(np.random.default_rng(3), 2)
    gates.run(ids, mask, tt)
    gates.run(ids, mask, tt)
    return [c[0] for c in cuda.state.calls if c[0] != "cuGraphLaunch"]


RELEASES = {"cuGraphDestroy", "cuGraphExecDestroy", "cuModuleUnload", "nvrtcDestroyProgram"}
AFTER_A_FAILURE = RELEASES | {"nvrtcGetProgramLogSize", "nvrtcGetProgramLog"}  # the compiler's log is read


@needs_cxx
def test_a_failing_call_anywhere_falls_back_and_leaves_nothing_allocated(host_lib, model, capsys):
    calls = _build_calls(host_lib, model)
    ids, mask, tt = id_batch(np.random.default_rng(3), 2)
    host = TorchBackend(model, "cpu", cuda_graphs="off")
    want = route(host, ids, mask, tt)
    checked = 0
    for k, name in enumerate(calls):
        if name in RELEASES:
            continue
        cuda = _standin(host_lib, fail=k)
        gates = _device_gates(model, cuda)
        dev = TorchBackend(model, "cpu", cuda_graphs="off", gate_graphs=gates)
        capsys.readouterr()
        for _ in range(3):
            got = route(dev, ids, mask, tt)
            np.testing.assert_array_equal(got.gates, want.gates)
            np.testing.assert_allclose(got.logits, want.logits, atol=1e-5, rtol=0)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{name} failed" in err and "stay on the host" in err, (k, name, err)
        st = cuda.state
        after = [c[0] for c in st.calls[k + 1:]]
        assert set(after) <= AFTER_A_FAILURE, f"calls after {name} failed: {after}"  # errors are checked at once
        assert gates.failed and not gates.shapes and st.launches == 0 and st.instantiations == 0
        live = st.live()
        assert live["graphs"] == live["execs"] == live["programs"] == 0, (name, live)
        dev.close()
        assert st.live()["modules"] == 0
        checked += 1
    assert checked >= 12


@needs_cxx
def test_a_failing_launch_falls_back_too(host_lib, model, capsys):
    cuda = _standin(host_lib, fail="cuGraphLaunch")
    gates = _device_gates(model, cuda)
    dev = TorchBackend(model, "cpu", cuda_graphs="off", gate_graphs=gates)
    host = TorchBackend(model, "cpu", cuda_graphs="off")
    ids, mask, tt = id_batch(np.random.default_rng(4), 3)
    capsys.readouterr()
    for _ in range(3):
        np.testing.assert_array_equal(route(dev, ids, mask, tt).gates, route(host, ids, mask, tt).gates)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cuGraphLaunch failed" in err
    assert [c[0] for c in cuda.state.calls].count("cuGraphLaunch") == 1 and not gates.shapes
    assert cuda.state.live()["graphs"] == cuda.state.live()["execs"] == 0


def test_why_not_and_the_one_fallback_line(model, capsys):
    units = TorchBackend(model, "cpu", cuda_graphs="off").units()
    cpu = torch.device("cpu")

    def missing():
        raise ImportError("cuda-bindings is not installed (No module named 'cuda')")

    assert cc.why_not(cpu) == "no CUDA GPU"
    assert "cuda-bindings is not installed" in cc.why_not(cpu, loader=missing, gpu=True)
    old = cuda_standin.make_cuda(driver_version=12030)
    assert cc.why_not(cpu, api=old, gpu=True) == "the CUDA driver is 12.3; IF conditional nodes need 12.4"
    mid = cuda_standin.make_cuda(driver_version=12060)
    assert cc.why_not(cpu, "dense", api=mid, gpu=True) is None
    assert cc.why_not(cpu, "compact", api=mid, gpu=True) == \
        "the CUDA driver is 12.6; SWITCH conditional nodes need 12.8"
    old_rt = cuda_standin.make_cuda(runtime_version=12020)
    assert "the CUDA runtime is 12.2" in cc.why_not(cpu, api=old_rt, gpu=True)
    capsys.readouterr()
    for kwargs, words in ((dict(loader=missing), "cuda-bindings is not installed"), (dict(api=old), "driver is 12.3")):
        got, why = cc.open_device_gates(units, cpu, gpu=True, **kwargs)
        err = capsys.readouterr().err
        assert got is None and words in why and err.count("\n") == 1 and words in err and "on the host" in err
    ok, why = cc.open_device_gates(units, cpu, gpu=True, api=cuda_standin.make_cuda(), arch=(9, 0), stream=lambda: 0)
    assert isinstance(ok, cc.DeviceGates) and why is None and capsys.readouterr().err == ""


def test_load_bindings_wants_13(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("cuda")
    fake.bindings = types.ModuleType("cuda.bindings")
    fake.bindings.__version__ = "12.9.0"
    for m in ("driver", "runtime", "nvrtc"):
        setattr(fake.bindings, m, types.ModuleType(f"cuda.bindings.{m}"))
        monkeypatch.setitem(sys.modules, f"cuda.bindings.{m}", getattr(fake.bindings, m))
    monkeypatch.setitem(sys.modules, "cuda", fake)
    monkeypatch.setitem(sys.modules, "cuda.bindings", fake.bindings)
    with pytest.raises(ImportError, match="cuda-bindings 12.9.0 is installed; this path is written for 13.x"):
        cc.load_bindings()
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(ImportError, match="cuda-bindings is not installed"):
        cc.load_bindings()


@pytest.mark.skipif(importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None,
                    reason="cuda-bindings is not installed (the GPU check brings it)")
def test_the_standin_has_only_what_cuda_bindings_13_has():
    assert cuda_standin.compare_with_real() == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("mode", cc.MODES)
def test_on_the_gpu_one_graph_equals_the_host_loop(mode):
    m = tiny_model("bert")[0]
    why = cc.why_not(torch.device("cuda"), mode)
    if why is not None:
        pytest.skip(why)
    host = TorchBackend(m, "cuda", device_gates="off")
    dev = TorchBackend(tiny_model("bert")[0], "cuda", device_gates=mode)
    assert dev.gate_graphs is not None, dev.device_gates_why
    rng = np.random.default_rng(0)
    for ids, mask, tt in (id_batch(rng, 1), id_batch(rng, 8), id_batch(rng, 32)):
        for offset in (0.0, 0.3, rng.normal(scale=0.5, size=len(ids))):
            for _ in range(3):
                want = route(host, ids, mask, tt, gate_offset=offset)
                got = route(dev, ids, mask, tt, gate_offset=offset)
                np.testing.assert_array_equal(got.gates, want.gates)
                np.testing.assert_allclose(got.logits, want.logits, atol=1e-3, rtol=0)
    assert dev.gate_graphs.launches > 0 and not dev.gate_graphs.failed, dev.gate_graphs.failed
