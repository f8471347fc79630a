"""bench/gpu_bench.py's bookkeeping on CPU: summary rows from parity and bench reports, the merged
summary.json and its table (what gpu_check.sh prints last), and the skip lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import gpu_bench  # noqa: E402


def _row(engine, k, batch, ms, ratio, ideal, avg):
    return {"engine": engine, "k": k, "batch": batch, "seq": 128, "median_ms": ms, "ratio_to_full": ratio,
            "ideal_ratio": ideal, "avg_layers": avg}


BENCH = {"num_layers": 6, "rows": [
    _row("full", 6, 1, 2.0, 1.0, 1.0, 6), _row("hadskip", 3, 1, 1.3, 0.65, 0.52, 3.0),
    _row("forced", 3, 1, 1.1, 0.55, 0.5, 3), _row("forced", 6, 1, 2.0, 1.0, 1.0, 6),
    _row("full", 6, 32, 20.0, 1.0, 1.0, 6), _row("hadskip", 3, 32, 10.4, 0.52, 0.52, 3.1)]}
PARITY = {"max_abs_logit_diff": 2e-6, "gate_disagreements": 1, "rows_checked": 123}


def test_summary_row_ratios():
    row = gpu_bench.summary_row("trt", PARITY, BENCH, {"1x128": 1.0, "32x128": 16.0})
    assert row["b1_s128_ms"] == 1.3 and row["b1_s128_full_ms"] == 2.0 and row["b1_s128_ratio"] == 0.65
    assert row["b1_s128_ratio_to_ideal"] == pytest.approx(0.65 / 0.52, abs=1e-4)
    assert row["b32_s128_ratio_to_ideal"] == pytest.approx(1.0, abs=1e-4)
    assert row["b1_s128_forced3_ratio_to_ideal"] == pytest.approx(1.1, abs=1e-4)
    assert "b1_s128_forced6_ratio_to_ideal" not in row  # K = L is the full model again
    assert row["b1_s128_ratio_to_monolithic"] == 1.3 and row["b32_s128_ratio_to_monolithic"] == 0.65
    assert row["gate_disagreements"] == 1 and row["rows_checked"] == 123


def test_summary_json_merges_by_backend_and_prints_a_table(tmp_path, capsys):
    assert gpu_bench.print_summary(tmp_path) == 1  # nothing written yet: says so
    gpu_bench.merge_summary(tmp_path, {"backend": "trt", "status": "skipped", "why": "tensorrt is not installed"})
    gpu_bench.merge_summary(tmp_path, {"backend": "torch", "status": "failed", "why": "x"})
    gpu_bench.merge_summary(tmp_path, gpu_bench.summary_row("torch", PARITY, BENCH, None))
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert [r["backend"] for r in rows] == ["trt", "torch"] and rows[1]["status"] == "ok"
    capsys.readouterr()
    assert gpu_bench.print_summary(tmp_path) == 0
    out = capsys.readouterr().out.splitlines()
    assert "b1_s128 ms (full)" in out[0] and "b32_s128 ratio/ideal" in out[0]
    assert out[1].startswith("trt") and "skipped: tensorrt is not installed" in out[1]
    assert "1.3 (2)" in out[2] and "0.65/0.52=1.25" in out[2] and "K=3:1.1" in out[2] and "1/123" in out[2]


def test_a_backend_that_cannot_run_says_why(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed: the trt step would run for real")
    assert gpu_bench.main(["--work", str(tmp_path), "--backend", "trt", "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out
    (row,) = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert row["status"] == "skipped" and line == f"SKIP trt: {row['why']}\n" and "tensorrt" in row["why"]
    assert "unknown backend" in gpu_bench.available("tpu")
