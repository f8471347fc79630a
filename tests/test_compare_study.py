"""`hadskip compare` as a study (issue 19): the cascade baseline, per-row records and path diversity, the paired
bootstrap, `--seeds` (per-seed runs reused, statistics over seeds), `--variants`, `--train-examples`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hadskip.errors import HadSkipError
from hadskip.evaluation.compare.cascade import Stage, calibrated, threshold_for
from hadskip.evaluation.compare.records import path_codes, path_diversity
from hadskip.evaluation.compare.stats import mean_se, paired_bootstrap
from hadskip.testing import tiny_teacher
from hadskip.training.config import TrainConfig

# --------------------------------------------------------------------------------------------- cascade


def _stage(conf, k=2, L=6):
    conf = np.asarray(conf, dtype=np.float64)
    probs = np.stack([1 - conf, conf], axis=1)  # class 1 with confidence conf (conf >= 0.5)
    return Stage(probs, k, np.zeros(len(conf), dtype=np.int64), L)


def test_the_cascade_defers_the_least_confident_rows_up_to_the_target():
    st = _stage([0.55, 0.9, 0.6, 0.99, 0.7, 0.8], k=2, L=6)  # 6 rows: each deferred row costs 6 more layers
    thr = threshold_for(st, 3.0)  # pays for one deferred row: (3 - 2) * 6 / 6
    preds, layers = st.at(thr)
    assert layers.mean() == pytest.approx(3.0) and list(np.flatnonzero(layers > 2)) == [0]
    assert preds[0] == 0 and (preds[1:] == 1).all()  # the deferred row takes the full model's answer
    for target in (2.0, 2.5, 3.9, 4.0, 7.5, 8.0, 20.0):  # never more layers than the target
        assert st.at(threshold_for(st, target))[1].mean() <= target + 1e-9
    assert st.at(threshold_for(st, 8.0))[1].mean() == pytest.approx(8.0)  # every row deferred
    assert threshold_for(st, 1.5) is None  # the first model alone costs more than the target
    tied = _stage([0.7, 0.7, 0.7, 0.9], k=1, L=4)  # ties stay together: never over the target
    assert tied.at(threshold_for(tied, 2.0))[1].mean() <= 2.0


def test_the_cascade_picks_its_first_model_on_dev():
    labels = {"dev": np.array([1, 1, 0, 0]), "test": np.array([1, 0, 1, 0])}

    def score(preds, split):
        return float((preds == labels[split]).mean())

    good = _stage([0.9, 0.9, 0.6, 0.65], k=1, L=4)  # says 1 everywhere: right on dev rows 0-1
    stages = {1: (good, good), 2: (_stage([0.51] * 4, k=2, L=4), _stage([0.51] * 4, k=2, L=4))}
    best = calibrated(stages, 2.0, score)
    assert best["first_layers"] == 1 and best["dev_avg_layers"] <= 2.0  # 1 layer + 1 of 4 rows deferred
    assert best["deferred_test"] == pytest.approx(0.25)
    big = _stage([0.9] * 4, k=3, L=4)
    assert calibrated({3: (big, big)}, 2.0, score) is None

# --------------------------------------------------------------------------------------------- records, statistics


def test_random_subsets_cover_every_size_and_layer():
    from hadskip.evaluation.baselines.anysubset import random_subsets

    m = random_subsets(4000, 6, torch.Generator().manual_seed(0))
    sizes = m.sum(1)
    assert set(sizes.int().tolist()) == set(range(1, 7))
    assert abs(float((sizes == 1).float().mean()) - 1 / 6) < 0.03  # sizes uniform in 1..L
    assert (m.mean(0) - 3.5 / 6).abs().max() < 0.04  # every layer equally likely
    two = m[sizes == 2]
    pairs = {tuple(r.nonzero().flatten().tolist()) for r in two}
    assert len(pairs) == 15  # every 2-subset of 6 layers occurs


def test_path_diversity_counts_routes():
    gates = np.array([[1, 0, 1], [1, 0, 1], [0, 1, 1], [1, 0, 1]])
    codes = path_codes(gates)
    assert list(codes) == [5, 5, 6, 5]
    d = path_diversity(codes, 3)
    assert d["distinct_paths"] == 2 and d["top_path"] == [1, 3] and d["top_path_share"] == 0.75
    assert d["path_entropy_bits"] == pytest.approx(-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)), abs=1e-4)
    assert path_diversity(path_codes(np.ones((5, 3))), 3)["path_entropy_bits"] == 0.0  # one static route


def test_the_paired_bootstrap_sees_a_real_difference_and_not_a_fake_one():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 1000)
    b = np.where(rng.random((3, 1000)) < 0.80, labels, 1 - labels)  # 3 seeds, ~80% right
    a = b.copy()
    fix = (a != labels) & (rng.random(a.shape) < 0.5)
    a[fix] = labels[np.nonzero(fix)[1]]  # a fixes about half of b's errors: ~ +10 points
    ci = paired_bootstrap(a, b, labels, n_boot=500)
    assert ci["low"] > 0.05 and ci["low"] <= ci["diff"] <= ci["high"]
    same = paired_bootstrap(b, b, labels, n_boot=200)
    assert same["diff"] == 0 and same["low"] == 0 and same["high"] == 0
    other = np.where(rng.random((3, 1000)) < 0.80, labels, 1 - labels)  # another route of the same skill
    tie = paired_bootstrap(other, b, labels, n_boot=500)
    assert tie["low"] < 0 < tie["high"]
    mcc = paired_bootstrap(a, b, labels, metric="mcc", n_boot=50)
    assert mcc["low"] > 0
    with pytest.raises(ValueError, match="rows"):
        paired_bootstrap(a[:, :10], b, labels)
    assert mean_se([1.0]) == (1.0, 0.0) and mean_se([1.0, 3.0])[1] == pytest.approx(1.0)

# --------------------------------------------------------------------------------------------- the study


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_teacher(tmp_path_factory.mktemp("study"))


def test_train_examples_is_one_subset_for_every_seed_and_leaves_dev_and_test_whole(env):
    from hadskip.data.sources import load_task

    a = load_task(str(env["task"]), seed=0, train_examples=40)
    b = load_task(str(env["task"]), seed=3, train_examples=40)
    whole = load_task(str(env["task"]))
    assert len(a.train) == 40 and a.train.texts == b.train.texts
    assert a.dev.texts == whole.dev.texts and a.test.texts == whole.test.texts
    with pytest.raises(HadSkipError, match="train-examples must be at least 1"):
        TrainConfig(train_examples=0)


def test_compare_over_seeds_with_a_variant(env, monkeypatch):
    from hadskip.evaluation.compare import CompareConfig, compare

    from hadskip.training.finetune import finetune

    out = env["root"] / "study"
    teacher = env["root"] / "ft-56"  # fine-tuned on the students' 56 rows: the other 8 are held out from every run
    finetune(TrainConfig(backbone=str(env["backbone"]), task=str(env["task"]), out=str(teacher), max_len=32,
                         batch_size=16, epochs=2, lr=1e-3, train_examples=56, progress=False))
    cfg = CompareConfig(None, [1.5], out=str(out), teacher=str(teacher), backbone=str(env["backbone"]),
                        max_len=32, baseline_epochs=0.5, progress=False, seeds=[0, 1],
                        variants=["per-layer", "attn-gate"],
                        train_examples=56, oracle=True,
                        hadskip_options=dict(stage2_epochs=2, phase_epochs=1, final_phase_epochs=2, gate_lr=0.01,
                                             batch_size=16))
    res = compare(cfg)
    assert res["seeds"] == [0, 1]
    for s in (0, 1):
        one = json.loads((out / f"seed-{s}" / "compare.json").read_text())
        assert one["seed"] == s and (out / f"seed-{s}" / "rows.npz").is_file()
        run = json.loads((out / f"seed-{s}" / "hadskip-per-layer-1.5" / "run.json").read_text())
        assert run["extra"]["config"]["gate_penalty"] == "per-layer" and run["extra"]["config"]["seed"] == s
        assert run["extra"]["config"]["train_examples"] == 56
        budgeted = next(r["run"] for r in one["rows"] if r["method"] == "budgeted-exit")
        base = json.loads((out / f"seed-{s}" / budgeted / "run.json").read_text())
        assert base["extra"]["config"]["seed"] == s and base["extra"]["config"]["train_examples"] == 56
        # dev curves: each run's last point is the dev metric it finished with
        curves = one["dev_curves"]
        assert curves[Path(budgeted).name][-1][1] == pytest.approx(base["metrics"]["dev"])
        assert curves["hadskip@1.5"][-1][2] == pytest.approx(json.loads(
            (out / f"seed-{s}" / "hadskip-1.5" / "run.json").read_text())["metrics"]["dev"])
        assert [p[0] for p in curves["hadskip-per-layer@1.5"]] == sorted(p[0] for p in curves["hadskip-per-layer@1.5"])
        exits = next(v for n, v in curves.items() if n.startswith("early-exit"))
        assert len(exits[-1][1]) == 3  # every exit of the 3-layer model
        assert (out / f"seed-{s}" / "dev_curves.png").is_file()
    rows = {r["method"]: r for r in res["rows"]}
    assert {"budgeted-exit", "cascade", "early-exit", "hadskip", "hadskip-dial", "hadskip-per-layer"} <= set(rows)
    per_seed = [json.loads((out / f"seed-{s}" / "compare.json").read_text()) for s in (0, 1)]
    values = [next(r["value"] for r in p["rows"] if r["method"] == "hadskip") for p in per_seed]
    assert rows["hadskip"]["value"] == pytest.approx(np.mean(values))
    assert rows["hadskip"]["value_se"] == pytest.approx(abs(values[0] - values[1]) / 2)
    assert 0 <= rows["hadskip-per-layer"]["top_path_share"] <= 1
    attn = json.loads((out / "seed-1" / "hadskip-attn-gate-1.5" / "run.json").read_text())
    assert attn["extra"]["config"]["gate_pool"] == "attention"
    assert json.loads((out / "seed-1" / "hadskip-attn-gate-1.5" / "model_config.json").read_text())[
        "gate_pool"] == "attention"
    # the headroom: the per-row oracle over K-subsets is never below the best fixed subset, and neither is deployed
    assert rows["oracle"]["value"] >= rows["best-subset"]["value"]
    assert res["deploy"]["1.5"]["route"] not in ("oracle", "best-subset", "full", "subset-router")
    # the subset router: fitted on the 8 training rows no run trained on, paired with the best fixed subset
    one = json.loads((out / "seed-0" / "compare.json").read_text())
    router = next(r for r in one["rows"] if r["method"] == "subset-router")
    assert router["train_rows"] == 64 - 56 and router["avg_layers"] == router["dev_avg_layers"]
    assert 0 < router["top_path_share"] <= 1 and rows["subset-router"]["seeds"] == 2
    assert ("subset-router", "best-subset") in {(p["route"], p["minus"]) for p in res["pairs"]}
    pairs = {(p["route"], p["minus"]) for p in res["pairs"]}
    assert ("hadskip", "budgeted-exit") in pairs and ("cascade", "budgeted-exit") in pairs
    assert all(p["low"] <= p["diff"] <= p["high"] for p in res["pairs"])
    assert res["deploy"]["1.5"]["route"] in rows
    md = (out / "compare.md").read_text()
    assert "Route to deploy" in md and "| hadskip-per-layer | 1.5 |" in md
    assert (out / "frontier.png").stat().st_size > 5000
    # a second call trains nothing: every seed's runs are reused
    import hadskip.evaluation.baselines as hb
    import hadskip.evaluation.compare.run as cr

    def no_training(*a, **k):
        raise AssertionError("trained again")

    for mod, name in ((hb, "train_budgeted_exit"), (hb, "train_exit_model"), (cr, "train_hadskip"),
                      (cr, "train_budgeted_exit"), (cr, "train_exit_model")):
        monkeypatch.setattr(mod, name, no_training)
    again = compare(cfg)
    assert again["rows"] == res["rows"]
    from dataclasses import replace

    with pytest.raises(HadSkipError, match="trained with other train_examples"):  # runs of another subset
        compare(replace(cfg, train_examples=None))
    with pytest.raises(HadSkipError, match="without --seeds"):
        CompareConfig(None, [1.5], seeds=[0, 1], dial_from="x")
    with pytest.raises(HadSkipError, match="unknown --variants"):
        CompareConfig(None, [1.5], variants=["wide"])
    with pytest.raises(HadSkipError, match="distinct seeds"):
        CompareConfig(None, [1.5], seeds=[0, 0])


def test_token_types_reach_a_truncated_model():
    """Budgeted exit stayed at the majority class on the pair tasks: not because the truncated model loses the
    segment ids of a pair (changing them changes its output, as it does the teacher's)."""
    from hadskip.evaluation.baselines.budgeted import truncate
    from hadskip.testing import tiny_model

    model, tok = tiny_model("bert")
    enc = tok(["a good movie"], ["not very fun at all"], return_tensors="pt")
    ids, mask, tt = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    assert tt.any()
    for m in (model, truncate(model, 1)):
        with torch.no_grad():
            a = m(ids, mask, tt, gates="off").logits
            b = m(ids, mask, torch.zeros_like(tt), gates="off").logits
        assert not torch.allclose(a, b)


def test_a_baseline_reports_each_epoch_where_stderr_is_no_terminal(env, capsys, tmp_path):
    """`compare --json` printed nothing for 20+ minutes while baselines trained (rich bars draw nothing when
    stderr is a pipe): each epoch now ends with a dev line."""
    from hadskip.evaluation.baselines import BaselineConfig, train_budgeted_exit

    train_budgeted_exit(BaselineConfig(teacher=str(env["teacher"]), out=str(tmp_path / "b"), epochs=2.0,
                                       batch_size=16), 1)
    lines = [line for line in capsys.readouterr().err.splitlines() if "epochs, dev" in line]
    assert [line.split(":")[1].split(" epochs")[0].strip() for line in lines] == ["1", "2"]


def test_the_seed_statistics_pair_routes_at_any_budget(tmp_path):
    """rows.npz keyed each record by the budget written with 6 significant digits, so at --budgets 2.1234567 the
    records read back were at 2.12346, matched no row's budget and every paired interval was silently left out."""
    from hadskip.evaluation.compare.records import record, save_records
    from hadskip.evaluation.compare.seeds import aggregate

    k = 2.1234567
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    per_seed, dirs = [], []
    for s in (0, 1):
        preds = {m: np.where(rng.random(50) < 0.8, labels, 1 - labels) for m in ("hadskip", "budgeted-exit")}
        d = tmp_path / f"seed-{s}"
        d.mkdir()
        save_records(d, labels, {(m, k): record(p, np.full(50, 2.0)) for m, p in preds.items()})
        rows = [{"method": m, "budget": k, "value": float((p == labels).mean()), "avg_layers": 2.0,
                 "dev_value": 0.8, "dev_avg_layers": 2.0} for m, p in preds.items()]
        per_seed.append({"task": "t", "metric": "accuracy", "num_labels": 2, "num_layers": 6, "seed": s,
                         "rows": rows})
        dirs.append(d)
    res = aggregate(per_seed, dirs, n_boot=50)
    assert [(p["route"], p["minus"], p["budget"]) for p in res["pairs"]] == [("hadskip", "budgeted-exit", k)]


def test_the_route_to_deploy_stays_within_the_budget(tmp_path):
    """At budget 2.5 budgeted exit rounds to 3 layers: better on dev, but over the budget, so not recommended."""
    from hadskip.evaluation.compare.records import record, save_records
    from hadskip.evaluation.compare.seeds import aggregate, to_markdown

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    layers = {"hadskip": 2.5, "budgeted-exit": 3.0, "cascade": 2.5}
    dev = {"hadskip": 0.80, "budgeted-exit": 0.85, "cascade": 0.82}
    per_seed, dirs = [], []
    for s in (0, 1):
        d = tmp_path / f"seed-{s}"
        d.mkdir()
        save_records(d, labels, {(m, 2.5): record(labels, np.full(40, v)) for m, v in layers.items()})
        rows = [{"method": m, "budget": 2.5, "value": 0.8, "avg_layers": v, "dev_value": dev[m],
                 "dev_avg_layers": v} for m, v in layers.items()]
        per_seed.append({"task": "t", "metric": "accuracy", "num_labels": 2, "num_layers": 6, "seed": s, "rows": rows})
        dirs.append(d)
    res = aggregate(per_seed, dirs, n_boot=20)
    # the cascade is ahead on dev within the budget, but it does not export: HadSkip is recommended, the cascade named
    assert res["deploy"]["2.5"]["route"] == "hadskip" and res["deploy"]["2.5"]["over_budget"] == ["budgeted-exit"]
    assert [a["route"] for a in res["deploy"]["2.5"]["ahead_unshipped"]] == ["cascade"]
    md = to_markdown(res)
    assert "over the budget on dev: budgeted-exit" in md and "ahead on dev but not shipped: cascade" in md
