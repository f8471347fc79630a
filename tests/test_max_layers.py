"""The per-request hard cap `max_layers` (a row never runs more layers) next to the average `budget`: through
Runtime.predict, serve-local's request body and `hadskip predict --max-layers`. The routing rule itself is
pinned in tests/test_gate_rule.py (runtime and PyTorch loops)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_server import Served
from typer.testing import CliRunner

from hadskip.cli.main import app as cli
from hadskip.cli.main import main
from hadskip.errors import HadSkipError
from hadskip.runtime import Runtime
from hadskip.runtime.serve import ServeConfig, create_app

TEXTS = ["a fine movie", "dull and long and far too slow", "the plot", "fun", "bad " * 20, "an odd one"]


@pytest.fixture(scope="module")
def open_rt(model_dir):
    """The tiny model at a negative offset, so most gates open and a cap has something to close."""
    rt = Runtime.load(model_dir)
    rt.gate_offset = -1e9
    return rt


def test_predict_caps_every_row(open_rt):
    free = open_rt.predict(TEXTS)
    assert free.num_layers.max() == open_rt.num_layers
    for cap in range(open_rt.num_layers + 1):
        got = open_rt.predict(TEXTS, max_layers=cap)
        assert (got.num_layers == np.minimum(free.num_layers, cap)).all()
    per_row = open_rt.predict(TEXTS, max_layers=[0, 1, None, 2, 1, 3])
    assert per_row.num_layers.tolist() == [0, 1, 3, 2, 1, 3]


@pytest.mark.parametrize("bad", [-1, 4, 1.5, True, "2"])
def test_predict_refuses_a_bad_cap(open_rt, bad):
    with pytest.raises(HadSkipError, match="max_layers"):
        open_rt.predict(TEXTS, max_layers=bad)


def test_server_request_cap(open_rt):
    srv = Served(create_app(ServeConfig(graceful_timeout_s=5), lambda: open_rt, model_name="tiny"))
    with srv:
        r = srv.client.post("/predict", json={"inputs": TEXTS, "max_layers": 1})
        assert r.status_code == 200, r.text
        assert [p["num_layers"] for p in r.json()["predictions"]] == [1] * len(TEXTS)
        r = srv.client.post("/predict", json={"inputs": TEXTS})
        assert max(p["num_layers"] for p in r.json()["predictions"]) == open_rt.num_layers
        for bad in (-1, 1.5, "2", True, open_rt.num_layers + 1, [1]):
            r = srv.client.post("/predict", json={"inputs": "a fine movie", "max_layers": bad})
            assert r.status_code == 422 and "max_layers" in r.text, (bad, r.text)
        assert srv.client.get("/health").status_code == 200


def test_cli_predict_max_layers(model_dir, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    res = CliRunner().invoke(cli, ["predict", str(model_dir), "-i", str(src), "--max-layers", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert len(rows) == len(TEXTS) and all(r["num_layers"] == 0 for r in rows)
    assert main(["predict", str(model_dir), "-i", str(src), "--max-layers", "9"]) == 2
    assert "error: max_layers must be a whole number of layers within 0..3, got 9" in capsys.readouterr().err
