"""The budget dial: the offset sweep against routed evaluation, calibration hitting its targets on a tiny trained
model, monotonicity handling, the curve through export into the manifest, PyTorch/runtime parity at every dial
setting, one-line errors for bad budgets, and the CLI flags (hadskip dial, eval/predict/bench --budget)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_runtime_support import export_dir
from typer.testing import CliRunner

from hadskip.modeling.checkpoint import load_run, read_info, write_info
from hadskip.cli.main import app, main
from hadskip.evaluation.dial import TOLERANCE, Leaves, Steps, build_dial, calibrate, sweep
from hadskip.errors import HadSkipError
from hadskip.runtime import Runtime
from hadskip.runtime.dial import Dial, DialError, read_dial
from hadskip.runtime.manifest import ManifestError, load_manifest
from hadskip.testing import tiny_backbone_dir, tiny_run, tiny_sentences, tiny_task_dir


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny HadSkip run trained at budget 1.5 of 3 layers on a folder task (dev: 200 rows), its dial,
    and its export; plus a random tiny RoBERTa run on the same task, calibrated and exported."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from hadskip.training.config import HadSkipConfig
    from hadskip.training.stages import train_hadskip

    root = tmp_path_factory.mktemp("dial")
    task = tiny_task_dir(root / "task", n_train=64, n_eval=200)
    backbone = tiny_backbone_dir(root / "backbone")
    run = root / "h"
    train_hadskip(HadSkipConfig(backbone=str(backbone), task=str(task), out=str(run), budget=1.5, max_len=32,
                                batch_size=16, epochs=1, stage2_epochs=1, phase_epochs=0.5, final_phase_epochs=1,
                                lr=1e-3, gate_lr=0.01, progress=False))
    dial = calibrate(run, progress=False)
    roberta = tiny_run(root / "roberta", "roberta", seed=1)
    info = read_info(roberta)
    info.task["source"] = {"task": str(task)}
    write_info(roberta, info)
    calibrate(roberta, [0.5, 1, 1.5, 2, 2.5], progress=False)
    yield {"root": root, "task": task, "run": run, "dial": dial, "model": export_dir(run, root / "model"),
           "roberta": roberta, "roberta_model": export_dir(roberta, root / "roberta-model")}
    torch.set_num_threads(threads)


def _dev(run: Path):
    from hadskip.data.batches import encode_split
    from hadskip.modeling.checkpoint import load_run_task

    model, tok, info = load_run(run)
    data = load_run_task(info.task)
    return model, encode_split(data.split("dev"), tok, info.max_len), tok.pad_token_id, data.spec


def _routed(model, enc, pad, offset):
    from hadskip.evaluation.evaluate import predict

    logits, used, labels = predict(model, enc, pad, batch_size=16, gates="route", gate_offset=offset)
    return used.sum(axis=1).astype(int), logits.argmax(axis=1)


# --- the sweep and the calibration -----------------------------------------------------------------------

@pytest.mark.parametrize("nan_gate", [False, True])
def test_the_sweep_is_routed_evaluation_at_every_offset(env, nan_gate):
    """The leaves of one sweep give, at any offset, the layers and predictions of a routed pass at that offset
    (also with a gate whose margin is NaN: closed at every offset)."""
    model, enc, pad, _ = _dev(env["run"])
    if nan_gate:
        with torch.no_grad():
            model.gates[1].fc2.bias.fill_(float("nan"))
    leaves = sweep(model, enc, pad, batch_size=16)
    n = len(enc)
    assert len(leaves) > n and set(leaves.row) == set(range(n))
    bounds = np.unique(np.concatenate([leaves.lo, leaves.hi]))
    bounds = bounds[np.isfinite(bounds)]
    offsets = [-50.0, 50.0, *((bounds[:-1] + bounds[1:]) / 2)[:: max(1, len(bounds) // 12)]]
    seen = set()
    for offset in offsets:
        layers, pred = leaves.at(offset, n)
        got_layers, got_pred = _routed(model, enc, pad, offset)
        np.testing.assert_array_equal(layers, got_layers, err_msg=f"offset {offset}")
        np.testing.assert_array_equal(pred, got_pred, err_msg=f"offset {offset}")
        seen.add(layers.sum())
    assert len(seen) >= 6  # the offsets really move the average
    if nan_gate:
        assert layers.max() <= 2 and _routed(model, enc, pad, -50.0)[0].max() == 2


def test_calibration_hits_its_targets_on_a_trained_model(env):
    """Every point: a routed dev pass at its offset uses the recorded average layers (within TOLERANCE of the
    target) and scores the recorded metric; the curve's knots are checked the same way."""
    from hadskip.data.metrics import compute_metric

    dial, run = env["dial"], env["run"]
    assert [p.target for p in dial.points] == [1.0, 1.5, 2.0, 2.5, 3.0]  # 1..L by 0.5, the trained 1.5 among them
    assert read_dial(run, run / "model.safetensors") == dial
    model, enc, pad, spec = _dev(run)
    for p in dial.points + dial.curve[::7]:
        layers, pred = _routed(model, enc, pad, p.offset)
        assert layers.mean() == pytest.approx(p.avg_layers, abs=1e-12), p
        assert p.value == pytest.approx(compute_metric(spec.metric, pred, enc.labels, spec.num_labels), abs=1e-12)
    for p in dial.points:
        assert abs(p.avg_layers - p.target) <= TOLERANCE + 1e-9, p
        assert dial.offset_for(p.target) == p.offset  # a calibrated target gets exactly its point's offset
    offsets = [p.offset for p in dial.points]
    assert offsets == sorted(offsets, reverse=True) and len(set(offsets)) == len(offsets)
    assert dial.budget_range == (1.0, 3.0) and len(dial.curve) == 41  # 1, 1.05, ..., 3


