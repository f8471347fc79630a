"""Training end to end on tiny models: fine-tune, the three HadSkip stages, resume, eval, baselines, DDP."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hadskip.modeling.checkpoint import load_run, read_info
from hadskip.errors import HadSkipError
from hadskip.training.config import HadSkipConfig
from hadskip.training.schedule import homotopy_schedule
from hadskip.training.stages import train_hadskip
from hadskip.testing import tiny_teacher


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_teacher(tmp_path_factory.mktemp("train"))


def test_homotopy_schedule():
    assert homotopy_schedule(6, 3) == [6, 5, 4, 3]
    assert homotopy_schedule(6, 2.5) == [6, 5, 4, 3, 2.5]
    assert homotopy_schedule(6, 3, homotopy=False) == [3]
    assert homotopy_schedule(4, 4) == [4]
    with pytest.raises(HadSkipError):
        homotopy_schedule(4, 5)
    assert homotopy_schedule(6, 2, start=4) == [4, 3, 2]
    assert homotopy_schedule(6, 2.5, start=5.5) == [5.5, 4.5, 3.5, 2.5]
    assert homotopy_schedule(6, 2.9, start=5.9) == [5.9, 4.9, 3.9, 2.9]  # no float-noise phase beside the last
    with pytest.raises(HadSkipError, match="must start between"):
        homotopy_schedule(6, 2, start=7)


def test_every_stage_iii_variant_trains_as_long_as_the_full_homotopy():
    from hadskip.training.schedule import phase_epochs, stage3_epochs

    base = dict(budget=2.0, phase_epochs=0.25, final_phase_epochs=0.5)
    assert phase_epochs(6, HadSkipConfig(**base)) == [0.25, 0.25, 0.25, 0.25, 0.5]
    assert phase_epochs(6, HadSkipConfig(**base, homotopy=False)) == [1.5]
    assert phase_epochs(6, HadSkipConfig(**base, homotopy_start=4)) == [0.25, 0.25, 1.0]
    from hadskip.modeling.checkpoint import RunInfo

    def info(extra):
        return RunInfo(task={}, max_len=8, kind="hadskip", budget=2.0, extra=extra)

    assert stage3_epochs(info({"phase_epochs": [0.25, 0.25, 1.0], "config": base}), 6) == 1.5  # what it recorded
    assert stage3_epochs(info({"config": {**base, "budget": 3.0}}), 6) == 1.5  # the run's budget, not the config's
    assert stage3_epochs(info({"config": {**base, "homotopy": False}}), 6) == 0.5  # older runs: K only
    with pytest.raises(HadSkipError, match="below the budget"):
        HadSkipConfig(**base, homotopy_start=1.5)


def test_finetune_writes_a_loadable_run(env):
    info = read_info(env["teacher"])
    assert info.kind == "finetune" and info.max_len == 32
    assert {"dev", "test", "seconds", "train_examples_per_s"} <= set(env["metrics"])
    model, tok, _ = load_run(env["teacher"])
    assert model.num_layers == 3 and tok.pad_token == "[PAD]"
    log = [json.loads(line) for line in (env["teacher"] / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "epoch" in r] == [1, 2]


def _hadskip_cfg(env, out, **kw):
    base = dict(backbone=str(env["backbone"]), task=str(env["task"]), out=str(out), teacher=str(env["teacher"]),
                budget=1.5, max_len=32, batch_size=16, stage2_epochs=0.5, phase_epochs=0.5, final_phase_epochs=0.5,
                progress=False)
    base.update(kw)
    return HadSkipConfig(**base)


@pytest.fixture(scope="module")
def gated(env):
    """(run dir, metrics) of a HadSkip run at budget 1.5 of 3 layers, trained long enough (and with a gate
    learning rate high enough) for the budget to bite on this tiny task."""
    out = env["root"] / "gated"
    metrics = train_hadskip(_hadskip_cfg(env, out, stage2_epochs=2, phase_epochs=1, final_phase_epochs=2,
                                         gate_lr=0.01))
    return out, metrics


def test_the_budget_closes_gates_along_the_homotopy(gated):
    """Gates that never close, a penalty that ignores its target, or phases that all train at the final budget
    would each break one of these (seeds 0-3: 1.0-2.0 test layers; mean training gate 0.69-0.71 at k = 2 and
    0.47-0.53 at k = 1.5)."""
    out, metrics = gated
    assert 0.75 <= metrics["test_avg_layers"] <= 2.25, metrics
    phases = {r["k"]: r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "k" in r}
    assert list(phases) == [3.0, 2.0, 1.5]
    assert phases[3.0]["dev_avg_layers"] >= 2.5  # k = L: the penalty keeps every gate open
    for k in (2.0, 1.5):  # each later phase trains its gates near its own share k / L
        assert abs(phases[k]["mean_gate"] - k / 3) <= 0.1, (k, phases[k]["mean_gate"])
    assert abs(phases[1.5]["dev_avg_layers"] - metrics["dev_avg_layers"]) < 1e-9


def test_three_stages_and_resume(env):
    out = env["root"] / "h"
    train_hadskip(_hadskip_cfg(env, out))
    info = read_info(out)
    assert info.kind == "hadskip" and info.budget == 1.5
    saved = json.loads((out / "progress.json").read_text())
    progress = saved["done"]
    assert list(progress) == ["stage2", "stage3-k3", "stage3-k2", "stage3-k1.5"]
    stages = [json.loads(line)["stage"] for line in (out / "log.jsonl").read_text().splitlines()
              if json.loads(line)["stage"] != "stage3-pass"]
    assert stages == ["stage2", "stage3", "stage3", "stage3", "done"]
    # a kill during the last phase: that phase is lost, the others are kept
    last = progress.pop("stage3-k1.5")
    (out / "progress.json").write_text(json.dumps(saved))
    shutil.rmtree(last)
    train_hadskip(_hadskip_cfg(env, out, resume=True))
    stages = [json.loads(line).get("k") for line in (out / "log.jsonl").read_text().splitlines()
              if json.loads(line).get("stage") != "stage3-pass"]
    assert stages[-2:] == [1.5, None]  # only k=1.5 ran again, then done
    assert len([s for s in stages if s == 3.0]) == 1
    # resuming with settings that change what the finished phases contain is refused
    with pytest.raises(HadSkipError, match=r"other settings \(budget\)"):
        train_hadskip(_hadskip_cfg(env, out, resume=True, budget=2.0))


def test_ablation_flags(env):
    out = env["root"] / "ablation"
    train_hadskip(_hadskip_cfg(env, out, gate_init=False, homotopy=False, kd="none", estimator="ste"))
    assert list(json.loads((out / "progress.json").read_text())["done"]) == ["stage3-k1.5"]
    log = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r.get("stage") == "stage3"]
    assert not any(k.startswith("kd_") for k in log[0])
    out2 = env["root"] / "pred-kd"
    train_hadskip(_hadskip_cfg(env, out2, gate_init=False, homotopy=False, kd="logits"))
    first = next(r for r in map(json.loads, (out2 / "log.jsonl").read_text().splitlines()) if r["stage"] == "stage3")
    assert "kd_logits" in first and "kd_hidden" not in first


def test_fewer_batches_than_processes_is_an_error_not_a_hang():
    from hadskip.data.batches import Encoded, loader

    enc = Encoded([[1, 2, 3]] * 16, [[0, 0, 0]] * 16, np.zeros(16, dtype=np.int64))
    with pytest.raises(HadSkipError, match="fewer than the 2 processes"):
        loader(enc, 32, 0, shuffle=True, rank=1, world=2)
    assert len(loader(enc, 8, 0, shuffle=True, rank=1, world=2)) == 1


def test_bad_teacher_is_refused(env):
    with pytest.raises(HadSkipError, match="not a hadskip run dir"):
        train_hadskip(_hadskip_cfg(env, env["root"] / "x", teacher=str(env["root"])))


def test_eval_report_and_plots(env, gated):
    from hadskip.evaluation.report import evaluate_path

    out, metrics = gated
    r = evaluate_path(str(out), "test", plots_dir=str(env["root"] / "plots"))
    for key in ("task", "split", "metric", "value", "examples", "num_layers", "avg_layers", "layer_usage",
                "layers_hist"):
        assert key in r
    assert r["examples"] == 24 and len(r["layer_usage"]) == 3
    assert sum(r["layers_hist"].values()) == 24
    assert abs(sum(int(k) * v for k, v in r["layers_hist"].items()) / 24 - r["avg_layers"]) < 1e-9
    assert r["avg_layers"] == pytest.approx(metrics["test_avg_layers"]) and r["value"] == metrics["test"]
    assert all(Path(p).stat().st_size > 1000 for p in r["plots"])


def test_exit_rules_by_hand():
    from hadskip.evaluation.baselines import exit_layers, patience_layers, threshold_for
    from hadskip.evaluation.baselines.rules import mix, mixed

    ent = np.array([[0.1, 0.5, 0.9], [0.6, 0.2, 0.3], [0.9, 0.8, 0.7]])
    assert exit_layers(ent, 0.25).tolist() == [0, 1, 2]
    assert abs(exit_layers(ent, threshold_for(ent, 2.0)).mean() + 1 - 2.0) < 1e-9
    preds = np.array([[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 0, 1], [1, 1, 0, 0]])
    assert patience_layers(preds, 0).tolist() == [0, 0, 0, 0]
    assert patience_layers(preds, 1).tolist() == [1, 2, 3, 1]  # the first repeat
    assert patience_layers(preds, 2).tolist() == [2, 3, 3, 3]  # two repeats in a row, else the last layer
    points = [(1.0, 0.5), (2.0, 0.7), (4.0, 0.8)]
    assert mix(points, 3.0) == (1, 0.5) and mixed(points, 1, 0.5) == (3.0, 0.75)
    assert mix(points, 0.5) == (0, 0.0) and mix(points, 9.0) == (1, 1.0)


def test_budgeted_exit_distils_and_keeps_the_teacher(env):
    from hadskip.evaluation.baselines import BaselineConfig, layer_map, train_budgeted_exit
    from hadskip.runtime.manifest import sha256_file

    assert layer_map(3, 6) == [2, 4, 6] and layer_map(2, 3) == [2, 3] and layer_map(1, 3) == [3]
    before = sha256_file(env["teacher"] / "model.safetensors")
    out = env["root"] / "be"
    m = train_budgeted_exit(BaselineConfig(teacher=str(env["teacher"]), out=str(out), epochs=1, batch_size=16,
                                           progress=False), 2)
    model, _, info = load_run(out)
    assert model.num_layers == 2 and info.kind == "budgeted-exit" and info.extra["layer_map"] == [2, 3]
    assert {"loss_task", "loss_kd_logits", "loss_kd_hidden", "loss_kd_attention", "loss_kd_embedding"} <= set(m)
    assert sha256_file(env["teacher"] / "model.safetensors") == before
    teacher, _, _ = load_run(env["teacher"])
    assert not torch.equal(model.layers[0].layer.attention.self.query.weight,
                           teacher.layers[0].layer.attention.self.query.weight)  # it trained


def test_exit_model_probabilities(env):
    from hadskip.evaluation.baselines import BaselineConfig, exit_probs, load_exit_model, train_exit_model
    from hadskip.data.batches import encode_split
    from hadskip.modeling.checkpoint import load_run_task
    from hadskip.evaluation.evaluate import predict

    out = env["root"] / "ee"
    m = train_exit_model(BaselineConfig(teacher=str(env["teacher"]), out=str(out), epochs=1, batch_size=16,
                                        progress=False))
    assert m["epochs"] == 1 and "loss_kd_logits" in m
    model, tok, info = load_exit_model(out, device="cpu")
    enc = encode_split(load_run_task(info.task).split("test"), tok, info.max_len)
    p = exit_probs(model, enc, tok.pad_token_id, batch_size=5)  # several batches, in length order
    assert p.shape == (24, 3, 2) and np.allclose(p.sum(-1), 1, atol=1e-5)
    logits, _, _ = predict(model.encoder, enc, tok.pad_token_id, gates="off")
    assert np.allclose(p[:, -1], torch.from_numpy(logits).softmax(-1).numpy(), atol=1e-5)  # exit L = the model
    with pytest.raises(HadSkipError, match="not an early-exit run"):
        load_exit_model(env["teacher"])


def test_accelerate_two_processes_agree(env, tmp_path):
    """Data-parallel fine-tuning with 2 CPU processes (gloo): both ranks end with the same weights."""
    # torchrun sets WORLD_SIZE/RANK; ACCELERATE_USE_CPU makes accelerate pick MULTI_CPU (gloo) on them
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000),
           str(Path(__file__).parent / "helpers" / "dist_worker.py"), str(tmp_path), str(env["task"]),
           str(env["backbone"])]
    envvars = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=envvars, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert ranks[0][0] == "2" and ranks[1][0] == "2"
    assert ranks[0][1] == ranks[1][1]
    assert (tmp_path / "run" / "run.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["finetune", "--task", "no-such-task"], "unknown task"),
    (["train", "--task", "rotten-tomatoes", "--budget", "0"], "--budget must be > 0"),
    (["train", "--kd", "some"], "--kd must be"),
    (["eval", "/nonexistent/run"], "neither a run dir"),
    (["compare", "--budgets", "x,y"], "--budgets takes numbers"),
])
def test_cli_bad_input_is_one_line(args, message, capsys, tmp_path):
    from hadskip.cli.main import main

    assert main([*args, "--out", str(tmp_path / "o")] if args[0] in ("finetune", "train") else args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_cli_finetune_on_a_bad_folder_task(env, tmp_path, capsys):
    from hadskip.cli.main import main

    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "dev", "test"):
        (bad / f"{split}.csv").write_text("sentence,label\nfine movie,1\nbad movie,0\n")
    assert main(["finetune", "--task", str(bad), "--backbone", str(env["backbone"]), "--out", str(tmp_path / "o")]) == 2
    assert "text" in capsys.readouterr().err


def test_compare_table_and_frontier(env, gated, tmp_path, monkeypatch):
    from hadskip.evaluation.compare import METHODS, CompareConfig, compare

    with pytest.raises(HadSkipError, match="differs from the teacher's task"):
        compare(CompareConfig("glue/sst2", [2.0], out=str(tmp_path / "x"), teacher=str(env["teacher"]),
                              progress=False))
    cfg = dict(out=str(tmp_path / "cmp"), teacher=str(env["teacher"]), backbone=str(env["backbone"]), max_len=32,
               baseline_epochs=0.5, progress=False)
    result = compare(CompareConfig(None, [1.5], hadskip_runs={1.5: str(gated[0])}, **cfg))
    assert [r["method"] for r in result["rows"]] == list(METHODS)
    rows = {r["method"]: r for r in result["rows"]}
    assert result["task"] == str(env["task"]) and rows["budgeted-exit"]["avg_layers"] == 2.0
    assert all(0 <= r["value"] <= 1 and 1 <= r["avg_layers"] <= 3 for r in result["rows"])
    assert rows["hadskip"]["avg_layers"] == pytest.approx(gated[1]["test_avg_layers"])
    target = rows["hadskip"]["dev_avg_layers"]
    # every dynamic rule was calibrated on dev to HadSkip's dev average (entropy: as close as the rows allow)
    assert rows["patience-exit"]["dev_avg_layers"] == pytest.approx(target)
    assert abs(rows["early-exit"]["dev_avg_layers"] - target) <= 1 / 24 + 1e-9
    assert set(result["curves"]) == set(METHODS) and len(result["curves"]["patience-exit"]) == 3
    assert result["margins"]["1.5"]["best_baseline"] in ("budgeted-exit", "early-exit", "patience-exit")
    assert result["peak_rss_mb"]["process"] > 0 and result["seconds"]["total"] > 0
    assert (tmp_path / "cmp" / "frontier.png").stat().st_size > 5000
    assert "| hadskip | 1.5 |" in (tmp_path / "cmp" / "compare.md").read_text()
    # one seed recommends a route too: the best dev metric among the routes that ship, within the budget
    from hadskip.runtime.dial import BUDGET_MARGIN

    pick = result["deploy"]["1.5"]
    shippable = {m: r for m, r in rows.items() if m in ("budgeted-exit", "early-exit", "hadskip", "hadskip-dial")
                 and r["dev_avg_layers"] <= target + BUDGET_MARGIN}
    assert pick["route"] == max(shippable, key=lambda m: shippable[m]["dev_value"])
    assert f"- budget 1.5: **{pick['route']}**" in (tmp_path / "cmp" / "compare.md").read_text()
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["metric"] == "accuracy"
    # a second call reuses every run it trained: nothing may train again
    import hadskip.evaluation.baselines as hb

    def no_training(*a, **k):
        raise AssertionError("trained again")

    for name in ("train_budgeted_exit", "train_exit_model"):
        monkeypatch.setattr(hb, name, no_training)
    again = compare(CompareConfig(None, [1.5], hadskip_runs={1.5: str(gated[0])}, **cfg))
    assert again["rows"] == result["rows"]
    # ... and refuses, before training anything, runs made with other settings
    budgeted = next(r["run"] for r in result["rows"] if r["method"] == "budgeted-exit")
    info = json.loads((Path(budgeted) / "run.json").read_text())
    info["extra"]["config"]["lr"] = 1e-4  # as if trained with another learning rate
    (Path(budgeted) / "run.json").write_text(json.dumps(info))
    with pytest.raises(HadSkipError, match="holds another run \\(other settings: lr\\)"):
        compare(CompareConfig(None, [1.5], hadskip_runs={1.5: str(gated[0])}, **cfg))
    with pytest.raises(HadSkipError, match="trained with --kd full, the comparison distils with logits"):
        compare(CompareConfig(None, [1.5], hadskip_runs={1.5: str(gated[0])}, **cfg, kd="logits"))
    with pytest.raises(HadSkipError, match="--dial-from .*'finetune' run"):
        compare(CompareConfig(None, [1.5], hadskip_runs={1.5: str(gated[0])}, **cfg,
                              dial_from=str(env["teacher"])))
    dial = next(r for r in result["rows"] if r["method"] == "hadskip-dial")
    assert abs(dial["dev_avg_layers"] - target) <= 0.05  # the dial row is matched on dev too


def test_compare_refuses_mismatched_hadskip_runs(env, gated, tmp_path):
    from hadskip.evaluation.compare import CompareConfig, compare

    def run(k, path, **kw):
        compare(CompareConfig(None, [k], out=str(tmp_path / "c"), teacher=str(kw.pop("teacher", env["teacher"])),
                              hadskip_runs={k: str(path)}, progress=False, **kw))

    with pytest.raises(HadSkipError, match="trained for budget 1.5, not 2"):
        run(2.0, gated[0])
    with pytest.raises(HadSkipError, match="not a `hadskip train` run"):
        run(1.5, env["teacher"])
    other = tmp_path / "ft2"  # another teacher: same task, other weights
    shutil.copytree(env["teacher"], other)
    t, _, _ = load_run(other)
    with torch.no_grad():
        t.head.out.bias.add_(1.0)
    from hadskip.modeling.checkpoint import save_run

    save_run(other, t, load_run(other)[1], read_info(other))
    with pytest.raises(HadSkipError, match="trained from teacher"):
        run(1.5, gated[0], teacher=other)
    copy = tmp_path / "ft-copy"  # a copy of the right teacher is accepted up to the training step
    shutil.copytree(env["teacher"], copy)
    from hadskip.evaluation.compare import check_hadskip_run

    check_hadskip_run(gated[0], 1.5, copy, read_info(copy).task)
    moved = json.loads((gated[0] / "run.json").read_text())
    moved["task"] = dict(moved["task"], name="elsewhere")
    fake = tmp_path / "fake"
    shutil.copytree(gated[0], fake, ignore=shutil.ignore_patterns("stages"))
    (fake / "run.json").write_text(json.dumps(moved))
    with pytest.raises(HadSkipError, match="task elsewhere differs"):
        run(1.5, fake)
    with pytest.raises(HadSkipError, match="not in --budgets"):
        CompareConfig(None, [2.0], hadskip_runs={1.5: str(gated[0])})


def test_compare_refuses_a_run_in_out_trained_with_settings_it_was_not_asked_for(env, gated, tmp_path, monkeypatch):
    """A HadSkip run already in OUT was reused when it differed from the comparison only in settings left at their
    defaults (a study run with a shorter schedule, then `compare` without those options, reported the short run
    as the default one); giving the same values explicitly was refused. Omitted now means the default."""
    import hadskip.evaluation.compare.run as cr
    from hadskip.evaluation.compare import CompareConfig, compare

    out = tmp_path / "cmp"
    shutil.copytree(gated[0], out / "hadskip-1.5")  # trained with stage2_epochs 2, gate_lr 0.01, batch_size 16

    def past_the_check(*a, **k):
        raise AssertionError("past the reuse check")

    monkeypatch.setattr(cr, "train_budgeted_exit", past_the_check)
    monkeypatch.setattr(cr, "train_hadskip", past_the_check)
    cfg = dict(out=str(out), teacher=str(env["teacher"]), backbone=str(env["backbone"]), max_len=32,
               baseline_epochs=0.5, progress=False)
    with pytest.raises(HadSkipError, match="trained with other batch_size, gate_lr, stage2_epochs"):
        compare(CompareConfig(None, [1.5], **cfg))
    with pytest.raises(AssertionError, match="past the reuse check"):  # the settings it was trained with: reused
        compare(CompareConfig(None, [1.5], hadskip_options=dict(stage2_epochs=2, phase_epochs=1,
                                                                final_phase_epochs=2, gate_lr=0.01, batch_size=16),
                              **cfg))


def test_hard_tail_trains_the_backbone_on_frozen_gate_decisions(env, tmp_path, monkeypatch):
    """--hard-tail: the last steps run on the gates' inference decisions; the gates do not move there."""
    from hadskip.training import loop

    real = loop.run_steps
    seen = []

    def spy(acc, model, dl, opt, steps, *a, **kw):
        m = acc.unwrap_model(model)
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        out = real(acc, model, dl, opt, steps, *a, **kw)
        seen.append((a[2], steps, {n: torch.equal(before[n], p) for n, p in m.named_parameters()}))
        return out

    monkeypatch.setattr(loop, "run_steps", spy)
    cfg = _hadskip_cfg(env, tmp_path / "h", hard_tail=0.5, homotopy=False, final_phase_epochs=1.0)
    train_hadskip(cfg)
    desc, steps, same = seen[-1]
    # no homotopy trains as long as the homotopy 3, 2, 1.5 would: 0.5 + 0.5 + 1.0 epochs of 4 steps; half hard
    assert desc.endswith("hard gates") and steps == 4
    assert all(same[n] for n in same if n.startswith("gates."))
    assert not all(same[n] for n in same if not n.startswith("gates."))
    assert not all(v for n, v in seen[-2][2].items() if n.startswith("gates."))  # the soft steps moved them
    log = [json.loads(line) for line in (tmp_path / "h" / "log.jsonl").read_text().splitlines()]
    assert "hard_task" in log[-2] and "budget" in log[-2] and "hard_budget" in log[-2]
    with pytest.raises(HadSkipError, match="--hard-tail"):
        _hadskip_cfg(env, tmp_path / "x", hard_tail=1.0)


