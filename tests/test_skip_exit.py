"""The skip + exit route (issue 19, Build 2): exit heads trained with the gates (`--exit-heads`), the rule
(runtime/skip_exit.py), its calibration in `hadskip compare --variants skip-exit`, and what refuses it for now
(export) or says it uses the gates alone (eval, dial)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_runtime_support import one_torch_thread  # noqa: F401

from hadskip.errors import HadSkipError
from hadskip.runtime.exits import entropy
from hadskip.runtime.skip_exit import skip_exit
from hadskip.testing import tiny_model, tiny_run, tiny_teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --------------------------------------------------------------------------------------------- the rule

SURE, UNSURE = [0.999, 0.001], [0.5, 0.5]  # entropies ~0.008 and ln 2 ~ 0.69 nats


def _probs(*rows):
    return np.array(rows, dtype=np.float64)


def test_a_row_exits_at_the_first_confident_position_whose_layer_ran():
    gates = np.array([[0, 1, 1, 1],   # position 1 skipped (confident there: no exit), exits after position 2
                      [1, 1, 0, 1],   # exits after position 1
                      [1, 0, 1, 1],   # confident only at position 2, which it skipped: goes to the head
                      [0, 0, 0, 0]], dtype=bool)  # nothing ran: the head on the embeddings, 0 layers
    probs = np.stack([_probs(SURE, SURE, UNSURE, [0.2, 0.8]),
                      _probs(SURE, UNSURE, UNSURE, [0.2, 0.8]),
                      _probs(UNSURE, SURE, UNSURE, [0.2, 0.8]),
                      _probs(SURE, SURE, SURE, [0.2, 0.8])])
    d = skip_exit(gates, probs, 0.1)
    assert d.exit_at.tolist() == [1, 0, 3, 3]
    assert d.layers.tolist() == [1, 1, 3, 0]  # open gates up to and including the exit
    assert d.ran.tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0]]
    assert d.preds.tolist() == [0, 0, 1, 1]  # the exit's prediction, or the head's
    np.testing.assert_array_equal(d.probs[2], probs[2, 3])
    # a threshold per row: row 0 never exits at 0.001
    assert skip_exit(gates, probs, np.array([0.001, 0.1, 0.1, 0.1])).exit_at.tolist() == [3, 0, 3, 3]


def test_threshold_zero_is_the_gates_alone_and_nan_never_exits():
    rng = np.random.default_rng(0)
    gates = rng.random((50, 6)) < 0.5
    probs = rng.dirichlet([0.05, 0.05, 0.05], size=(50, 6))  # very confident rows: entropies near 0
    probs[0, :5] = [1.0, 0.0, 0.0]  # entropy exactly 0
    d = skip_exit(gates, probs, 0.0)
    assert (d.exit_at == 5).all() and (d.layers == gates.sum(1)).all()
    np.testing.assert_array_equal(d.ran, gates)
    np.testing.assert_array_equal(d.preds, probs[:, 5].argmax(-1))
    assert (skip_exit(gates, probs, 10.0).exit_at < 5).any()  # the probabilities do let rows exit
    nan = probs.copy()
    nan[:, :5] = np.nan
    assert (skip_exit(gates, nan, 10.0).exit_at == 5).all()  # a NaN entropy never exits
    assert (skip_exit(gates, probs, float("nan")).exit_at == 5).all()  # nor does a NaN threshold
    with pytest.raises(ValueError, match="must agree"):
        skip_exit(gates, probs[:, :5], 0.1)


def test_the_calibrated_threshold_meets_the_average_and_grows_the_exits():
    from hadskip.evaluation.skip_exit import TOLERANCE, threshold_for

    rng = np.random.default_rng(1)
    gates = rng.random((200, 6)) < 0.8
    probs = rng.dirichlet([0.3, 0.3], size=(200, 6))
    ent = entropy(probs)
    alone = gates.sum(1).mean()
    assert threshold_for(gates, ent, alone + 0.1) == 0.0  # the gates alone fit: no exits
    for target in (1.5, 2.5, 3.5):
        thr = threshold_for(gates, ent, target)
        layers = skip_exit(gates, probs, thr).layers.mean()
        assert layers <= target + TOLERANCE and layers > target - 0.1


# --------------------------------------------------------------------------------------------- the model


def test_a_run_with_exit_heads_saves_and_loads_them(tmp_path):
    from hadskip.modeling.checkpoint import load_run, save_run

    run = tiny_run(tmp_path / "run")
    model, tok, info = load_run(run)
    assert model.exits is None and "exit_heads" not in json.loads((run / "model_config.json").read_text())
    model.add_exits()
    assert len(model.exits) == model.num_layers - 1
    with torch.no_grad():
        for i, head in enumerate(model.exits):  # each exit its own weights
            for p in head.parameters():
                p.add_(0.1 * (i + 1))
    save_run(run, model, tok, info)
    assert json.loads((run / "model_config.json").read_text())["exit_heads"] is True
    again, _, _ = load_run(run)
    assert again.config.exit_heads and len(again.exits) == model.num_layers - 1
    for a, b in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert a[0] == b[0] and torch.equal(a[1], b[1]), a[0]
    assert any(k.startswith("exits.2.") for k in again.state_dict()) is False  # L - 1 = 2 exits of 3 layers
    assert any(k.startswith("exits.1.") for k in again.state_dict())


def test_an_old_model_config_without_the_key_loads_without_exits(tmp_path):
    from hadskip.modeling.checkpoint import load_model

    run = tiny_run(tmp_path / "run")
    f = run / "model_config.json"
    d = json.loads(f.read_text())
    d.pop("exit_heads", None)  # as every run written before exit heads
    f.write_text(json.dumps(d))
    m = load_model(run)
    assert m.config.exit_heads is False and m.exits is None
    d["exit_heads"] = True  # the same weights cannot pass for a model with exits
    f.write_text(json.dumps(d))
    with pytest.raises(HadSkipError, match="does not match"):
        load_model(run)


def _batch(tok, n=6):
    from hadskip.testing import tiny_sentences

    enc = tok(tiny_sentences(n, seed=2, min_words=2, max_words=10), padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "token_type_ids": enc["token_type_ids"], "labels": torch.tensor([0, 1] * (n // 2))}


def test_a_stage3_step_trains_the_exits_on_the_sampled_gates():
    from hadskip.training import stages
    from hadskip.training.losses import LossWeights, kd_logits

    teacher, tok = tiny_model(seed=0)
    student, _ = tiny_model(seed=1)
    batch = _batch(tok)
    weights = LossWeights(kd_attention=0.0)
    plain = stages._joint_step(student.train(), teacher, weights, 0.5, batch)
    assert "exits" not in plain
    student.add_exits()
    torch.manual_seed(0)
    parts = stages._joint_step(student, teacher, weights, 0.5, batch)
    assert "exits" in parts and set(plain) <= set(parts)
    assert "exits" not in stages._joint_step(student, teacher, weights, 0.5, batch, with_exits=False)  # stage II
    student.zero_grad()
    parts["exits"].backward()
    for head in student.exits:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.gate_parameters())  # via the gates
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in student.head.parameters())  # not the head's
    # the value: PABEE weights 1, 2 over exits 1, 2, each CE + KL from the teacher, on the same sampled gates
    student.eval()  # no dropout: the same forward twice
    with torch.no_grad():
        student.exits[0].head.out.weight.mul_(30)  # exit 1 far from exit 2, so their weights matter
    torch.manual_seed(5)
    parts = stages._joint_step(student, teacher, weights, 0.5, batch)
    torch.manual_seed(5)
    s = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], gates="sample",
                output_hidden=True, generator=None)
    with torch.no_grad():
        t = teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], gates="off").logits
    by_hand = []
    for i, head in enumerate(student.exits):
        z = head(s.hidden_states[i + 1], batch["attention_mask"])
        by_hand.append(torch.nn.functional.cross_entropy(z, batch["labels"]) + kd_logits(z, t))
    assert abs(float((by_hand[0] - by_hand[1]).detach())) > 0.1  # uniform weights would miss by > 1e-5 rel
    assert float(parts["exits"].detach()) == pytest.approx(float((by_hand[0] + 2 * by_hand[1]).detach() / 3), rel=1e-5)


# --------------------------------------------------------------------------------------------- compare and friends


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """`hadskip compare --variants skip-exit` on the tiny task (one seed, one budget)."""
    from hadskip.evaluation.compare import CompareConfig, compare

    torch.set_num_threads(1)
    env = tiny_teacher(tmp_path_factory.mktemp("skipexit"))
    out = env["root"] / "study"
    cfg = CompareConfig(None, [1.5], out=str(out), teacher=str(env["teacher"]), backbone=str(env["backbone"]),
                        max_len=32, baseline_epochs=0.5, progress=False, variants=["skip-exit"],
                        hadskip_options=dict(stage2_epochs=1, phase_epochs=1, final_phase_epochs=2, gate_lr=0.01,
                                             batch_size=16))
    return {**env, "out": out, "result": compare(cfg)}


def test_compare_scores_the_skip_exit_route(study):
    from hadskip.evaluation.compare.records import load_records

    res, out = study["result"], study["out"]
    row = next(r for r in res["rows"] if r["method"] == "hadskip-skip-exit")
    target = next(r for r in res["rows"] if r["method"] == "hadskip")["dev_avg_layers"]
    for key in ("value", "avg_layers", "dev_value", "dev_avg_layers", "gate_offset", "threshold", "exit_share",
                "path_entropy_bits", "distinct_paths", "top_path_share", "top_path"):
        assert key in row, key
    assert row["dev_avg_layers"] <= target + 0.05 or row["dev_avg_layers"] == min(t[2] for t in row["tried"])
    offsets = [t[0] for t in row["tried"]]
    assert 0.0 in offsets and min(offsets) < 0  # the trained gates and offsets that open more of them
    labels, records = load_records(out)
    rec = records[("hadskip-skip-exit", 1.5)]
    assert row["value"] == pytest.approx(float((rec["preds"] == labels).mean()))
    assert row["avg_layers"] == pytest.approx(float(rec["layers"].mean()))
    popcount = np.array([bin(int(c)).count("1") for c in rec["paths"]])
    np.testing.assert_array_equal(popcount, rec["layers"])  # each path is the layers run up to the exit
    run = json.loads((out / "hadskip-skip-exit-1.5" / "run.json").read_text())
    assert run["extra"]["config"]["exit_heads"] is True
    assert "| hadskip-skip-exit | 1.5 |" in (out / "compare.md").read_text()


def test_the_skip_exit_row_is_what_a_row_by_row_loop_decides(study):
    """The calibrated row on test again, one row at a time: the gates at the chosen offset, after each layer
    that ran its exit's entropy against the threshold, stop at the first exit (a loop, not the vectorised rule)."""
    from hadskip.evaluation.compare.records import load_records
    from hadskip.modeling.checkpoint import encode_run_split, load_run
    from hadskip.runtime.exits import softmax

    row = next(r for r in study["result"]["rows"] if r["method"] == "hadskip-skip-exit")
    model, tok, info = load_run(study["out"] / "hadskip-skip-exit-1.5")
    rs = encode_run_split(tok, info, "test")
    _, records = load_records(study["out"])
    rec = records[("hadskip-skip-exit", 1.5)]
    L = model.num_layers
    for j in range(len(rs.enc)):
        ids = torch.tensor([rs.enc.input_ids[j]])
        mask = torch.ones_like(ids)
        tt = torch.tensor([rs.enc.token_type_ids[j]])
        with torch.no_grad():
            o = model(ids, mask, tt, gates="route", gate_offset=row["gate_offset"], output_hidden=True)
            used, pred = 0, None
            for i in range(L):
                used += int(o.gates[0, i])
                if i == L - 1:
                    pred = int(o.logits[0].argmax())
                    break
                if o.gates[0, i]:
                    p = softmax(model.exits[i](o.hidden_states[i + 1], mask).numpy())[0]
                    if float(entropy(p)) < row["threshold"]:
                        pred = int(p.argmax())
                        break
        assert (pred, used) == (int(rec["preds"][j]), int(rec["layers"][j])), j