def _hand_leaves() -> Leaves:
    """Two rows whose average layers RISES with the offset on [1.5, 2):
         row 0: (-inf, 0) 3 layers, [0, 2) 1, [2, inf) 0       row 1: (-inf, 1.5) 2, [1.5, 2.2) 3, [2.2, inf) 0
       segments: (-inf,0) 2.5 | [0,1.5) 1.5 | [1.5,2) 2.0 | [2,2.2) 1.5 | [2.2,inf) 0"""
    inf = np.inf
    return Leaves(row=[0, 0, 0, 1, 1, 1], lo=[-inf, 0, 2, -inf, 1.5, 2.2], hi=[0, 2, inf, 1.5, 2.2, inf],
                  layers=[3, 1, 0, 2, 3, 0], pred=[1, 0, 0, 1, 1, 0])


def test_a_non_monotone_curve_is_measured_and_served_monotone():
    leaves = _hand_leaves()
    steps = Steps(leaves, 2)
    np.testing.assert_allclose(steps.avg, [2.5, 1.5, 2.0, 1.5, 0.0])
    assert steps.max_rise() == pytest.approx(0.5)
    # 1.5 is met on [0, 1.5) (wider) and on [2, 2.2); only the latter keeps offsets decreasing as targets grow
    assert steps.choose([1.5, 2.0, 2.5]) == [3, 2, 0]
    dial = build_dial(leaves, np.array([1, 0]), "accuracy", 2, 3, [1.5, 2.0, 2.5], task="hand")
    assert not dial.monotone and dial.max_rise == pytest.approx(0.5)
    assert [p.offset for p in dial.points] == pytest.approx([2.1, 1.75, -1.0])
    assert [p.value for p in dial.points] == [0.0, 0.0, 0.5]  # predictions [0, 1], [0, 1], [1, 1] vs labels [1, 0]
    assert [p.target for p in dial.curve] == pytest.approx(np.arange(1.5, 2.51, 0.05))
    assert [p.offset for p in dial.curve] == sorted((p.offset for p in dial.curve), reverse=True)
    assert {p.avg_layers for p in dial.curve} == {1.5, 2.0, 2.5}
    assert all(p.offset == pytest.approx(2.1) for p in dial.curve if p.avg_layers == 1.5)  # never [0, 1.5)
    assert Dial.from_dict(json.loads(json.dumps(dial.to_dict()))) == dial  # the strictness checks pass
    assert dial.offset_for(2.0) == 1.75 and dial.offset_for(2.5) == -1.0
    budgets = np.linspace(1.5, 2.5, 101)
    assert np.all(np.diff([dial.offset_for(b) for b in budgets]) <= 0)
    monotone = Leaves(row=[0, 0, 1], lo=[-np.inf, 0.3, -np.inf], hi=[0.3, np.inf, np.inf], layers=[2, 1, 1],
                      pred=[0, 0, 0])
    assert Steps(monotone, 2).max_rise() == 0.0


