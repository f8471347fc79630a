"""bench/load_test.py end to end on a tiny model dir: two real `hadskip serve-local` subprocesses (batching on,
then off), each stopped by SIGTERM; and its refusal of any non-loopback host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_runtime_support import cached_model

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "load_test.py"


def test_load_test_runs_both_modes(tmp_path_factory):
    model = cached_model(tmp_path_factory, "bert", 0)[1]
    proc = subprocess.run([sys.executable, str(SCRIPT), str(model), "--requests", "40", "--concurrency", "4",
                           "--json", "--start-timeout-s", "60", "--time-limit-s", "60"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["zero_5xx"] is True and [r["mode"] for r in report["rows"]] == ["batching", "no batching"]
    for row in report["rows"]:
        assert row["codes"] == {"2xx": 40, "200": 40} and row["transport_errors"] == 0
        assert row["p50_ms"] <= row["p99_ms"] and row["throughput"] > 0 and row["stopped_gracefully"]
    assert report["rows"][1]["rows_per_call"] == 1.0 and report["throughput_ratio"] > 0


def test_load_test_refuses_other_hosts(tmp_path):
    for host in ("0.0.0.0", "192.168.1.5", "example.com"):
        proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--host", host], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2 and "not a loopback address" in proc.stderr


BOUNDED = Path(__file__).resolve().parents[1] / "bench" / "bounded_cost.py"


def test_bounded_cost_bench_runs(tmp_path_factory):
    """bench/bounded_cost.py end to end, small: maximum-size requests all answered, the idle connections
    closed by the server, a normal client answered meanwhile (the timing goals are the bench's to report)."""
    model = cached_model(tmp_path_factory, "bert", 0)[1]
    proc = subprocess.run([sys.executable, str(BOUNDED), str(model), "--requests", "8", "--idle", "60",
                           "--header-timeout-s", "1", "--json", "--start-timeout-s", "60", "--time-limit-s", "60"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["zero_5xx"] and report["long"]["codes"] == {"2xx": 8, "200": 8} == report["normal"]["codes"]
    assert report["long_body_bytes"] > 1_000_000 and report["server_exit"] == 0
    idle = report["idle"]
    assert idle["connections"] == 60 and idle["normal_client_status"] == 200
    assert idle["closed_by_server"] == 60 and idle["still_open"] == 0
