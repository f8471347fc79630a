"""`hadskip predict` and `hadskip bench` through Typer's CliRunner on a tiny model dir (no timing assertions)."""

from __future__ import annotations

import json

import pytest
from test_runtime_support import cached_model
from typer.testing import CliRunner

from hadskip.cli.main import app, main
from hadskip.runtime import Runtime

ROW_KEYS = {"engine", "k", "batch", "seq", "median_ms", "throughput", "avg_layers", "ratio_to_full", "ideal_ratio"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return cached_model(tmp_path_factory, "bert", 0, with_baseline=True)[1]


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_predict_jsonl_file_to_stdout(model, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"text": "a good movie", "id": "a"}, {"text": "bad " * 80}, {"text": "the plot", "text_pair": "fun"}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = CliRunner().invoke(app, ["predict", str(model), "--input", str(src), "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    out = _jsonl(res.stdout)
    assert [o["index"] for o in out] == [0, 1, 2]
    assert out[0]["id"] == "a" and "id" not in out[1]
    assert [o["truncated"] for o in out] == [False, True, False]
    want = Runtime.load(model).predict(["a good movie", "bad " * 80, ("the plot", "fun")])
    for o, p in zip(out, want, strict=True):
        assert o["label"] == p.label and o["layers"] == p.layers and o["num_layers"] == len(p.layers)
        assert o["probs"] == pytest.approx(p.probs, abs=1e-6)


def test_predict_txt_and_stdin_to_file(model, tmp_path):
    txt = tmp_path / "in.txt"
    txt.write_text("fun film\n\n \t \nnot very good\n")
    dst = tmp_path / "out.jsonl"
    res = CliRunner().invoke(app, ["predict", str(model), "-i", str(txt), "-o", str(dst), "--quiet"])
    assert res.exit_code == 0, res.output
    from_file = _jsonl(dst.read_text())
    # index is the line number: blank and whitespace-only lines keep their place as error entries
    assert [o["index"] for o in from_file] == [0, 1, 2, 3]
    assert from_file[1] == {"index": 1, "error": "empty text"} and from_file[2] == {"index": 2, "error": "empty text"}
    predicted = [from_file[0], from_file[3]]
    assert all("label" in o and "error" not in o for o in predicted)
    res = CliRunner().invoke(app, ["predict", str(model), "-i", "-"], input="fun film\nnot very good\n")
    assert res.exit_code == 0, res.output
    assert [o["probs"] for o in _jsonl(res.stdout)] == [o["probs"] for o in predicted]
    res = CliRunner().invoke(app, ["predict", str(model), "-i", "-"], input='\n{"text": "fun film"}\n')
    assert _jsonl(res.stdout)[0]["probs"] == from_file[0]["probs"]
    assert _jsonl(res.stdout)[0]["index"] == 1  # JSONL: a blank line gives nothing but still counts


def test_predict_jsonl_blank_text_and_bom(model, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('\ufeff{"text": "fun", "id": 7}\n\n{"text": "  ", "id": "b"}\n{"text": "a", "text_pair": ""}\n',
                   encoding="utf-8")
    res = CliRunner().invoke(app, ["predict", str(model), "-i", str(src), "--quiet"])
    assert res.exit_code == 0, res.output
    out = _jsonl(res.stdout)
    assert [o["index"] for o in out] == [0, 2, 3] and out[0]["id"] == 7 and "label" in out[0]
    assert out[1] == {"index": 2, "id": "b", "error": "empty text"} and out[2]["error"] == "empty text"


def test_runtime_load_refuses_an_unknown_optimization(model):
    from hadskip.errors import HadSkipError

    with pytest.raises(HadSkipError, match="unknown optimization 'bogus'; choose one of disable, basic"):
        Runtime.load(model, optimization="bogus")


def test_predict_errors_are_one_line(model, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "no text field"}\n')
    assert main(["predict", str(model), "-i", str(bad)]) == 2
    assert 'line 1 needs a string "text"' in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nope"), "-i", str(bad)]) == 2
    assert main(["predict", str(model), "-i", str(bad), "--backend", "tpu"]) == 2
    assert "unknown backend" in capsys.readouterr().err


def test_bench_json(model):
    res = CliRunner().invoke(app, ["bench", str(model), "--batch", "1,3", "--seq", "8,16", "--repeats", "2",
                                   "--warmup", "1", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)  # stdout is exactly one JSON object; progress went to stderr
    rows = report["rows"]
    assert all(ROW_KEYS <= set(r) for r in rows)
    assert {r["engine"] for r in rows} == {"full", "hadskip", "forced", "random"}
    assert {(r["batch"], r["seq"]) for r in rows} == {(1, 8), (1, 16), (3, 8), (3, 16)}
    assert sorted(r["k"] for r in rows if r["engine"] == "forced" and r["batch"] == 1 and r["seq"] == 8) == [0, 1, 2, 3]
    for r in rows:
        assert r["median_ms"] > 0 and r["throughput"] > 0 and r["ratio_to_full"] > 0 and r["ideal_ratio"] > 0
        assert 0 <= r["avg_layers"] <= 3
    full = [r for r in rows if r["engine"] == "full"]
    assert all(r["ratio_to_full"] == 1.0 and r["ideal_ratio"] == 1.0 for r in full)
    assert full[0]["source"] == "baseline (optimum-onnx)"
    forced = {r["k"]: r["ideal_ratio"] for r in rows if r["engine"] == "forced" and r["batch"] == 3 and r["seq"] == 16}
    assert forced[0] < forced[1] < forced[2] < forced[3] == pytest.approx(1.0)


def test_bench_table_and_bad_arguments(model):
    res = CliRunner().invoke(app, ["bench", str(model), "--batch", "2", "--seq", "8", "--repeats", "1", "--k", "0,3",
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    assert "ratio to" in res.stdout and "forced" in res.stdout
    assert CliRunner().invoke(app, ["bench", str(model), "--batch", "x"]).exit_code != 0
    assert main(["bench", str(model), "--seq", "999", "--quiet"]) == 2  # beyond max_seq_len


def test_bench_input_times_real_texts(model, tmp_path):
    """--input FILE: the routed rows are the file's texts (each once here: 6 texts, batch 2, 3 rounds, no warmup),
    so the hadskip row's avg_layers is that of Runtime.predict on them, and seq is their mean padded length."""
    texts = ["a fine movie", "dull", "the plot was thin but the acting saved it", "fun", "bad " * 10, "an odd one"]
    src = tmp_path / "traffic.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts) + "\n")
    res = CliRunner().invoke(app, ["bench", str(model), "--input", str(src), "--batch", "2", "--repeats", "3",
                                   "--warmup", "0", "--k", "1", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    with Runtime.load(model) as rt:
        want = rt.predict(texts).num_layers.mean()
        enc = rt.encode(texts)
    (hadskip,) = [r for r in report["rows"] if r["engine"] == "hadskip"]
    assert hadskip["avg_layers"] == pytest.approx(want, abs=1e-3)
    lengths = [max(len(enc.ids[j]) for j in (i, i + 1)) for i in (0, 2, 4)]
    assert hadskip["batch"] == 2 and hadskip["seq"] == round(sum(lengths) / 3)
    assert any("real traffic: 6 inputs" in n for n in report["notes"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["bench", str(model), "--input", str(empty), "--quiet"]) == 2
