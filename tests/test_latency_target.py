"""`serve-local --latency-target-ms`: the decision rule (runtime/serve/latency.py) on its own, the cost model
the batcher keeps, the settings' one-line errors, and a real server on 127.0.0.1 whose saturated queue makes
answers come back at a lower budget, with the field set, and /metrics and /info showing it.

The server's backend is slowed by a wrapper around a real Runtime (as in test_server.py), never by sleeping in the
server code; no assertion is on a timing.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hadskip.cli.main import main
from hadskip.errors import HadSkipError
from hadskip.runtime import Runtime
from hadskip.runtime.dial import DialError
from hadskip.runtime.serve.latency import CostModel, Costs, LatencyPolicy, Load, choose_budget, expected_s

BUDGETS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)


# -- the rule -------------------------------------------------------------------------------------------------
costs_st = st.builds(Costs, st.floats(0, 0.01), st.floats(0, 0.002), st.floats(1e-6, 0.002))
load_st = st.builds(Load, st.integers(1, 64), st.integers(0, 5000), st.floats(0, 2), st.floats(0, 2),
                    st.just(32))


@settings(max_examples=300, deadline=None)
@given(load_st, st.integers(0, 2000), st.floats(0, 1), st.floats(0, 1), costs_st, st.floats(0.001, 1.0),
       st.sampled_from(BUDGETS[:4]), st.sampled_from(BUDGETS))
def test_more_load_never_gives_a_higher_budget(load, more_rows, more_old, more_new, costs, target, floor, requested):
    heavier = Load(load.batch_rows, load.queued_rows + more_rows, load.oldest_wait_s + more_old,
                   load.newest_wait_s + more_new, load.max_batch)
    light = choose_budget(load, costs, target, BUDGETS, floor, requested)
    heavy = choose_budget(heavier, costs, target, BUDGETS, floor, requested)
    assert heavy <= light


@settings(max_examples=300, deadline=None)
@given(load_st, costs_st, st.floats(0.0001, 2.0), st.sampled_from(BUDGETS), st.sampled_from(BUDGETS))
def test_never_below_the_floor_nor_above_the_request(load, costs, target, floor, requested):
    b = choose_budget(load, costs, target, BUDGETS, floor, requested)
    assert b <= requested
    assert b >= min(floor, requested)  # a request below the floor is not raised to it
    if floor < b < requested:  # stepped down, but not to the floor: the step it took fits the target
        assert expected_s(load, costs, b) <= target
    if b == requested:
        assert requested <= floor or expected_s(load, costs, requested) <= target
    else:
        assert expected_s(load, costs, requested) > target  # lowered only when the request would miss it


def test_the_rule_steps_down_as_the_queue_grows_and_back_when_it_drains():
    costs = Costs(call_s=0.002, row_s=0.0002, layer_row_s=0.0005)  # a call of 32 rows: 8.4 ms + 16 ms a layer
    seen = [choose_budget(Load(32, q, 0.01, 0.0, 32), costs, 0.25, BUDGETS, 1.0, 6.0) for q in (0, 64, 128, 192,
                                                                                                 10_000)]
    assert seen == [6.0, 4.0, 2.5, 1.5, 1.0], seen  # the highest budget at which 1 + q / 32 calls fit 250 ms
    load = Load(32, 64, 0.01, 0.0, 32)
    assert expected_s(load, costs, 4.0) == pytest.approx(3 * (0.0084 + 0.016 * 4)) and \
        expected_s(load, costs, 4.0) <= 0.25 < expected_s(load, costs, 5.0)
    assert choose_budget(Load(1, 0, 0.0, 0.0, 32), costs, 0.25, BUDGETS, 1.0, 6.0) == 6.0  # drained: back up
    assert choose_budget(Load(32, 10_000, 1.0, 0.0, 32), None, 0.25, BUDGETS, 1.0, 6.0) == 6.0  # nothing measured
    assert choose_budget(Load(32, 10_000, 1.0, 0.0, 32), costs, 0.25, BUDGETS, 2.0, 1.5) == 1.5  # asked below floor


def test_the_cost_model_recovers_its_terms_and_follows_a_slowdown():
    rng = np.random.default_rng(0)
    model = CostModel(half_life=20)
    assert model.costs() is None
    truth = Costs(0.003, 0.0004, 0.0011)
    for _ in range(200):
        rows, layers = int(rng.integers(1, 33)), float(rng.uniform(1, 6))
        model.observe(rows, round(rows * layers), truth.seconds(rows, round(rows * layers) / rows))
    got = model.costs()
    assert got.call_s == pytest.approx(truth.call_s, rel=1e-3) and got.row_s == pytest.approx(truth.row_s, rel=1e-3)
    assert got.layer_row_s == pytest.approx(truth.layer_row_s, rel=1e-3)
    slow = Costs(0.003, 0.0004, 0.0033)  # the machine got busier: every layer costs 3x
    for _ in range(200):
        rows, layers = int(rng.integers(1, 33)), float(rng.uniform(1, 6))
        model.observe(rows, round(rows * layers), slow.seconds(rows, round(rows * layers) / rows))
    assert model.costs().layer_row_s == pytest.approx(slow.layer_row_s, rel=0.01)
    one = CostModel()  # a first call alone (or calls that all look alike) still gives non-negative costs
    one.observe(32, 96, 0.05)
    c = one.costs()
    assert min(c.call_s, c.row_s, c.layer_row_s) >= 0 and c.seconds(32, 3) == pytest.approx(0.05, rel=0.01)
    bad = CostModel()
    bad.observe(4, 8, float("nan"))
    bad.observe(0, 0, 1.0)
    assert bad.costs() is None


# -- settings and the dial ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, pattern", [
    ({"latency_target_ms": 0}, r"latency_target_ms must be in \(0, 3600000\]"),
    ({"latency_target_ms": float("nan")}, r"latency_target_ms must be in"),
    ({"min_budget": 1.0}, r"min_budget is the floor of --latency-target-ms; set --latency-target-ms too"),
    ({"latency_target_ms": 50, "min_budget": float("inf")}, r"min_budget must be a finite number"),
])
def test_bad_settings_are_one_line_errors(fields, pattern):
    from hadskip.runtime.serve import ServeConfig

    with pytest.raises(HadSkipError, match=pattern):
        ServeConfig(**fields)


@pytest.fixture(scope="module")
def dialled(tmp_path_factory):
    """A tiny random 3-layer model, its dial calibrated on a folder task (0.5 .. 2.5 layers), exported; and a
    copy of the model dir without the dial."""
    import torch
    from test_runtime_support import export_dir

    from hadskip.evaluation.dial import calibrate
    from hadskip.modeling.checkpoint import read_info, write_info
    from hadskip.testing import tiny_run, tiny_task_dir

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("latency")
        task = tiny_task_dir(root / "task", n_train=16, n_eval=200)
        run = tiny_run(root / "run", "bert", seed=3)
        info = read_info(run)
        info.task["source"] = {"task": str(task)}
        write_info(run, info)
        calibrate(run, [0.5, 1, 1.5, 2, 2.5], progress=False)
        model = export_dir(run, root / "model")
    finally:
        torch.set_num_threads(threads)
    plain = root / "plain"
    shutil.copytree(model, plain)
    manifest = json.loads((plain / "manifest.json").read_text())
    manifest["dial"] = None
    (plain / "manifest.json").write_text(json.dumps(manifest))
    return {"model": model, "plain": plain, "task": task}


def test_a_model_without_a_dial_is_refused_saying_how_to_make_one(dialled, capsys):
    rt = Runtime.load(dialled["plain"])
    with pytest.raises(DialError, match=r"--latency-target-ms needs a budget dial .* run `hadskip dial RUN` on its "
                                        r"run dir before `hadskip export`"):
        LatencyPolicy.make(100, None, None, rt.info.dial, "plain")
    assert main(["serve-local", str(dialled["plain"]), "--latency-target-ms", "100", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --latency-target-ms needs a budget dial"), err
    assert main(["serve-local", str(dialled["model"]), "--latency-target-ms", "100", "--min-budget", "9",
                 "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"error: budget 9 is outside the calibrated range 0\.50\.\.2\.50", err[0]), err


def test_the_policy_reads_the_dial(dialled):
    dial = Runtime.load(dialled["model"]).info.dial
    p = LatencyPolicy.make(80, None, 2.5, dial, "m")
    assert (p.target_s, p.floor, p.budgets, p.default_layers) == (0.08, 0.5, (0.5, 1.0, 1.5, 2.0, 2.5), 2.5)
    p = LatencyPolicy.make(80, 1.2, None, dial, "m")
    assert p.floor == 1.2 and p.budgets == (1.2, 1.5, 2.0, 2.5)
    offsets = [c.offset for c in dial.curve]  # the trained gates (offset 0): their dev average from the curve
    assert p.default_layers == pytest.approx(np.interp(0, offsets[::-1], [c.avg_layers for c in dial.curve][::-1]))
    p = LatencyPolicy.make(80, 1.2, 2.5, dial, "m")
    chosen, per_job = p.plan(Load(4, 10_000, 1.0, 0.0, 4), Costs(0.01, 0.001, 0.001), [None, 2.5, 1.0, 2.0])
    assert chosen == 1.2 and per_job == [1.2, 1.2, 1.0, 1.2]  # lowered to the floor; a lower request kept


# -- a real server ------------------------------------------------------------------------------------------
class Slowed:
    """A Runtime whose predict passes the batcher's per-row budgets and caps, and first calls `hook(rows)`."""

    def __init__(self, rt: Runtime, hook=None):
        self.rt, self.hook, self.calls = rt, hook, []

    def __getattr__(self, name):
        return getattr(self.rt, name)

    def predict(self, rows, batch_size=32, **kw):
        self.calls.append((list(rows), kw))
        if self.hook is not None:
            self.hook(rows)
        return self.rt.predict(rows, batch_size=batch_size, **kw)

    def close(self):
        pass


