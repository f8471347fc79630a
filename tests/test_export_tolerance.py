"""Validation holds each unit to its precision: |graph - torch| <= atol + rtol |torch|, gate decisions checked,
and bench/parity.py applies the model dir's precision (an fp16 model dir is not held to fp32's threshold)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hadskip.modeling.checkpoint import load_run, save_run
from hadskip.export import ValidationError, export_model
from hadskip.export.spec import FP16_ATOL, FP32_ATOL, TOLERANCES
from hadskip.runtime.manifest import load_manifest
from hadskip.testing import tiny_run, tiny_task_dir

ROOT = Path(__file__).resolve().parents[1]


def loud_run(path: Path, gate_scale: float = 30.0, head_scale: float = 1000.0) -> Path:
    """A tiny run with gate logits ~1e3 and head logits ~1e2: correct exports differ from PyTorch by more than
    any fixed absolute tolerance there, and by little relative to the values."""
    model, tokenizer, info = load_run(tiny_run(path, "bert"))
    with torch.no_grad():
        for gate in model.gates:
            gate.fc2.weight.mul_(gate_scale)
            gate.fc2.bias.mul_(gate_scale)
        model.head.out.weight.mul_(head_scale)
        model.head.out.bias.mul_(head_scale)
    task = tiny_task_dir(path.parent / "task", n_train=8, n_eval=40)
    info.task = {**info.task, "source": {"task": str(task)}}  # so parity can load a split
    return save_run(path, model, tokenizer, info)


@pytest.fixture(scope="module")
def loud(tmp_path_factory):
    root = tmp_path_factory.mktemp("loud")
    run_dir = loud_run(root / "run")
    export_model(run_dir, root / "fp16", fp16=True, max_batch=4, progress=False)
    return run_dir, root / "fp16"


def test_large_logits_export_in_fp16_with_fp32_gates(loud):
    run_dir, d = loud
    m = load_manifest(d)
    assert m.precision == "fp16"
    # the case needs the relative part: beyond the absolute tolerances alone, within atol + rtol |torch|
    assert m.validation["head"] > FP16_ATOL and max(m.validation[f"gate_{i:02d}"] for i in range(3)) > FP32_ATOL
    assert m.export["rtol"]["head"] == TOLERANCES["fp16"][1] and m.export["rtol"]["gate_00"] == TOLERANCES["fp32"][1]
    assert "atol + rtol" in m.export["tolerance_rule"]


def _parity_module():
    spec = importlib.util.spec_from_file_location("parity", ROOT / "bench" / "parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parity_holds_an_fp16_model_dir_to_fp16_tolerances(loud, tmp_path, capsys):
    run_dir, d = loud
    parity = _parity_module()
    assert parity.main([str(run_dir), str(d), "--split", "test", "--batch-size", "8", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["precision"] == "fp16" and r["ok"] and r["atol"] == FP16_ATOL
    assert r["max_abs_logit_diff"] > 1e-4  # what the fp32 threshold refused
    # and it can still fail: another run's weights are far outside the fp16 tolerance
    other = tiny_run(tmp_path / "other", "bert", seed=1)
    info = json.loads((other / "run.json").read_text())
    info["task"] = json.loads((run_dir / "run.json").read_text())["task"]
    (other / "run.json").write_text(json.dumps(info))
    assert parity.main([str(other), str(d), "--split", "test", "--batch-size", "8", "--json"]) == 1
    assert not json.loads(capsys.readouterr().out)["ok"]


def test_the_rule_is_relative_plus_absolute():
    from hadskip.export.spec import check_close

    atol, rtol = TOLERANCES["fp32"]
    ref = np.array([[1000.0, -2000.0], [0.5, 0.25]])
    assert check_close("u", ref * (1 + 2e-6), ref, atol, rtol, (2, 2)) == pytest.approx(4e-3)
    with pytest.raises(ValidationError, match=r"u failed validation: .*worst element: \|diff\| 0\.001 > 0\.000105"):
        check_close("u", ref + np.array([[0.0, 0.0], [1e-3, 0.0]]), ref, atol, rtol, (2, 2))
    with pytest.raises(ValidationError, match="inf or NaN"):
        check_close("u", ref * np.nan, ref, atol, rtol, (2, 2))


def test_gate_decisions_must_agree_outside_the_tie():
    from hadskip.export.spec import GateDecisionError, check_close

    atol, rtol = TOLERANCES["fp32"]
    ref = np.array([[0.0, 3.0], [1.0, 1.0 + 5e-5], [2.0, -1.0]])  # open, at the tie, closed
    near_tie_flipped = ref.copy()
    near_tie_flipped[1] = [1.0 + 5e-5, 1.0]  # within atol + rtol (|l0| + |l1|) of the tie: either way is fine
    assert check_close("gate_00", near_tie_flipped, ref, atol, rtol, (3, 4), gate=True) == pytest.approx(5e-5)
    flipped = ref.copy()
    flipped[0] = [3.0, 0.0]
    with pytest.raises(GateDecisionError, match=r"gate_00 .*gate decisions differ from PyTorch on 1 row") as err:
        check_close("gate_00", flipped, ref, atol, rtol, (3, 4), gate=True)
    assert err.value.margin == 3.0 and err.value.rows == 1


def test_validate_names_a_flipped_gate(tmp_path):
    from hadskip.export.spec import GateDecisionError, validate
    from hadskip.export.units import build_specs, export_onnx

    model, tokenizer, _ = load_run(tiny_run(tmp_path / "run", "bert"))
    specs = {s.name: s for s in build_specs(model, vocab_size=len(tokenizer), pad_token_id=0, type_vocab_size=2)}
    gate = specs["gate_01"]
    export_onnx(gate, tmp_path / "gate.onnx")
    with torch.no_grad():  # the reference now says the opposite of the graph wherever it decided clearly
        gate.module.fc2.weight.copy_(gate.module.fc2.weight.flip(0))
        gate.module.fc2.bias.copy_(gate.module.fc2.bias.flip(0))
    with pytest.raises(GateDecisionError, match="gate_01 failed validation: gate decisions differ"):
        validate(gate, tmp_path / "gate.onnx", [(4, 6)])
