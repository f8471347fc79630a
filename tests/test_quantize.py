"""--quantize int8: int8 layer graphs (and baseline) with fp32 gates, statically calibrated so a row's answer does
not depend on its batch; the dev-split check (fp32 vs int8, alone vs batched), the runtime and bench on them; the
fp16-on-CPU warning."""

from __future__ import annotations

import json
import logging
import random
import warnings
from collections import Counter

import numpy as np
import onnx
import pytest

from hadskip.modeling.checkpoint import read_info, write_info
from hadskip.cli.main import main
from hadskip.errors import HadSkipError
from hadskip.export import ExportError, export_model
from hadskip.export.int8_check import _judge
from hadskip.export.quantize import Int8Config, QuantizationWarning, check_request
from hadskip.runtime import Runtime
from hadskip.runtime.bench import run_bench
from hadskip.runtime.core import precision_note
from hadskip.runtime.manifest import load_manifest
from hadskip.testing import tiny_run, tiny_sentences, tiny_task_dir

INT8_OPS = {"MatMulInteger", "QAttention", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QuantizeLinear",
            "DequantizeLinear"}


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
    assert q["tool"] == "onnxruntime.quantization.quantize_static" and q["method"] == "static"
    assert q["format"] == "QDQ" and set(q["units"]) == {"layer_00", "layer_01", "layer_02", "baseline"}
    cal = q["calibration"]
    assert cal["split"] == "train" and cal["rows"] == cal["of"] == 8 and cal["method"] == "minmax"
    assert all(v["rows"] >= 8 and v["tokens"] > 8 for v in cal["layer_inputs"].values())  # every gate open, too
    assert min(q["layer_bytes"].values()) > 0  # (at hidden size 32 the QDQ scales outweigh the int8 savings)
    for k, u in q["units"].items():  # each int8 layer vs its fp32 graph on the hidden states dev rows bring it
        if k != "baseline":
            assert u["vs_fp32"]["rows"] >= 64 and 0 < u["vs_fp32"]["rel_rms"] < 0.05, (k, u)
            assert 0 < u["vs_fp32"]["max_abs_diff"] < u["vs_fp32"]["max_abs_ref"] / 10
    assert report.quantization == q


def test_the_ffn_output_projection_stays_fp32_and_every_other_weight_matmul_is_int8(dirs):
    """The FFN's output MatMul (weight (I, H), I > H) reads the long-tailed GELU output: kept fp32 by default
    (one constant scale cost 2.6 dev points on MiniLM-L6), every other weight MatMul is quantized (QDQ)."""
    _, _, d, _, _ = dirs
    m = load_manifest(d)
    assert "FFN output MatMuls" in m.quantization["kept_fp32"] and m.quantization["settings"]["keep_fp32"] == [
        "ffn_out"]
    for rel in m.units["layers"]:
        g = onnx.load(str(d / rel)).graph
        shapes = {i.name: onnx.numpy_helper.to_array(i).shape for i in g.initializer}
        made_by = {o: n for n in g.node for o in n.output}
        kinds = []
        for n in g.node:
            if n.op_type != "MatMul":
                continue
            w = n.input[1]
            if w in shapes and len(shapes[w]) == 2:
                kinds.append(("fp32", shapes[w][0] > shapes[w][1]))  # a raw fp32 weight: only the FFN output
            elif w in made_by and made_by[w].op_type == "DequantizeLinear":
                q = shapes[made_by[w].input[0]]
                kinds.append(("int8", q[0] > q[1]))
        assert sorted(kinds) == sorted([("fp32", True)] + [("int8", False)] * 5), (rel, kinds)


def test_export_checks_int8_against_fp32_on_the_dev_split(dirs):
    _, _, d, _, caught = dirs
    dev = load_manifest(d).quantization["dev"]
    assert dev["split"] == "dev" and dev["examples"] == dev["of"] == 64 and dev["metric"] == "accuracy"
    assert dev["gate_rows_changed"] <= 0.1 and 0 < dev["max_abs_dprob"] < 0.1  # > 0: int8 was compared to fp32
    assert abs(dev["delta"]) <= 0.05 and dev["delta"] == pytest.approx(dev["int8"] - dev["fp32"], abs=1e-6)
    assert set(dev["full"]) == {"fp32", "int8"} and abs(dev["full"]["int8"] - dev["full"]["fp32"]) <= 0.05
    said = [str(w.message) for w in caught if issubclass(w.category, QuantizationWarning)]
    assert said == dev["warnings"]  # whatever the check found past its tolerance was said, nothing else
    assert dev["alone_vs_batched"] == {"batch_size": 64, "max_abs_dprob": 0.0, "labels_changed": 0,
                                       "gate_rows_changed": 0}