def _served(rt, hook=None, **config):
    pytest.importorskip("uvicorn")
    from test_server import Served

    from hadskip.runtime.serve import ServeConfig, create_app

    slowed = Slowed(rt, hook)
    return Served(create_app(ServeConfig(graceful_timeout_s=5, **config), lambda: slowed, model_name="tiny")), slowed


def test_a_saturated_queue_answers_at_a_lower_budget_and_metrics_show_it(dialled):
    from test_server import metric, wait_for

    from hadskip.testing import tiny_sentences

    texts = tiny_sentences(24, seed=7, min_words=3)
    rt = Runtime.load(dialled["model"], budget=2.5)
    alone = Runtime.load(dialled["model"])
    queued = threading.Event()

    def hook(rows):  # the first call is slow: it holds until 16 requests queue behind it, then 0.3 s more
        if rows == ["first"]:
            wait_for(lambda: srv.state.batcher.queued_rows >= 16, "16 queued rows")
            queued.set()
            time.sleep(0.3)

    srv, slowed = _served(rt, hook, budget=2.5, latency_target_ms=100, min_budget=1.0, max_batch=4, max_wait_ms=0)
    with srv, concurrent.futures.ThreadPoolExecutor(17) as pool:
        info = srv.client.get("/info").json()
        assert info["latency"]["target_ms"] == 100 and info["latency"]["min_budget"] == 1.0
        assert info["latency"]["budgets"] == [1.0, 1.5, 2.0, 2.5] and info["serving_budget"] == 2.5
        post = lambda body: httpx.post(srv.url + "/predict", json=body, timeout=10)  # noqa: E731
        first = pool.submit(post, {"inputs": "first"})
        wait_for(lambda: slowed.calls, "the first call")
        bodies = [{"inputs": t} for t in texts[:14]] + [{"inputs": texts[14], "max_layers": 2},
                                                         {"inputs": texts[15], "budget": 0.5}]
        replies = [pool.submit(post, b) for b in bodies]
        assert queued.wait(10)
        assert first.result().json()["predictions"][0]["budget"] == 2.5  # nothing measured yet: as asked
        answers = [f.result() for f in replies]
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        preds = [r.json()["predictions"][0] for r in answers]
        ran = [p["budget"] for p in preds]
        assert all(1.0 <= b < 2.5 for b in ran[:15]), ran  # waited 0.3 s behind the slow call: lowered
        assert ran[15] == 0.5  # a client's lower budget is kept, never raised to the floor
        assert preds[14]["num_layers"] <= 2  # a client's cap still holds
        for p, text, b in zip(preds[:14], texts, ran, strict=False):  # each ran at the budget it says
            want = alone.predict([text], budget=b)[0]
            assert p["layers"] == want.layers and p["label"] == want.label
        lowered = [c for c in slowed.calls[1:] if "budget" in c[1]]
        assert lowered and all(max(b for b in c[1]["budget"]) < 2.5 for c in lowered)
        text = srv.client.get("/metrics").text
        got = {b: metric(text, "hadskip_budget_inputs_total", budget=f"{b:g}") for b in set(ran[:15])}
        assert sum(got.values()) == 15 and metric(text, "hadskip_budget_inputs_total", budget="2.5") == 1
        assert metric(text, "hadskip_budget_inputs_total", budget="other") == 1  # the client's 0.5
        assert metric(text, "hadskip_lowered_inputs_total") == 15
        assert 1.0 <= metric(text, "hadskip_budget") < 2.5
        assert metric(text, "hadskip_layer_row_seconds") >= 0
        info = srv.client.get("/info").json()["latency"]
        assert info["budget_now"] < 2.5 and info["measured_ms"]["layer_row"] >= 0


