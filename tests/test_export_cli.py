"""`hadskip export`: parses, calls export_model, prints one line or one JSON object; errors are one line, exit 2."""

from __future__ import annotations

import json

import pytest

from hadskip.cli.main import main
from hadskip.runtime.manifest import load_manifest
from hadskip.testing import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("cli") / "run", "bert")


def test_export_json(run_dir, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["export", str(run_dir), "--out", str(out), "--optimize", "--max-batch", "4", "--json"]) == 0
    captured = capsys.readouterr()
    d = json.loads(captured.out)  # exactly one JSON object on stdout
    assert d["out_dir"] == str(out.resolve()) and d["engine"] == "onnx" and d["seconds"] > 0
    assert d["total_bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert set(d["max_abs_diff"]) == {"embeddings", "head", *(f"{k}_{i:02d}" for i in range(3)
                                                              for k in ("gate", "layer"))}
    assert d["fused_ops"]["layer_00"]["Attention"] == 1
    assert load_manifest(out).opset == 17


def test_export_human_line(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "-o", str(tmp_path / "m"), "--max-batch", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("exported ") and "max abs diff" in lines[0]


def test_export_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "run.json" in err[0]
    assert not (tmp_path / "m").exists()


def test_export_opset_too_old(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--out", str(tmp_path / "m"), "--opset", "13"]) == 2
    assert "opset 13" in capsys.readouterr().err


def test_export_help_lists_the_options(capsys):
    assert main(["export", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--engine", "--out", "--optimize", "--with-baseline", "--fp16", "--opset", "--json"):
        assert flag in text