def test_stage2_leaves_the_exits_as_copies_and_stage3_trains_them(study):
    from safetensors.torch import load_file

    run = study["out"] / "hadskip-skip-exit-1.5"
    teacher = load_file(str(study["teacher"] / "model.safetensors"))
    head = {k[len("head."):]: v for k, v in teacher.items() if k.startswith("head.")}
    stage2, final = (load_file(str(d / "model.safetensors")) for d in (run / "stages" / "stage2", run))
    for i in range(2):
        for k, v in head.items():
            assert torch.equal(stage2[f"exits.{i}.head.{k}"], v), k  # mean-pooled exits wrap a copy of the head
    assert any(not torch.equal(final[f"exits.{i}.head.{k}"], v) for i in range(2) for k, v in head.items())


def test_threshold_zero_at_an_offset_is_plain_hadskip_there(study):
    from hadskip.evaluation.evaluate import predict
    from hadskip.evaluation.skip_exit import position_probs
    from hadskip.modeling.checkpoint import encode_run_split, load_run

    model, tok, info = load_run(study["out"] / "hadskip-skip-exit-1.5")
    rs = encode_run_split(tok, info, "dev")
    for offset in (0.0, -1.0, 0.7):
        gates, probs = position_probs(model, rs.enc, rs.pad_id, offset, batch_size=5)
        d = skip_exit(gates, probs, 0.0)
        logits, used, _ = predict(model, rs.enc, rs.pad_id, 7, gates="route", gate_offset=offset)
        np.testing.assert_array_equal(d.preds, logits.argmax(1))
        np.testing.assert_array_equal(d.layers, used.sum(1))