def test_without_load_answers_run_at_the_asked_budget(dialled):
    from test_server import metric

    rt = Runtime.load(dialled["model"], budget=2.0)
    srv, _ = _served(rt, budget=2.0, latency_target_ms=60_000)
    with srv:
        for body in ({"inputs": "a fine movie"}, {"inputs": ["dull", "fun and long"]}, {"inputs": "x", "budget": 1}):
            r = srv.client.post("/predict", json=body)
            assert r.status_code == 200
            assert {p["budget"] for p in r.json()["predictions"]} == {body.get("budget", 2.0)}
        text = srv.client.get("/metrics").text
        assert metric(text, "hadskip_lowered_inputs_total") == 0 and metric(text, "hadskip_budget") == 2.0
        assert metric(text, "hadskip_budget_inputs_total", budget="2") == 3


def test_tei_answers_say_the_budget_only_with_the_extras(dialled):
    rt = Runtime.load(dialled["model"])
    srv, _ = _served(rt, api="tei", latency_target_ms=60_000)
    with srv:
        r = srv.client.post("/predict", json={"inputs": "a fine movie"})
        assert r.status_code == 200 and "x-hadskip-budget" not in r.headers
        assert set(r.json()[0]) == {"label", "score"}
        r = srv.client.post("/predict", json={"inputs": "a fine movie", "hadskip": {}})
        assert r.headers["x-hadskip-budget"] == "trained"  # no --budget: the trained gates
        r = srv.client.post("/predict", json={"inputs": "a fine movie", "hadskip": {"budget": 1.5}})
        assert r.headers["x-hadskip-budget"] == "1.5"
        assert srv.client.get("/info").json()["hadskip"]["latency"]["target_ms"] == 60_000