# --- export, runtime, parity -----------------------------------------------------------------------------

def test_the_curve_round_trips_through_export(env, tmp_path):
    manifest = load_manifest(env["model"])
    assert manifest.dial == env["dial"].to_dict()
    rt = Runtime.load(env["model"])
    assert rt.info.dial == env["dial"] and rt.budget is None and rt.gate_offset == 0.0
    s = _dev_split(env)
    for p in env["dial"].points:  # the runtime, on dev, at each calibrated budget
        assert Runtime.load(env["model"], budget=p.target).predict(s).avg_layers == pytest.approx(p.avg_layers,
                                                                                                 abs=0.011)
    # a model dir exported before the dial (no "dial" key) still loads, and says how to get one
    old = tmp_path / "old"
    shutil.copytree(env["model"], old)
    data = json.loads((old / "manifest.json").read_text())
    del data["dial"]
    (old / "manifest.json").write_text(json.dumps(data))
    assert Runtime.load(old).info.dial is None
    with pytest.raises(DialError, match=r"has no budget dial: run `hadskip dial RUN`"):
        Runtime.load(old, budget=2)


def _dev_split(env) -> list:
    from hadskip.data import load_task

    return list(load_task(str(env["task"])).split("dev").texts)


@pytest.mark.parametrize("which", ["model", "roberta_model"])
def test_pytorch_and_runtime_agree_at_every_dial_setting(env, which):
    """At every calibrated budget and between them: identical gates away from ties, logits within 1e-4,
    and predict(budget=) routes exactly as run_batch at the dial's offset."""
    run = env["run" if which == "model" else "roberta"]
    model, _, _ = load_run(run)
    rt = Runtime.load(env[which])
    texts = tiny_sentences(48, seed=7, max_words=24)
    enc = rt.encode(texts)
    ids, mask, tt = rt.encoder.pad_batch(enc, list(range(len(texts))))
    budgets = sorted({p.target for p in rt.info.dial.points} | {1.25, 1.75, 2.25})
    patterns, checked = set(), 0
    for b in budgets:
        offset = rt.offset_for(b)
        with torch.no_grad():
            ref = model(*(torch.from_numpy(a) for a in (ids, mask, tt)), gates="route", gate_offset=offset)
        got = rt.run_batch(ids, mask, tt, gate_offset=offset)
        margins = (ref.gate_logits[..., 1].double() - ref.gate_logits[..., 0].double()).numpy()  # (B, L)
        clear = np.abs(margins - offset).min(axis=1) > 1e-3  # rows with no margin within float noise of a tie
        assert clear.mean() > 0.8
        np.testing.assert_array_equal(got.gates[clear], ref.gates.numpy().astype(bool)[clear], err_msg=f"budget {b}")
        np.testing.assert_allclose(got.logits[clear], ref.logits.numpy()[clear], atol=1e-4, rtol=0)
        preds = rt.predict(texts, budget=b)
        np.testing.assert_array_equal(preds.gates, got.gates)
        patterns.add(got.gates.tobytes())
        checked += int(clear.sum())
    assert len(patterns) >= 4 and checked >= 200


def test_load_time_budget_is_the_default_and_predict_overrides_it(env):
    texts = tiny_sentences(40, seed=3)
    rt = Runtime.load(env["model"], budget=1.5)
    assert rt.budget == 1.5 and rt.gate_offset == rt.offset_for(1.5) != 0.0
    at_15, at_3 = rt.predict(texts), rt.predict(texts, budget=3)
    np.testing.assert_array_equal(at_15.gates, Runtime.load(env["model"]).predict(texts, budget=1.5).gates)
    assert at_3.avg_layers > at_15.avg_layers and rt.predict(texts).avg_layers == at_15.avg_layers
    b = rt.encoder.pad_batch(rt.encode(texts), list(range(len(texts))))
    np.testing.assert_array_equal(rt.run_batch(*b).gates, rt.run_batch(*b, gate_offset=rt.gate_offset).gates)


