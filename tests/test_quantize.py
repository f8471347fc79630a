"""--quantize int8: int8 layer graphs (and baseline) with fp32 gates, the dev-split check, the runtime and bench on
them; the fp16-on-CPU warning."""

from __future__ import annotations

import json
import logging
import warnings
from collections import Counter

import numpy as np
import onnx
import pytest

from hadskip.checkpoint import read_info, write_info
from hadskip.cli.main import main
from hadskip.errors import HadSkipError
from hadskip.export import ExportError, export_model
from hadskip.export.quantize import Int8Config, QuantizationWarning, _judge, check_request
from hadskip.runtime import Runtime
from hadskip.runtime.bench import run_bench
from hadskip.runtime.core import precision_note
from hadskip.runtime.manifest import load_manifest
from hadskip.testing import tiny_run, tiny_sentences, tiny_task_dir

INT8_OPS = {"MatMulInteger", "QAttention", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}


def ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """(run, fp32 model dir, int8 model dir (gates fused) with an int8 baseline, the int8 ExportReport, caught
    warnings).
    The run's task is a local folder, so the export can check int8 on its dev split."""
    root = tmp_path_factory.mktemp("int8")
    task = tiny_task_dir(root / "task", n_train=8, n_eval=64)
    run = tiny_run(root / "run", "bert")
    info = read_info(run)
    info.task["source"] = {"task": str(task)}
    write_info(run, info)
    fp32 = root / "fp32"
    export_model(run, fp32, progress=False, validate=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export_model(run, root / "int8", quantize="int8", with_baseline=True, optimize=True,
                              fuse_gates=True, max_batch=4, progress=False)
    return run, fp32, root / "int8", report, caught


def test_int8_model_dir_quantizes_the_layers_and_nothing_that_decides(dirs):
    _, _, d, report, _ = dirs
    m = load_manifest(d)  # every sha256, the int8 baseline included
    assert m.precision == "int8" and report.precision == "int8" and m.export["quantize"] == "int8"
    for rel in m.units["layers"]:
        assert INT8_OPS & set(ops(d / rel)), rel
        gate_ops = {n.op_type for n in onnx.load(str(d / rel)).graph.node if n.name.startswith("gate_next_")}
        assert (not gate_ops) == (rel == m.units["layers"][-1])  # every layer but the last carries gates
        assert not INT8_OPS & gate_ops  # the fused gates are the fp32 gate graphs
    for rel in [m.units["embeddings"], m.units["head"], *m.units["gates"]]:
        assert not INT8_OPS & set(ops(d / rel)), rel  # gates and head decide: kept fp32
    assert m.units["baseline"] == "baseline/model_quantized.onnx" and "baseline/model_quantized.onnx" in m.files
    assert INT8_OPS & set(ops(d / m.units["baseline"])) and not (d / "baseline" / "model.onnx").exists()
    q = m.quantization
    assert q["tool"].startswith("onnxruntime.quantization") and set(q["units"]) == {"layer_00", "layer_01",
                                                                                  "layer_02", "baseline"}
    assert q["layer_bytes"]["int8"] < q["layer_bytes"]["fp32"]
    assert all(0 < u["max_abs_diff"] < 0.5 for k, u in q["units"].items() if k != "baseline")
    assert report.quantization == q


def test_export_checks_int8_against_fp32_on_the_dev_split(dirs):
    _, _, d, _, caught = dirs
    dev = load_manifest(d).quantization["dev"]
    assert dev["split"] == "dev" and dev["examples"] == dev["of"] == 64 and dev["metric"] == "accuracy"
    assert dev["gate_rows_changed"] <= 0.1 and 0 < dev["max_abs_dprob"] < 0.1  # > 0: int8 was compared to fp32
    assert abs(dev["delta"]) <= 0.05 and dev["delta"] == pytest.approx(dev["int8"] - dev["fp32"], abs=1e-6)
    assert set(dev["full"]) == {"fp32", "int8"} and abs(dev["full"]["int8"] - dev["full"]["fp32"]) <= 0.05
    said = [str(w.message) for w in caught if issubclass(w.category, QuantizationWarning)]
    assert said == dev["warnings"]  # whatever the check found past its tolerance was said, nothing else


def test_runtime_on_int8_keeps_the_gate_decisions_of_fp32(dirs):
    _, fp32, int8, _, _ = dirs
    texts = tiny_sentences(96, seed=7, max_words=25)
    with Runtime.load(fp32) as a, Runtime.load(int8) as b:
        pa, pb = a.predict(texts, batch_size=16), b.predict(texts, batch_size=16)
    same_rows = (pa.gates == pb.gates).all(axis=1).mean()
    assert same_rows >= 0.9, same_rows
    assert np.abs(pa.probabilities - pb.probabilities).max() < 0.1
    assert 0 < pa.gates.mean() < 1  # the tiny gates do route (agreement is not trivially all-open)


def test_judge_says_a_drop_past_the_tolerance():
    base = {"metric": "accuracy", "split": "dev", "fp32": 0.85, "gate_rows_changed": 0.0,
            "avg_layers": {"fp32": 3.0, "int8": 3.0}}
    config = Int8Config()
    assert _judge({**base, "int8": 0.846, "delta": -0.004}, config) == []
    [w] = _judge({**base, "int8": 0.844, "delta": -0.006}, config)
    assert "0.60 points" in w and "tolerance 0.50" in w
    [w] = _judge({**base, "int8": 0.85, "delta": 0.0, "gate_rows_changed": 0.02}, config)
    assert "2.0% of dev rows" in w


def test_unloadable_task_is_said_not_silent(tmp_path, capsys):
    run = tiny_run(tmp_path / "run", "bert")  # task "tiny": no registry entry, no folder
    assert main(["export", str(run), "--out", str(tmp_path / "m"), "--quantize", "int8", "--no-validate"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(err) == 1 and "int8 not checked on a dev split" in err[0]
    assert load_manifest(tmp_path / "m").quantization["dev"]["split"] is None


@pytest.mark.parametrize("args,needle", [(["--fp16"], "--fp16"), (["--engine", "trt"], "--engine onnx")])
def test_int8_refuses_what_makes_no_model(tmp_path, capsys, args, needle):
    run = tmp_path / "run"  # refused before the run is even read
    assert main(["export", str(run), "--out", str(tmp_path / "m"), "--quantize", "int8", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
    assert not (tmp_path / "m").exists()


def test_check_request_and_cli_choices(tmp_path):
    check_request(None, fp16=True, engine="trt")
    with pytest.raises(ExportError, match="int8"):
        check_request("int4", fp16=False, engine="onnx")
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "m"), "--quantize", "int4"]) == 2


def test_fp16_on_a_cpu_backend_warns_once(tmp_path, caplog):
    run = tiny_run(tmp_path / "run", "bert")
    export_model(run, tmp_path / "fp16", fp16=True, validate=False, progress=False)
    export_model(run, tmp_path / "fp32", validate=False, progress=False)
    with caplog.at_level(logging.WARNING, logger="hadskip.runtime"):
        Runtime.load(tmp_path / "fp32").close()
        assert not caplog.records
        Runtime.load(tmp_path / "fp16").close()
    [rec] = caplog.records
    assert "fp16" in rec.getMessage() and "\n" not in rec.getMessage() and str(tmp_path / "fp16") in rec.getMessage()
    assert precision_note("fp32", "ort-cpu") is None and precision_note("fp16", "trt") is None
    assert "CPUs" in precision_note("int8", "ort-cuda")


def test_bench_times_fp32_and_int8_side_by_side(dirs, capsys):
    _, fp32, int8, _, _ = dirs
    report = run_bench([fp32, int8], batches=[2], seqs=[8], repeats=2, warmup=0, ks=[1])
    kinds = [(r.engine, r.precision) for r in report.rows]
    assert kinds == [(e, p) for p in ("fp32", "int8") for e in ("full", "hadskip", "forced", "random")]
    assert [m["full_source"] for m in report.models] == ["chained, all gates open", "baseline (optimum-onnx)"]
    for r in report.rows:
        assert set(r.speedup_vs_full) == {"fp32", "int8"}
        assert r.speedup_vs_full[r.precision] == pytest.approx(1 / r.ratio_to_full, rel=1e-2)
        assert r.model in (str(fp32), str(int8))
    assert {p["precision"] for p in report.parts} == {"fp32", "int8"}
    with pytest.raises(HadSkipError, match="twice"):
        run_bench([int8, int8], batches=[1], seqs=[4], repeats=1, warmup=0, ks=[0])
    assert main(["bench", str(fp32), str(int8), "--batch", "1", "--seq", "4", "--k", "1", "--repeats", "1",
                 "--warmup", "0", "--json", "--quiet"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {(r["engine"], r["precision"]) for r in d["rows"]} >= {("full", "int8"), ("hadskip", "int8"),
                                                                 ("full", "fp32"), ("hadskip", "fp32")}
    for r in d["rows"]:  # DESIGN.md §10 keys are all still there
        assert {"engine", "k", "batch", "seq", "median_ms", "throughput", "avg_layers", "ratio_to_full",
                "ideal_ratio"} <= set(r)


def test_a_large_split_is_checked_on_a_fixed_subset(dirs, tmp_path):
    import shutil

    from hadskip.export.quantize import check_on_dev

    _, fp32, int8, _, _ = dirs
    manifest = load_manifest(int8)
    shutil.copytree(fp32 / "layers", tmp_path / "ref" / "layers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantizationWarning)
        a = check_on_dev(int8, tmp_path / "ref", manifest, Int8Config(max_examples=16))
        b = check_on_dev(int8, tmp_path / "ref", manifest, Int8Config(max_examples=16))
    assert a["examples"] == 16 and a["of"] == 64 and a == b  # the same rows every time
    with pytest.raises(ExportError, match="max_examples"):
        Int8Config(max_examples=0)