def test_export_refuses_a_run_with_exit_heads_and_eval_says_it_uses_the_gates(study, tmp_path):
    from hadskip.evaluation.report import evaluate_path
    from hadskip.export.api import export_model

    run = study["out"] / "hadskip-skip-exit-1.5"
    with pytest.raises(HadSkipError, match="exit heads of a gated run do not export yet") as err:
        export_model(run, tmp_path / "model", progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "model").exists()
    report = evaluate_path(str(run), split="dev", plots_dir=None)
    assert report["exit_threshold"] == 0.0 and "gates alone" in report["note"]
    assert "note" not in evaluate_path(str(study["out"] / "hadskip-1.5"), split="dev", plots_dir=None)


def test_exit_heads_need_two_layers():
    from hadskip.modeling.encoder import ModelConfig

    with pytest.raises(ValueError, match="at least 2 layers"):
        ModelConfig(backbone="x", model_type="bert", num_layers=1, hidden_size=8, num_heads=2, num_labels=2,
                    exit_heads=True)


def test_exit_pooling_is_recorded_checked_and_old_runs_keep_theirs(tmp_path):
    """Exit heads read the mean of the tokens unless told otherwise; a model config written before exit_pool
    existed (exit heads on the first token) keeps first-token heads; a bad --exit-pool is one line; compare
    refuses to reuse an early-exit run trained with first-token exits (it asks for mean pooling)."""
    from hadskip.evaluation.baselines import BaselineConfig
    from hadskip.evaluation.compare.reuse import reuse_or_check
    from hadskip.modeling.checkpoint import load_model, save_run, RunInfo
    from hadskip.modeling.units import MeanPooledHead
    from hadskip.training.config import HadSkipConfig

    model, tok = tiny_model(seed=0)
    model.add_exits()
    assert model.config.exit_pool == "mean" and all(isinstance(h, MeanPooledHead) for h in model.exits)
    run = tmp_path / "run"
    save_run(run, model, tok, RunInfo(task={"name": "t"}, max_len=32, kind="hadskip"))
    d = json.loads((run / "model_config.json").read_text())
    assert d["exit_pool"] == "mean" and isinstance(load_model(run).exits[0], MeanPooledHead)
    first, _ = tiny_model(seed=0)
    first.add_exits("first")
    old = tmp_path / "old"
    save_run(old, first, tok, RunInfo(task={"name": "t"}, max_len=32, kind="hadskip"))
    d = json.loads((old / "model_config.json").read_text())
    del d["exit_pool"]  # as written before the key existed
    (old / "model_config.json").write_text(json.dumps(d))
    assert not isinstance(load_model(old).exits[0], MeanPooledHead)
    with pytest.raises(HadSkipError, match="--exit-pool must be mean or first"):
        HadSkipConfig(exit_pool="cls")
    ee = tmp_path / "ee"
    cfg = dict(teacher="t", out=str(ee), epochs=1.0)
    save_run(ee, first, tok, RunInfo(task={"name": "t"}, max_len=32, kind="early-exit", extra={
        "config": {k: v for k, v in vars(BaselineConfig(**cfg)).items() if k != "exit_pool"}, "teacher": "t"}))
    with pytest.raises(HadSkipError, match="other settings: exit_pool"):
        reuse_or_check(ee, "early-exit", BaselineConfig(**cfg, exit_pool="mean"))
