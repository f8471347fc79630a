"""Shipping the non-gated routes (issue 19, "the winner ships"): `hadskip export` of a budgeted-exit run (a static
model: every row runs its K layers, no gate graphs) and of an early-exit run (exit heads as units, the runtime's
per-row exit loop, the entropy rule shared with hadskip.evaluation.baselines.rules, an exit dial calibrated on
dev), each through Runtime, predict, eval, bench, serve-local, Triton's model.py and hadskip.pipeline, against
the PyTorch models they were trained as. The runs are trained here from one tiny teacher (3 layers)."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

import hadskip
from hadskip.errors import HadSkipError
from hadskip.runtime import Runtime
from hadskip.runtime.dial import DialError
from hadskip.runtime.manifest import ManifestError, load_manifest
from hadskip.testing import tiny_teacher

L = 3  # the tiny teacher's layers


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny teacher; budgeted-exit runs at K=2 and K=3 (= L); a jointly trained early-exit run; their exports."""
    from safetensors.torch import load_file, save_file

    from hadskip.evaluation.baselines import BaselineConfig, train_budgeted_exit, train_exit_model
    from hadskip.export import export_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    made = tiny_teacher(tmp_path_factory.mktemp("ship"), n_eval=48)
    root, task, teacher = made["root"], made["task"], made["teacher"]
    base = dict(teacher=str(teacher), epochs=1, batch_size=16, progress=False)
    for k in (2, 3):
        train_budgeted_exit(BaselineConfig(out=str(root / f"be{k}"), **base), k)
    # a budgeted-exit run carries the teacher's untrained gates, which its PyTorch model never uses (gates "off"):
    # give them weights whose decisions vary, so an export that routed by them would drop layers
    f = root / "be2" / "model.safetensors"
    state = load_file(str(f))
    gen = torch.Generator().manual_seed(0)
    for key in [k for k in state if k.startswith("gates.") and k.endswith("weight")]:
        state[key] = torch.randn(state[key].shape, generator=gen) * 4
    save_file(state, str(f))
    train_exit_model(BaselineConfig(out=str(root / "ee"), **base))  # exits on the mean of the tokens (the default)
    train_exit_model(BaselineConfig(out=str(root / "ee1"), exit_pool="first", **base))  # first-token exits (older runs)
    out = {"root": root, "task": task, "teacher": teacher}
    for name in ("be2", "be3", "ee", "ee1"):
        export_model(root / name, root / f"m-{name}", progress=False)
        out[name], out[f"m-{name}"] = root / name, root / f"m-{name}"
    yield out
    torch.set_num_threads(threads)


def _split(env, split: str = "test") -> list[str]:
    from hadskip.data.sources import load_task

    return list(load_task(str(env["task"])).split(split).texts)


def _batch(tokenizer, texts):
    enc = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


# ------------------------------------------------------------------------------------------ static (budgeted exit)

@pytest.mark.parametrize("k", [2, 3])
def test_a_budgeted_exit_run_ships_as_a_static_model_equal_to_pytorch(env, k):
    from hadskip.modeling.checkpoint import load_run

    m = load_manifest(env[f"m-be{k}"])
    assert m.route == {"kind": "static", "run_kind": "budgeted-exit", "teacher_layers": L}
    assert m.num_layers == k and m.units["gates"] == [] and not any(f.startswith("gates/") for f in m.files)
    assert m.budget == k and m.dial is None
    texts = _split(env)
    model, tok, _ = load_run(env[f"be{k}"])
    with torch.no_grad():
        ref = model(*_batch(tok, texts), gates="off").logits.numpy()  # how compare evaluates it
    with Runtime.load(env[f"m-be{k}"]) as rt:
        assert rt.route == "static"
        p = rt.predict(texts, batch_size=7)
    assert (p.num_layers == k).all() and p.layers[0] == list(range(k))
    assert np.array_equal(p.label_ids, ref.argmax(1))
    assert np.abs(p.logits - ref).max() < 1e-4


