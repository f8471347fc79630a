"""The bench library: the §10 row keys, the fallback full engine, and the ideal-ratio arithmetic."""

from __future__ import annotations

import pytest
from test_runtime_support import cached_model, one_torch_thread  # noqa: F401

from hadskip.runtime.bench import run_bench


def test_without_baseline_full_is_the_chained_model(tmp_path_factory):
    _, model = cached_model(tmp_path_factory, "tinybert", 0)
    msgs: list[str] = []
    report = run_bench(model, batches=[2], seqs=[8], repeats=2, warmup=0, ks=[1], progress=msgs.append)
    assert report.full_source == "chained, all gates open"
    assert any("--with-baseline" in n for n in report.notes)
    assert msgs and all("bench batch=2 seq=8" in m for m in msgs)
    d = report.to_dict()
    assert [r["engine"] for r in d["rows"]] == ["full", "hadskip", "forced", "random"]
    p = d["parts"][0]
    forced = d["rows"][2]
    want = (p["emb_ms"] + p["layer_ms"] + p["head_ms"]) / (p["emb_ms"] + 2 * p["layer_ms"] + p["head_ms"])
    assert forced["ideal_ratio"] == pytest.approx(want, rel=1e-3)


@pytest.mark.usefixtures("one_torch_thread")
def test_torch_backend_bench_on_a_run_dir(tmp_path_factory):
    run, _ = cached_model(tmp_path_factory, "bert", 0)
    report = run_bench(run, batches=[2], seqs=[8], repeats=1, warmup=0, backend="torch", device="cpu")
    assert report.backend == "torch-cpu" and report.full_source == "chained, all gates open"
    assert all(r.median_ms > 0 for r in report.rows)


def test_seq_past_max_seq_len_is_timed_with_a_note_and_past_positions_refused(tmp_path_factory):
    from hadskip.errors import HadSkipError
    from hadskip.runtime import Runtime

    _, model = cached_model(tmp_path_factory, "bert", 0)
    rt = Runtime.load(model)
    longer = rt.max_seq_len + 8
    report = run_bench(model, batches=[1], seqs=[longer], repeats=1, warmup=0, ks=[1])
    assert {r.seq for r in report.rows} == {longer}
    assert any("timed on synthetic tokens only" in n for n in report.notes)
    positions = rt.info.manifest.backbone["max_position_embeddings"]
    with pytest.raises(HadSkipError, match="position table"):
        run_bench(model, batches=[1], seqs=[positions + 1], repeats=1, warmup=0, ks=[1])