def test_a_missed_budget_warns_and_is_recorded(env, capsys):
    """Gates that barely train (no stage II, no homotopy, a tiny gate learning rate) keep every layer at budget
    1 of 3: the run is saved, exit 0, with a `warning:` line naming the next step, "budget_missed" in --json and
    in run.json; a run within the margin (budget 3 of 3, every gate open) has no warning and null."""
    from hadskip.cli.main import main
    from hadskip.training.schedule import BUDGET_MARGIN, budget_miss

    base = ["train", "--backbone", str(env["backbone"]), "--task", str(env["task"]), "--teacher", str(env["teacher"]),
            "--max-len", "32", "--batch-size", "16", "--no-gate-init", "--no-homotopy", "--gate-lr", "1e-9",
            "--final-phase-epochs", "0.5", "--json"]
    out = env["root"] / "missed"
    assert main([*base, "--out", str(out), "--budget", "1"]) == 0
    captured = capsys.readouterr()
    missed = json.loads(captured.out)["budget_missed"]
    assert missed["dev_avg_layers"] > 1 + BUDGET_MARGIN and missed["budget"] == 1.0
    warning = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "--final-phase-epochs" in warning[0] and "hadskip dial" in warning[0], warning
    assert read_info(out).metrics["budget_missed"] == missed
    assert main([*base, "--out", str(env["root"] / "kept"), "--budget", "3"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["budget_missed"] is None and "warning:" not in captured.err
    assert budget_miss(2.0, 2.0 + BUDGET_MARGIN, 2.0) is None and budget_miss(2.0, 1.7, 2.0)["gap"] < 0


def test_eval_export_and_info_report_the_layers_run(env, tmp_path, capsys):
    """A run trained at budget 1 that keeps every layer: `hadskip eval` (run dir and model dir) reports the
    layers it ran and the miss, the export records the trained averages, /info shows them and the average the
    served rows ran; not only "budget 1"."""
    from hadskip.cli.main import main
    from hadskip.evaluation.report import evaluate_path
    from hadskip.export import export_model
    from hadskip.runtime import Runtime
    from hadskip.runtime.serve import ServeConfig, create_app

    out = tmp_path / "run"
    metrics = train_hadskip(_hadskip_cfg(env, out, budget=1.0, gate_init=False, homotopy=False, gate_lr=1e-9))
    assert metrics["dev_avg_layers"] > 2
    trained = {"dev": metrics["dev_avg_layers"], "test": metrics["test_avg_layers"]}
    report = evaluate_path(str(out), split="dev", plots_dir=None)
    assert report["trained_avg_layers"] == trained
    assert report["budget_missed"]["budget"] == 1.0 and report["budget_missed"]["avg_layers"] == report["avg_layers"]
    export_model(out, tmp_path / "model", max_batch=8, progress=False)
    # a model dir records a folder task by name only (no build paths): --task names the folder
    assert main(["eval", str(tmp_path / "model"), "--split", "dev", "--task", str(env["task"])]) == 0
    assert "warning:" in capsys.readouterr().err
    report = evaluate_path(str(tmp_path / "model"), split="dev", task=str(env["task"]), plots_dir=None)
    assert report["trained_avg_layers"] == pytest.approx(trained) and report["budget_missed"]["budget"] == 1.0
    rt = Runtime.load(tmp_path / "model")
    assert rt.info.trained_avg_layers == pytest.approx(trained)
    from fastapi.testclient import TestClient

    with TestClient(create_app(ServeConfig(), lambda: rt, model_name="m"), headers={"host": "localhost"}) as client:
        import time

        deadline = time.monotonic() + 30  # the model loads in a thread at startup (/health 503 until then)
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        info = client.get("/info").json()
        assert info["budget"] == 1.0 and info["trained_avg_layers"] == pytest.approx(trained)
        assert info["served_avg_layers"] is None
        texts = ["a fine movie", "dull", "the plot was thin"]
        assert client.post("/predict", json={"inputs": texts, "max_layers": 2}).status_code == 200
        want = np.minimum(rt.predict(texts).num_layers, 2).mean()
        assert client.get("/info").json()["served_avg_layers"] == pytest.approx(want, abs=1e-4)