def test_the_overload_bench_runs_its_three_policies(dialled, tmp_path):
    """bench/overload.py end to end, small: capacity probe, then each policy's server under open-loop arrivals;
    every request answered or refused with 429, the answers scored, the JSON and the plot written (the figures
    are the bench's to report)."""
    script = Path(__file__).resolve().parents[1] / "bench" / "overload.py"
    out, png = tmp_path / "overload.json", tmp_path / "overload.png"
    proc = subprocess.run([sys.executable, str(script), str(dialled["model"]), "--task", str(dialled["task"]),
                           "--budget", "2.5", "--target-ms", "200", "--seconds", "2", "--probe-s", "2",
                           "--drain-s", "30", "--inputs", "4", "--json", str(out), "--plot", str(png)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert list(report["policies"]) == ["queue", "target", "429"] and png.stat().st_size > 0
    assert report["settings"]["capacity_rows_per_s"] > 0
    for name, p in report["policies"].items():
        refused = round(p["pct_429"] * p["sent"] / 100)
        assert p["sent"] > 0 and p["answered"] + refused == p["sent"], (name, p)
        assert p["other_errors"] == p["unanswered"] == p["dropped_by_client"] == 0
        assert 0 <= p["accuracy"] <= 1 and len(p["per_second"]) == 2
    assert report["policies"]["queue"]["mean_budget"] == 2.5 and report["policies"]["queue"]["pct_429"] == 0
    assert 0.5 <= report["policies"]["target"]["mean_budget"] <= 2.5  # from the answers' "budget" fields
    assert report["policies"]["target"]["budget_gauge"]  # scraped from /metrics
    assert "queue" in proc.stdout and "target" in proc.stdout and "429" in proc.stdout
