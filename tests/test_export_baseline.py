"""--with-baseline: the full model through optimum-onnx, one graph ids -> logits: the run's recorded teacher when
it is there (vs teacher(gates="off")), else the run's own model with every gate open, and the manifest says which."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hadskip.modeling.checkpoint import load_run
from hadskip.export import export_model
from hadskip.runtime.manifest import load_manifest, sha256_file
from hadskip.testing import tiny_run, tiny_sentences

from test_export import encode, run, session  # tests/ is on sys.path under pytest

pytest.importorskip("optimum.exporters.onnx")


@pytest.mark.parametrize("arch,optimize", [("bert", True), ("roberta", False), ("electra", False),
                                           ("distilbert", False), ("deberta-v2", False)])
def test_without_a_recorded_teacher_the_baseline_is_the_run_with_all_gates_open(arch, optimize, tmp_path):
    run_dir = tiny_run(tmp_path / "run", arch)  # records no teacher
    report = export_model(run_dir, tmp_path / "model", with_baseline=True, optimize=optimize, max_batch=4,
                          progress=False)
    d, m = tmp_path / "model", load_manifest(tmp_path / "model")  # sha256 of every baseline file checked too
    assert m.export["baseline"]["model"] == "student-all-gates-open" == report.baseline["model"]
    assert m.export["baseline"]["teacher_run"] is None and "records no teacher" in m.export["baseline"]["note"]
    assert m.units["baseline"] == "baseline/model.onnx" and report.baseline["path"] == "baseline/model.onnx"
    assert {"baseline/model.onnx", "baseline/config.json", "baseline/tokenizer.json"} <= set(m.files)
    assert m.validation["baseline"] <= 1e-4 and "optimum-onnx" in m.tools
    config = json.loads((d / "baseline" / "config.json").read_text())
    assert config["id2label"] == {"0": "label0", "1": "label1"}

    model, tokenizer, info = load_run(run_dir)
    ids, mask, types = encode(tokenizer, tiny_sentences(10, seed=5, max_words=40), info.max_len)
    logits = run(session(d / "baseline" / "model.onnx"), {"input_ids": ids, "attention_mask": mask,
                                                         "token_type_ids": types})
    with torch.no_grad():
        ref = model(*(torch.from_numpy(a) for a in (ids, mask, types)), gates="off").logits
    assert np.abs(logits - ref.numpy()).max() <= 1e-4
    if optimize:  # the anchor gets the same fusions as our layers (like with like in the benchmarks)
        b = m.optimization["baseline"]
        assert b["mode"] == "ort-fused" and b["fused_ops"]["Attention"] == m.num_layers



def _student_of(teacher: Path, student: Path, recorded: str, out: str) -> None:
    """Make `teacher` a finetune run and `student` a hadskip run recording it the way `hadskip train` does
    (extra.teacher as given on the command line, extra.config.out as given, both relative to the training cwd)."""
    for path, kind, extra in ((teacher, "finetune", {}), (student, "hadskip", {"teacher": recorded,
                                                                               "config": {"out": out}})):
        info = json.loads((path / "run.json").read_text())
        info.update(kind=kind, extra=extra)
        (path / "run.json").write_text(json.dumps(info))


def test_the_recorded_teacher_is_exported_from_another_working_dir(tmp_path, monkeypatch):
    teacher = tiny_run(tmp_path / "runs" / "ft", "bert", seed=1)  # other weights than the student's
    student = tiny_run(tmp_path / "runs" / "h3", "bert", seed=0)
    _student_of(teacher, student, recorded="runs/ft", out="runs/h3")  # trained from tmp_path
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # "runs/ft" does not exist from here
    export_model(student, tmp_path / "model", with_baseline=True, max_batch=4, progress=False)
    m = load_manifest(tmp_path / "model")
    assert m.export["baseline"] == {"model": "teacher", "teacher_run": "ft",  # by name: no build paths
                                    "teacher_weights_sha256": sha256_file(teacher / "model.safetensors"),
                                    "note": "the run's recorded teacher"}

    model, tokenizer, info = load_run(student)
    teacher_model, _, _ = load_run(teacher)
    ids, mask, types = encode(tokenizer, tiny_sentences(10, seed=5, max_words=40), info.max_len)
    logits = run(session(tmp_path / "model" / "baseline" / "model.onnx"),
                 {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    args = [torch.from_numpy(a) for a in (ids, mask, types)]
    with torch.no_grad():
        want = teacher_model(*args, gates="off").logits.numpy()
        student_full = model(*args, gates="off").logits.numpy()
    assert np.abs(logits - want).max() <= 1e-4 < np.abs(logits - student_full).max()


@pytest.mark.parametrize("damage,why", [
    ("remove", r"recorded teacher .*ft was not found"),
    ("not-finetune", r"recorded teacher .*ft is not a finetune run"),
    ("other-shape", r"recorded teacher .*ft does not match the run: its model_type is 'roberta'"),
])
def test_an_unusable_recorded_teacher_is_named_and_the_fallback_recorded(tmp_path, damage, why):
    from hadskip.export.baseline import teacher_source

    teacher = tiny_run(tmp_path / "ft", "roberta" if damage == "other-shape" else "bert", seed=1)
    student = tiny_run(tmp_path / "h3", "bert", seed=0)
    _student_of(teacher, student, recorded=str(teacher), out=str(student))
    if damage == "remove":
        import shutil

        shutil.rmtree(teacher)
    elif damage == "not-finetune":
        info = json.loads((teacher / "run.json").read_text())
        (teacher / "run.json").write_text(json.dumps({**info, "kind": "budgeted-exit"}))
    model, tokenizer, info = load_run(student)
    with pytest.warns(UserWarning, match=why):
        chosen, source = teacher_source(student, model, tokenizer, info)
    assert chosen is model and source["model"] == "student-all-gates-open" and source["teacher_run"] is None