# --- errors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("budget, pattern", [
    (99, r"budget 99 is outside the calibrated range 1\.\d\d\.\.3\.00 layers of .*model"),
    (-1, r"budget -1 is outside the calibrated range"),
    (0.9, r"budget 0\.9 is outside"),
    (float("nan"), r"budget must be a finite number"),
    (float("inf"), r"budget must be a finite number"),
    ("abc", r"budget must be a number"),
    (True, r"budget must be a finite number"),
    ({"layers": 2}, r"budget must be a number"),
])
def test_bad_budgets_are_one_line_errors(env, budget, pattern):
    for call in (lambda: Runtime.load(env["model"], budget=budget),
                 lambda: Runtime.load(env["model"]).predict(["a fine movie"], budget=budget)):
        with pytest.raises(DialError, match=pattern) as info:
            call()
        assert "\n" not in str(info.value)
    assert Runtime.load(env["model"], budget=3.005).gate_offset == Runtime.load(env["model"], budget=3).gate_offset


def _edit_manifest(env, tmp_path, edit) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(env["model"], dst)
    data = json.loads((dst / "manifest.json").read_text())
    edit(data)
    (dst / "manifest.json").write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize("edit, pattern", [
    (lambda d: d.update(dial=[1, 2]), r"dial must be an object or null"),
    (lambda d: d["dial"].update(format=2), r"dial has format 2; this hadskip reads 1"),
    (lambda d: d["dial"]["curve"].reverse(), r"dial\.curve must have targets strictly increasing"),
    (lambda d: d["dial"]["curve"][0].update(offset=float("nan")), r"dial\.curve\[0\]\.offset must be a finite"),
    (lambda d: d["dial"]["curve"][0].update(offset="x"), r"dial\.curve\[0\]\.offset must be a finite"),
    (lambda d: d["dial"].update(curve=[]), r"dial\.curve is empty"),
    (lambda d: d["dial"].update(num_layers=12), r"dial is for 12 layers, the model has 3"),
    (lambda d: d["dial"]["points"][0].update(avg_layers=9), r"avg_layers 9 is outside 0\.\.3"),
    (lambda d: d["dial"].update(surprise=1), r"unknown fields \['surprise'\]"),
])
def test_a_broken_dial_in_the_manifest_is_refused_naming_it(env, tmp_path, edit, pattern):
    with pytest.raises(ManifestError, match=pattern) as info:
        Runtime.load(_edit_manifest(env, tmp_path, edit))
    assert "\n" not in str(info.value) and "manifest.json" in str(info.value)