def test_a_static_model_takes_only_its_own_k(env, capsys):
    from hadskip.cli.main import main

    with pytest.raises(DialError, match="static model that runs 2 layers .* teacher's 3: it takes no budget but 2"):
        Runtime.load(env["m-be2"], budget=1.5)
    with Runtime.load(env["m-be2"], budget=2) as rt:  # its own K: fine
        assert rt.predict(["a good movie"]).num_layers.tolist() == [2]
        assert rt.predict(["a good movie"], budget=[2.0]).num_layers.tolist() == [2]
        with pytest.raises(DialError, match="takes no budget but 2, got 3"):
            rt.predict(["a good movie"], budget=3)
        with pytest.raises(HadSkipError, match="max_layers must be at least 2, got 1"):
            rt.predict(["a good movie"], max_layers=1)
        assert rt.predict(["a good movie"], max_layers=2).num_layers.tolist() == [2]
        ids, mask, tt = rt.encoder.pad_batch(rt.encode(["a good movie"]), [0])
        with pytest.raises(HadSkipError, match="static model without gates: forced gates and gate offsets"):
            rt.run_batch(ids, mask, tt, forced=np.zeros((1, 2)))
        with pytest.raises(HadSkipError, match="exit_threshold is for early-exit models"):
            rt.run_batch(ids, mask, tt, exit_threshold=0.3)
        assert rt.predict([]).probabilities.shape == (0, 2)  # empty inputs
    src = env["root"] / "in.txt"
    src.write_text("a good movie\n")
    assert main(["predict", str(env["m-be2"]), "-i", str(src), "--budget", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "takes no budget but 2" in err


def test_a_static_model_is_served_benched_and_piped(env):
    from hadskip.runtime.bench import run_bench
    from hadskip.runtime.serve import ServeConfig, create_app
    from test_server import Served

    texts = ["a good movie", "the plot was dull and boring"]
    with Runtime.load(env["m-be2"]) as rt:
        want = rt.predict(texts)
        with Served(create_app(ServeConfig(), lambda: rt, model_name="be2")) as srv:
            r = srv.client.post("/predict", json={"inputs": texts})
            assert r.status_code == 200, r.text
            got = r.json()["predictions"]
            assert [g["layers"] for g in got] == [[0, 1], [0, 1]]
            assert [g["probs"] for g in got] == [w.probs for w in want]
            bad = srv.client.post("/predict", json={"inputs": texts, "budget": 1})
            assert bad.status_code == 422 and "takes no budget but 2" in bad.text
            info = srv.client.get("/info").json()
            assert info["route"] == {"kind": "static", "layers": 2, "teacher_layers": 3}
    report = run_bench(env["m-be2"], batches=(2,), seqs=(8,), repeats=1, warmup=0)
    assert {r.engine for r in report.rows} == {"full", "hadskip"}
    assert next(r for r in report.rows if r.engine == "hadskip").avg_layers == 2
    assert report.parts[0]["gate_ms"] is None
    with pytest.raises(HadSkipError, match="forced K patterns need a gated model"):
        run_bench(env["m-be2"], batches=(2,), seqs=(8,), repeats=1, warmup=0, ks=[1])
    with hadskip.pipeline(env["m-be2"]) as pipe:
        assert pipe(texts[0]) == [{"label": want[0].label, "score": want[0].probs[want[0].label]}]


def test_a_static_export_with_baseline_times_against_the_teacher(env):
    """--with-baseline on a budgeted-exit run exports its (deeper) teacher as the full model to time against."""
    from hadskip.export import export_model
    from hadskip.runtime.bench import run_bench

    out = env["root"] / "m-be2-baseline"
    export_model(env["be2"], out, progress=False, with_baseline=True, validate=False)
    base = load_manifest(out).export["baseline"]
    assert base["model"] == "teacher" and base["teacher_run"] == env["teacher"].name  # by name (portable)
    report = run_bench(out, batches=(2,), seqs=(8,), repeats=1, warmup=0)
    assert report.full_source == "baseline (optimum-onnx)"


def test_a_static_export_refuses_gate_options(env):
    from hadskip.export import export_model
    from hadskip.export.spec import ExportError

    for kw in ({"fuse_gates": True}, {"quantize": "int8"}):
        with pytest.raises(ExportError, match="needs a gated model; .* is a budgeted-exit run"):
            export_model(env["be2"], env["root"] / "never", progress=False, **kw)
        assert not (env["root"] / "never").exists()


# ------------------------------------------------------------------------------------------ early exit

def test_the_exit_rule_is_one_function():
    from hadskip.evaluation.baselines import rules
    from hadskip.runtime import exits

    assert rules.entropy is exits.entropy and rules.exit_layers is exits.exit_layers
    # a NaN entropy never exits (the row runs on; at the last layer the head answers), +inf neither
    ent = np.array([[np.nan, 0.1, 0.9], [np.inf, np.nan, 0.0], [0.05, 0.0, 0.0]])
    assert exits.exit_layers(ent, 0.2).tolist() == [1, 2, 0]
    assert exits.exit_now(np.array([np.nan, np.inf, -0.0, 0.0]), 0.0).tolist() == [False] * 4  # threshold 0: never
    probs = exits.softmax(np.array([[np.inf, 0.0], [np.nan, 1.0], [0.0, 0.0]], dtype=np.float32))
    ent = exits.entropy(probs)
    assert np.isnan(ent[:2]).all() and ent[2] == pytest.approx(np.log(2))  # inf/NaN logits: NaN entropy
    assert exits.exit_now(ent, 10.0).tolist() == [False, False, True]


def _torch_exits(env, texts, name: str = "ee"):
    """PyTorch's exit logits (N, L, C) of the early-exit run, as `hadskip compare` computes them."""
    from hadskip.evaluation.baselines import load_exit_model

    model, tok, _ = load_exit_model(env[name], device="cpu")
    with torch.no_grad():
        logits, _ = model(*_batch(tok, texts))
    return logits.numpy()


def test_an_early_exit_run_ships_with_its_heads_and_an_exit_dial(env):
    m = load_manifest(env["m-ee"])
    assert m.route == {"kind": "early-exit", "rule": "entropy", "run_kind": "early-exit", "teacher_layers": L}
    assert m.units["gates"] == [] and m.units["exits"] == ["exits/00.onnx", "exits/01.onnx"]
    assert m.budget is None and m.dial["split"] == "dev" and m.dial["extra"]["rule"] == "entropy"
    assert [p["target"] for p in m.dial["points"]] == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert {"exit_00", "exit_01"} <= set(m.validation)  # each exit graph validated against PyTorch


def test_early_exit_parity_with_pytorch_at_every_dial_setting(env):
    """Runtime vs PyTorch (exit_probs' softmax + rules.entropy + rules.exit_layers) on the test split: the same
    exit layer for every row at every calibrated point and some knots in between, logits within 1e-4; on dev,
    the average layers each point was calibrated to."""
    from hadskip.evaluation.baselines import rules

    texts, dev = _split(env), _split(env, "dev")
    ref = _torch_exits(env, texts)  # (N, L, C)
    ent = rules.entropy(torch.from_numpy(ref).softmax(-1).numpy())
    spread = set()
    with Runtime.load(env["m-ee"]) as rt:
        dial = rt.info.dial
        budgets = [p.target for p in dial.points] + [1.2, 1.77, 2.33, 2.9]
        for b in budgets:
            thr = rt.offset_for(b)
            want = rules.exit_layers(ent, thr)
            p = rt.predict(texts, budget=b, batch_size=5)
            assert (p.num_layers - 1).tolist() == want.tolist(), b  # 0 decision disagreements
            assert all(p.layers[n] == list(range(want[n] + 1)) for n in range(len(texts)))
            assert np.abs(p.logits - ref[np.arange(len(texts)), want]).max() < 1e-4
            spread.add(len(set(want.tolist())))
        for point in dial.points:
            assert rt.predict(dev, budget=point.target).avg_layers == pytest.approx(point.avg_layers)
        full = rt.predict(texts)  # no budget: threshold 0, nobody exits: the full model
        assert (full.num_layers == L).all() and np.abs(full.logits - ref[:, -1]).max() < 1e-4
    assert max(spread) >= 2  # some setting sends rows out at different layers in one batch


def test_a_row_with_nan_or_inf_exit_logits_does_not_exit(env):
    """A row whose exit head gives NaN or +inf logits has a NaN entropy: it does not exit there and runs the next
    layer (the other rows of the batch exit); the exit dial treats it the same way."""
    from hadskip.evaluation.exit_dial import exit_leaves
    from hadskip.runtime.exits import route_exits

    with Runtime.load(env["m-ee"]) as rt:
        be = rt.backend

        class Faulty:  # the real backend, with exit head 0 broken for rows 0 and 1 of the batch
            name, num_layers = be.name, be.num_layers

            def __getattr__(self, attr):
                return getattr(be, attr)

            def run_exit(self, i, h, mask):
                z = be.run_exit(i, h, mask)
                if i == 0:
                    z[0], z[1] = np.nan, [np.inf, 0.0]
                return z

        ids, mask, tt = rt.encoder.pad_batch(rt.encode(["a good movie", "bad", "fun", "dull plot"]), [0, 1, 2, 3])
        res = route_exits(Faulty(), ids, mask, tt, threshold=10.0)  # above any entropy: every sane row exits
        assert res.layers_used.tolist() == [2, 2, 1, 1] and np.isfinite(res.logits).all()
    probs = np.full((3, 3, 2), 0.5, dtype=np.float32)
    probs[0, 0] = np.nan
    probs[1, :2] = np.nan
    layers, _ = exit_leaves(probs).at(10.0, 3)
    assert layers.tolist() == [2, 3, 1]


def test_early_exit_budgets_outside_the_dial_and_options_of_other_routes_are_refused(env, capsys):
    from hadskip.cli.main import main
    from hadskip.runtime.serve.launcher import serve
    from hadskip.runtime.serve import ServeConfig

    with pytest.raises(DialError, match=r"budget 0.5 is outside the calibrated range 1.00..3.00"):
        Runtime.load(env["m-ee"], budget=0.5)
    with pytest.raises(DialError, match="outside the calibrated range"):
        serve(env["m-ee"], ServeConfig(budget=3.5))
    with Runtime.load(env["m-ee"], budget=2) as rt:
        ids, mask, tt = rt.encoder.pad_batch(rt.encode(["a good movie"]), [0])
        with pytest.raises(HadSkipError, match="early-exit model without gates: forced gates and gate offsets"):
            rt.run_batch(ids, mask, tt, gate_offset=0.5)
        with pytest.raises(HadSkipError, match="a row runs at least 1 layer"):
            rt.predict(["a good movie"], max_layers=0)
        assert rt.predict(["a good movie"], max_layers=1).num_layers.tolist() == [1]  # the cap exits at layer 1
        assert rt.predict([]).probabilities.shape == (0, 2)  # empty inputs
        empty = rt.run_batch(ids[:0], mask[:0], tt[:0])
        assert empty.logits.shape == (0, 2) and empty.gates.shape == (0, L)
    src = env["root"] / "in2.txt"
    src.write_text("a good movie\n")
    assert main(["predict", str(env["m-ee"]), "-i", str(src), "--budget", "4", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "outside the calibrated range" in err
    with pytest.raises(HadSkipError, match="cannot run exit heads"):
        Runtime.load(env["ee"], backend="torch")  # the torch backend has no exit heads: one line, not wrong answers


def test_a_gated_model_refuses_exit_options(model_dir):
    with Runtime.load(model_dir) as rt:
        ids, mask, tt = rt.encoder.pad_batch(rt.encode(["a good movie"]), [0])
        with pytest.raises(HadSkipError, match="exit_threshold is for early-exit models; .* is a gated model"):
            rt.run_batch(ids, mask, tt, exit_threshold=0.5)


def test_an_early_exit_model_is_served_predicted_evaluated_benched_and_piped(env, tmp_path):
    from hadskip.cli.main import main
    from hadskip.runtime.bench import run_bench
    from hadskip.runtime.serve import ServeConfig, create_app
    from test_server import Served

    texts = _split(env)[:10]
    with Runtime.load(env["m-ee"]) as rt:
        want = rt.predict(texts, budget=1.5)
        assert len(set(want.num_layers.tolist())) >= 2
        with Served(create_app(ServeConfig(), lambda: rt, model_name="ee")) as srv:
            r = srv.client.post("/predict", json={"inputs": texts, "budget": 1.5})
            assert r.status_code == 200, r.text
            assert [g["layers"] for g in r.json()["predictions"]] == want.layers  # the layers each row ran
            assert srv.client.post("/predict", json={"inputs": texts, "budget": 9}).status_code == 422
            info = srv.client.get("/info").json()
            assert info["route"]["kind"] == "early-exit" and info["dial"]["range"] == [1.0, 3.0]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n")
    assert main(["predict", str(env["m-ee"]), "-i", str(src), "-o", str(tmp_path / "out.jsonl"), "--budget", "1.5",
                 "--quiet"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["layers"] for x in lines] == want.layers
    with hadskip.pipeline(env["m-ee"], budget=1.5) as pipe:
        assert [a["label"] for a in pipe(texts)] == want.labels
    report = run_bench(env["m-ee"], batches=(2,), seqs=(8,), repeats=1, warmup=0, budget=1.5)
    assert {r.engine for r in report.rows} == {"full", "hadskip"}
    assert next(r for r in report.rows if r.engine == "full").avg_layers == L
    from hadskip.evaluation.report import evaluate_path

    ev = evaluate_path(str(env["m-ee"]), split="dev", budget=2.0, task=str(env["task"]))
    assert ev["avg_layers"] == pytest.approx(Runtime.load(env["m-ee"]).info.dial.points[2].avg_layers)


def test_the_device_backend_runs_the_exit_loop_like_ort_cpu(env):
    """ort-cuda's code path (PointerBackend over IOBinding) on host memory: exit heads, and a sub-batch gathered
    from a sub-batch lands in the other buffer, never onto itself."""
    from hadskip.runtime.backends import register_backend
    from hadskip.runtime.backends.builtin import read_model_dir
    from hadskip.runtime.backends.device import PointerBackend
    from hadskip.runtime.backends.ort import OrtDeviceBackend

    def opener(path, options):
        manifest, info = read_model_dir(path, options, "ort-cuda")
        return OrtDeviceBackend(path, manifest, device="cpu"), info

    register_backend("ship-device-cpu", opener)
    texts = _split(env)
    for name in ("m-ee", "m-be2"):
        with Runtime.load(env[name], backend="ship-device-cpu") as dev, Runtime.load(env[name]) as cpu:
            for b in ([1.5, 2.0] if name == "m-ee" else [None]):
                a, c = dev.predict(texts, budget=b, batch_size=6), cpu.predict(texts, budget=b, batch_size=6)
                assert np.array_equal(a.gates, c.gates) and np.abs(a.logits - c.logits).max() < 1e-5
            be = dev.backend
            assert isinstance(be, PointerBackend)
            h = be.run_embeddings(*dev.encoder.pad_batch(dev.encode(texts[:4]), [0, 1, 2, 3]))
            sub = be.gather(h, np.array([0, 2, 3]), h.shape[1])
            assert sub.slot == "sub_in" and be.gather(sub, np.array([1, 2]), h.shape[1]).slot == "sub_out"


@pytest.mark.parametrize("graphs", ["off", "on"])
def test_the_trt_backend_runs_the_exit_loop(tmp_path, monkeypatch, graphs):
    """The trt backend (TensorRT stood in by tests/trt_standin.py, on host memory, CUDA graphs recorded and
    replayed) on a 4-layer early-exit model: the same exits and logits as the stand-in units on numpy."""
    import trt_standin as st
    from test_trt_api import NumpyBackend

    from hadskip.runtime.backends.trt import TrtBackend
    from hadskip.runtime.exits import route_exits

    n = 4
    rels = {"embeddings": "engines/embeddings.plan", "head": "engines/head.plan",
            "layers": [f"engines/layers/{i:02d}.plan" for i in range(n)], "gates": [],
            "exits": [f"engines/exits/{i:02d}.plan" for i in range(n - 1)]}
    blobs = {rels["embeddings"]: "embeddings:0", rels["head"]: "head:0",
             **{p: f"layer:{i}" for i, p in enumerate(rels["layers"])},
             **{p: f"exit:{i}" for i, p in enumerate(rels["exits"])}}
    for rel, blob in blobs.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(blob)
    manifest = types.SimpleNamespace(units={"engines": rels}, num_layers=n, backbone={"hidden_size": st.HIDDEN},
                                     labels=["neg", "pos"], max_seq_len=16)

    class Reference(NumpyBackend):
        num_layers = n

        def run_exit(self, i, h, mask):
            return st.unit("exit", i, {"hidden": h}).astype(np.float32)

    memory = st.GraphMemory()
    monkeypatch.setattr(st.Context, "memory", memory)
    be = TrtBackend(tmp_path, manifest, max_batch=2, cuda_graphs=graphs, trt=st.make_trt(11, []), memory=memory)
    rng = np.random.default_rng(0)
    seen = set()
    for threshold in (0.3, 0.45, 0.55, 0.62):
        lengths = rng.integers(1, 10, size=8)
        mask = (np.arange(9)[None, :] < lengths[:, None]).astype(np.int64)
        ids = rng.integers(5, 90, size=(8, 9)) * mask
        ref = route_exits(Reference(), ids, mask, None, threshold)
        got = route_exits(be, ids, mask, None, threshold)
        np.testing.assert_array_equal(got.gates, ref.gates)
        np.testing.assert_allclose(got.logits, ref.logits, rtol=1e-6)
        seen.update(ref.layers_used.tolist())
    be.close()
    assert len(seen) >= 3  # rows left at several layers, sub-batches gathered from sub-batches


# ------------------------------------------------------------------------------------------ Triton's model.py

@pytest.mark.parametrize("name, budget", [("m-be2", None), ("m-ee", 1.5)])
def test_triton_repo_serves_both_routes(env, tmp_path, monkeypatch, name, budget):
    """`hadskip triton-repo` on a static and an early-exit model dir; the repository's model.py (under a faked
    Triton stub) answers what Runtime.predict answers, LAYERS included."""
    from hadskip.triton.repo import TritonRepoConfig, write_repo

    from test_runtime_support import fake_triton

    fake_triton(monkeypatch)
    target = write_repo(env[name], tmp_path / "repo", TritonRepoConfig(max_batch=8))
    sys.path.insert(0, str(target / "1"))
    monkeypatch.delitem(sys.modules, "model", raising=False)
    try:
        import model as repo_model  # the copy the repository serves
    finally:
        sys.path.remove(str(target / "1"))
    config = {"max_batch_size": 8, "parameters": {"HADSKIP_MODEL_DIR": {"string_value": "model"}}}
    m = repo_model.TritonPythonModel()
    m.initialize({"model_config": json.dumps(config), "model_repository": str(target), "model_version": "1"})
    texts = _split(env)[:6]
    request = {"TEXT": np.array([[t.encode()] for t in texts], dtype=object)}
    if budget is not None:
        request["BUDGET"] = np.full((len(texts), 1), budget, dtype=np.float32)
    out = m.execute([request, {"TEXT": np.array([[b"fun"]], dtype=object), "BUDGET": np.array([[7.0]])}])
    m.finalize()
    with Runtime.load(env[name]) as rt:
        want = rt.predict(texts, budget=budget)
    assert out[0].error is None
    assert np.array_equal(out[0].outputs["LAYERS"], want.gates.astype(np.int8))
    if budget is None:  # the static model: every row ran its K layers
        assert (out[0].outputs["LAYERS"] == 1).all()
    assert np.array_equal(out[0].outputs["PROBS"], want.probabilities)
    assert out[1].error is not None and out[1].error.code == "INVALID_ARG"  # a budget the model cannot serve


# ------------------------------------------------------------------------------------------ the manifest

def test_the_manifest_refuses_a_route_its_units_do_not_fit(env, tmp_path):
    import shutil

    cases = [
        ("m-be2", lambda d: d["units"].update(gates=["layers/00.onnx", "layers/01.onnx"]), "2 gates and 0 exits"),
        ("m-ee", lambda d: d["units"].update(exits=["exits/00.onnx"]), "0 gates and 1 exits for a 3-layer"),
        ("m-ee", lambda d: d["route"].update(kind="cascade"), "route.kind must be one of"),
        ("m-ee", lambda d: d["route"].update(rule="patience"), "route.rule must be one of entropy"),
        ("m-be2", lambda d: d["route"].update(teacher_layers=1), "teacher_layers must be a whole number >= "),
        ("m-ee", lambda d: d.update(route=None), "0 gates and 2 exits for a 3-layer gated model"),
    ]
    for name, change, message in cases:
        d = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(env[name], d)
        data = json.loads((d / "manifest.json").read_text())
        change(data)
        (d / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(ManifestError, match=message):
            load_manifest(d)


def _parity_module():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("parity", Path(__file__).parents[1] / "bench" / "parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_parity_checks_the_static_and_early_exit_routes(env, capsys):
    """bench/parity.py is how the winner's parity on a real test split is measured: it must follow the model dir's
    route (a static model never routes by the gates its run carries, scrambled in be2; an early-exit model's
    decisions are its exit layers, at every dial setting), and fail when the model dir is not the run's."""
    parity = _parity_module()
    r = parity.parity(str(env["be2"]), str(env["m-be2"]), "test", 8)
    assert r["ok"] and r["route"] == "static" and r["decision_disagreements"] == 0
    assert r["settings"][0]["avg_layers"] == 2.0 and r["max_abs_logit_diff"] < 1e-4
    r = parity.parity(str(env["ee"]), str(env["m-ee"]), "test", 8, all_settings=True)
    assert r["ok"] and r["route"] == "early-exit" and len(r["settings"]) == 1 + 5
    assert all(s["decision_disagreements"] == 0 and s["label_disagreements"] == 0 for s in r["settings"])
    assert len({s["avg_layers"] for s in r["settings"]}) >= 3  # the dial's settings exit at different depths
    assert parity.main([str(env["be3"]), str(env["m-be2"]), "--batch-size", "8"]) == 1  # another run's model dir
    assert "PARITY MISMATCH" in capsys.readouterr().err


def test_bench_parity_catches_an_early_exit_far_from_the_tie(env, monkeypatch):
    """An early-exit row's layers are decided by the exit BEFORE them: when the runtime stops a row after layer 1
    and PyTorch goes on, the decision that differs is exit 1's, not exit 2's. A runtime whose first exit head is
    broken for one row (it exits there, PyTorch's entropy far above the threshold) must fail parity, even at a
    threshold that sits on that row's exit-2 entropy (where looking at the wrong exit would call it a tie)."""
    from hadskip import runtime as rt_module
    from hadskip.evaluation.baselines import rules

    parity = _parity_module()
    texts = _split(env)
    ent = rules.entropy(torch.from_numpy(_torch_exits(env, texts, "ee1")).softmax(-1).numpy())  # (N, L)
    r = int(np.argmax(ent[:, 0] - ent[:, 1]))
    assert ent[r, 0] - ent[r, 1] > 4e-4  # PyTorch: row r does not exit after layer 1, it exits after layer 2
    knob = float(ent[r, 1]) + 2e-5  # within the fp32 tie margin (1e-4) of row r's exit-2 entropy
    monkeypatch.setattr(parity, "_knobs", lambda rt, route, all_settings: [("probe", knob)])
    original = rt_module.Runtime.load

    def load_broken(*args, **kwargs):
        rt = original(*args, **kwargs)
        be, target = rt.backend, rt.encode([texts[r]]).ids[0]

        class Broken:  # the real backend; exit head 0 answers with certainty for row r only
            name, num_layers = be.name, be.num_layers

            def __getattr__(self, attr):
                return getattr(be, attr)

            def run_embeddings(self, ids, mask, tt):
                n = len(target)
                self.hit = (mask.sum(1) == n) & (ids[:, :n] == target).all(1) if ids.shape[1] >= n else \
                    np.zeros(len(ids), dtype=bool)
                return be.run_embeddings(ids, mask, tt)

            def run_exit(self, i, h, mask):
                z = be.run_exit(i, h, mask)
                if i == 0:
                    z[self.hit] = [50.0, -50.0]
                return z

        rt.backend = Broken()
        return rt

    monkeypatch.setattr(rt_module.Runtime, "load", load_broken)
    res = parity.parity(str(env["ee1"]), str(env["m-ee1"]), "test", 8)
    s = res["settings"][0]
    assert s["decision_disagreements"] >= 1 and s["decision_disagreements_outside_tie"] >= 1
    assert not res["ok"]


@pytest.mark.parametrize("name", ["ee", "ee1"])
def test_exit_heads_read_what_their_run_says_and_export_so(env, name):
    """Exit heads on the mean of the tokens (the default since first-token exits stayed at the majority class after
    MiniLM's early layers) and on the first token (runs made before): each run loads with its own heads, and its
    export matches PyTorch at exit 1 and at the head on a batch of mixed lengths, where the poolings differ."""
    from hadskip.evaluation.baselines import load_exit_model
    from hadskip.modeling.units import MeanPooledHead

    model, tok, info = load_exit_model(env[name], device="cpu")
    assert info.extra["exit_pool"] == ("mean" if name == "ee" else "first")
    assert all(isinstance(h, MeanPooledHead) == (name == "ee") for h in model.exits)
    ids, mask, tt = _batch(tok, _split(env)[:9])
    assert len(set(mask.sum(1).tolist())) > 1
    with torch.no_grad():
        ref = model(ids, mask, tt)[0].numpy()  # (B, L, C)
    with Runtime.load(env[f"m-{name}"]) as rt:
        first = rt.run_batch(ids.numpy(), mask.numpy(), tt.numpy(), exit_threshold=1e9)  # every row exits at 1
        full = rt.run_batch(ids.numpy(), mask.numpy(), tt.numpy(), exit_threshold=0.0)  # none exits
    assert (first.gates.sum(1) == 1).all() and np.abs(first.logits - ref[:, 0]).max() < 1e-4
    assert (full.gates.sum(1) == L).all() and np.abs(full.logits - ref[:, -1]).max() < 1e-4