def _companions(rng: np.random.Generator) -> list[str]:
    n = int(rng.integers(1, 24))
    return [tiny_sentences(1, seed=int(rng.integers(2**31)), max_words=int(rng.integers(1, 40)))[0] for _ in range(n)]


def test_an_int8_answer_does_not_depend_on_the_rows_in_its_batch(dirs):
    """Issue 23 item 3: a row alone and the same row inside 100 random batches (random companions, sizes and
    padding lengths) get bitwise the same probabilities, gates and label (dynamic int8 scaled per batch)."""
    _, _, int8, _, _ = dirs
    texts = tiny_sentences(30, seed=11, max_words=25)
    rng = np.random.default_rng(5)
    with Runtime.load(int8) as rt:
        alone = [rt.predict([t], batch_size=1) for t in texts]
        longer = 0
        for _ in range(100):
            i = int(rng.integers(len(texts)))
            batch = _companions(rng) + [texts[i]]
            random.Random(int(rng.integers(2**31))).shuffle(batch)
            j = batch.index(texts[i])
            lengths = rt.encode(batch).lengths
            longer += int(lengths.max() > lengths[j])
            p = rt.predict(batch, batch_size=len(batch))
            assert np.abs(p.probabilities[j] - alone[i].probabilities[0]).max() == 0, i
            assert (p.gates[j] == alone[i].gates[0]).all() and p.label_ids[j] == alone[i].label_ids[0]
    assert longer >= 50  # most batches pad the row to a longer length than its own
    assert 0 < np.concatenate([a.gates for a in alone]).mean() < 1  # the gates route (not all open or closed)


def test_the_export_check_sees_an_int8_that_depends_on_its_batch(dirs, tmp_path):
    """The old per-call (dynamic) method stays reachable; the export's check now runs each dev row alone too,
    and says that dynamic answers move with the batch (the batched-only check could not see it)."""
    run = dirs[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export_model(run, tmp_path / "dyn", quantize="int8", int8=Int8Config(method="dynamic"),
                              progress=False)
    q = report.quantization
    assert q["method"] == "dynamic" and q["tool"].endswith("quantize_dynamic") and q["calibration"] is None
    ab = q["dev"]["alone_vs_batched"]
    assert ab["max_abs_dprob"] > 0
    said = [str(w.message) for w in caught if issubclass(w.category, QuantizationWarning)]
    assert any("depend on the batch" in w for w in said)


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


def test_unloadable_task_is_one_error_line(tmp_path, capsys):
    run = tiny_run(tmp_path / "run", "bert")  # task "tiny": no registry entry, no folder: nothing to calibrate on
    assert main(["export", str(run), "--out", str(tmp_path / "m"), "--quantize", "int8", "--no-validate"]) == 2
    err = capsys.readouterr().err
    [line] = [ln for ln in err.splitlines() if ln.startswith("error:")]  # beside it only the progress bar
    assert line.startswith("error: static int8 calibration needs the run's train split") and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_export_prints_what_int8_did_not_a_diff_vs_pytorch_on_random_inputs(dirs, tmp_path, capsys):
    """The old line "int8 layers: max abs diff vs PyTorch 1" compared int8 layers on random hidden states;
    now each int8 layer is compared with its fp32 graph on real hidden states, and rows alone vs batched."""
    assert main(["export", str(dirs[0]), "--out", str(tmp_path / "m"), "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "int8 layers: max abs diff vs PyTorch" not in out
    [layers] = [ln for ln in out.splitlines() if ln.startswith("int8 layers vs their fp32 graphs on dev hidden")]
    units = load_manifest(tmp_path / "m").quantization["units"]
    worst = max(u["vs_fp32"]["rel_rms"] for u in units.values() if "vs_fp32" in u)
    assert f"relative RMS error up to {worst:.2%}" in layers
    assert "int8 each row alone vs in batches of 64: max |delta prob| 0, 0 labels and 0 gate rows changed" in out


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
    from dataclasses import replace

    from hadskip.export.quantize import check_on_dev

    run, fp32, int8, _, _ = dirs
    # the run's task, as export/api.py passes it: the manifest names a folder task by name only (portable)
    manifest = replace(load_manifest(int8), task=read_info(run).task)
    shutil.copytree(fp32 / "layers", tmp_path / "ref" / "layers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantizationWarning)
        a = check_on_dev(int8, tmp_path / "ref", manifest, Int8Config(max_examples=16))
        b = check_on_dev(int8, tmp_path / "ref", manifest, Int8Config(max_examples=16))
    assert a["examples"] == 16 and a["of"] == 64 and a == b  # the same rows every time
    with pytest.raises(ExportError, match="max_examples"):
        Int8Config(max_examples=0)