def test_a_dial_of_other_weights_is_refused_when_used(env, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(env["run"], run, ignore=shutil.ignore_patterns("stages"))
    model, tok, info = load_run(run)
    with torch.no_grad():
        model.gates[0].fc2.bias.add_(1.0)
    from hadskip.modeling.checkpoint import save_run

    save_run(run, model, tok, info)  # trained again: dial.json stays behind, stale
    rt = Runtime.load(run, backend="torch")  # without a budget the stale dial does not matter
    with pytest.raises(DialError, match=r"calibrated on other weights .*run `hadskip dial` again"):
        rt.predict(["fine"], budget=2)
    with pytest.raises(HadSkipError, match=r"calibrated on other weights"):
        from hadskip.export import export_model

        export_model(run, tmp_path / "out", validate=False, progress=False)
    assert not (tmp_path / "out").exists()
    calibrate(run, [1, 2], progress=False)
    assert Runtime.load(run, backend="torch", budget=2).gate_offset == read_dial(run).offset_for(2)


def test_calibration_refuses_what_it_cannot_calibrate(env, tmp_path):
    with pytest.raises(HadSkipError, match=r"target 3\.5 is outside 0\.\.3"):
        calibrate(env["run"], [1, 3.5], write=False, progress=False)
    with pytest.raises(HadSkipError, match=r"no targets"):
        calibrate(env["run"], [], write=False, progress=False)
    ft = tmp_path / "ft"
    shutil.copytree(env["run"], ft, ignore=shutil.ignore_patterns("stages", "dial.json"))
    info = read_info(ft)
    info.kind, info.budget = "finetune", None
    write_info(ft, info)
    with pytest.raises(HadSkipError, match=r"finetune run without trained gates"):
        calibrate(ft, progress=False)
    with pytest.raises(HadSkipError, match=r"finetune run without gates"):
        from hadskip.evaluation.report import evaluate_path

        evaluate_path(str(ft), budget=2, plots_dir=None)


# --- CLI -----------------------------------------------------------------------------------------------------

def test_cli_dial_then_budget_flags(env, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(env["run"], run, ignore=shutil.ignore_patterns("stages", "dial.json"))
    res = CliRunner().invoke(app, ["dial", str(run), "--targets", "1.5,2.5,2", "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [p["target"] for p in out["points"]] == [1.5, 2.0, 2.5] and out["path"] == str(run / "dial.json")
    assert Dial.from_dict({k: v for k, v in out.items() if k != "path"}) == read_dial(run)
    res = CliRunner().invoke(app, ["eval", str(run), "--split", "dev", "--budget", "2", "--json", "--no-plots"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    point = read_dial(run).points[1]
    assert rep["target_budget"] == 2.0 and rep["gate_offset"] == point.offset
    assert rep["avg_layers"] == pytest.approx(point.avg_layers) and rep["value"] == pytest.approx(point.value)
    model = export_dir(run, tmp_path / "model")
    res = CliRunner().invoke(app, ["eval", str(model), "--split", "dev", "--budget", "2", "--json", "--no-plots",
                                   "--task", str(env["task"])])  # a model dir records a folder task by name only
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["avg_layers"] == pytest.approx(point.avg_layers, abs=0.011)
    txt = tmp_path / "in.txt"
    txt.write_text("\n".join(tiny_sentences(30, seed=9)) + "\n")
    layers = {}
    for b in ("1.5", "2.5"):
        res = CliRunner().invoke(app, ["predict", str(model), "-i", str(txt), "--budget", b])
        assert res.exit_code == 0, res.output
        rows = [json.loads(line) for line in res.stdout.splitlines()]
        want = Runtime.load(model, budget=float(b)).predict(tiny_sentences(30, seed=9))
        assert [r["layers"] for r in rows] == want.layers
        layers[b] = np.mean([r["num_layers"] for r in rows])
        assert f"(budget {b})" in res.stderr
    assert layers["2.5"] > layers["1.5"]
    res = CliRunner().invoke(app, ["bench", str(model), "--budget", "2.5", "--batch", "2", "--seq", "8",
                                   "--repeats", "1", "--warmup", "0", "--k", "1", "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    row = next(r for r in json.loads(res.stdout)["rows"] if r["engine"] == "hadskip")
    assert row["k"] == 2.5


@pytest.mark.parametrize("args, pattern", [
    (lambda e: ["dial", str(e["run"]), "--targets", "1,x"], r"--targets takes numbers"),
    (lambda e: ["dial", str(e["run"]), "--targets", ","], r"--targets is empty"),
    (lambda e: ["dial", str(e["run"]), "--targets", "4"], r"target 4\.0 is outside 0\.\.3"),
    (lambda e: ["dial", str(e["root"] / "nope")], r"not a hadskip run dir"),
    (lambda e: ["dial", str(e["run"]), "--batch-size", "0"], r"batch-size"),
    (lambda e: ["eval", str(e["model"]), "--budget", "7", "--no-plots"], r"budget 7 is outside the calibrated"),
    (lambda e: ["eval", str(e["run"]), "--budget", "0", "--no-plots"], r"budget 0 is outside the calibrated"),
    (lambda e: ["eval", str(e["model"]), "--budget", "two"], r"--budget"),
    (lambda e: ["predict", str(e["model"]), "-i", "-", "--budget", "nan"], r"budget must be a finite number"),
    (lambda e: ["bench", str(e["model"]), "--budget", "-3"], r"budget -3 is outside the calibrated"),
])
def test_cli_bad_budget_input_is_one_error_line(env, args, pattern, capsys):
    import re

    rc = main(args(env))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


# --- serve-local: --budget and a per-request "budget" -----------------------------------------------------------

def test_one_call_serves_rows_at_different_budgets(env):
    """Per-row offsets: one predict call with a budget per input routes each row as a call at its own budget."""
    rt = Runtime.load(env["model"], budget=2)
    texts = tiny_sentences(30, seed=11)
    budgets = [1.0, 3.0, None, 1.5, 2.5] * 6
    mixed = rt.predict(texts, batch_size=7, budget=budgets)
    for b in set(budgets):
        rows = [i for i, x in enumerate(budgets) if x == b]
        alone = rt.predict([texts[i] for i in rows], budget=b)
        np.testing.assert_array_equal(mixed.gates[rows], alone.gates, err_msg=f"budget {b}")
        np.testing.assert_allclose(mixed.probabilities[rows], alone.probabilities, atol=1e-5)
    with pytest.raises(HadSkipError, match=r"2 budgets for 30 inputs"):
        rt.predict(texts, budget=[1, 2])
    with pytest.raises(DialError, match=r"budget 9 is outside"):
        rt.predict(texts, budget=[9] * 30)


def test_serve_local_budget_and_per_request_budget(env):
    import asyncio

    pytest.importorskip("uvicorn")
    from test_server import Served

    from hadskip.runtime.serve import ServeConfig, create_app
    from hadskip.runtime.serve.batcher import Batcher
    from hadskip.runtime.serve.metrics import Metrics

    texts = tiny_sentences(6, seed=5)
    rt = Runtime.load(env["model"], budget=1.5)
    want = {b: Runtime.load(env["model"]).predict(texts, budget=b) for b in (1.5, 3)}
    with Served(create_app(ServeConfig(budget=1.5, graceful_timeout_s=5), lambda: rt)) as srv:
        info = srv.client.get("/info").json()
        assert info["serving_budget"] == 1.5 and info["dial"]["range"] == list(rt.info.dial.budget_range)
        for body, b in (({"inputs": texts}, 1.5), ({"inputs": texts, "budget": 3}, 3), ({"inputs": texts,
                                                                                           "budget": None}, 1.5)):
            r = srv.client.post("/predict", json=body)
            assert r.status_code == 200, r.text
            assert [p["layers"] for p in r.json()["predictions"]] == want[b].layers
        for budget, pattern in ((99, r"budget 99 is outside the calibrated range"), ("3", r'"budget" must be a '
                                r"finite number of layers, got string"), (True, r"got boolean"),
                                ([2], r"got array")):
            r = srv.client.post("/predict", json={"inputs": texts, "budget": budget})
            assert r.status_code == 422 and re.search(pattern, r.json()["error"]), r.text
        r = srv.client.post("/predict", content=b'{"inputs": "a", "budget": NaN}',
                            headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "NaN is not a JSON value" in r.json()["error"]
        assert srv.client.post("/predict", json={"inputs": "a", "budgt": 2}).status_code == 422
    # the worker merges requests at different budgets into one runtime call (driven directly: no timing)
    rt = Runtime.load(env["model"], budget=1.5)  # the server closed its own at shutdown
    loop = asyncio.new_event_loop()
    try:
        batcher = Batcher(rt.predict, 32, 0.0, 64, Metrics(32))
        calls = []
        batcher.predict = lambda rows, batch_size, **kw: calls.append(kw) or rt.predict(rows, batch_size, **kw)

        async def two():
            return [batcher.submit(texts[:3], 3.0), batcher.submit(texts[3:], None)]

        futures = loop.run_until_complete(two())
        batcher._run(batcher._next_batch(), retry_alone=False)
        a, b = loop.run_until_complete(asyncio.gather(*futures))
        assert calls == [{"budget": [3.0] * 3 + [None] * 3}] and a.batch_rows == 6
        assert [p["layers"] for p in a.predictions] == want[3].layers[:3]
        assert [p["layers"] for p in b.predictions] == want[1.5].layers[3:]
    finally:
        loop.close()


def test_serve_local_refuses_a_bad_budget_before_serving(env, capsys):
    assert main(["serve-local", str(env["model"]), "--budget", "99", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"error: budget 99 is outside the calibrated range", err[0]), err
    plain = env["root"] / "plain-model"
    if not plain.exists():
        shutil.copytree(env["model"], plain)
        data = json.loads((plain / "manifest.json").read_text())
        data["dial"] = None
        (plain / "manifest.json").write_text(json.dumps(data))
    assert main(["serve-local", str(plain), "--budget", "2", "--port", "0"]) == 2
    assert "has no budget dial" in capsys.readouterr().err


def test_per_row_offsets_are_the_rule_row_by_row():
    from hadskip.runtime.router import gate_open, route

    rng = np.random.default_rng(0)
    z = rng.standard_normal((500, 2)).astype(np.float32)
    offsets = rng.choice([-1.0, -0.1, 0.0, 0.3, 2.0], 500)
    np.testing.assert_array_equal(gate_open(z, offsets), [gate_open(z[i:i + 1], o)[0] for i, o in enumerate(offsets)])
    with pytest.raises(HadSkipError, match=r"gate_offset must be a number or one per row \(2,\)"):
        route(type("NoBackend", (), {"num_layers": 2})(), np.ones((2, 3)), np.ones((2, 3)), gate_offset=np.zeros(3))
