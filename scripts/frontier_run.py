#!/usr/bin/env python3
"""The accuracy-compute frontier of several tasks inside a wall-clock budget (e.g. a GPU machine lent for minutes).

For each task, in order: fine-tune the teacher (3 epochs), time its steps, pick the longest HadSkip schedule whose
projected cost fits the task's share of the time left (stage III epochs per phase / last phase: 1/2 (HadSkip's
defaults), 0.5/1, 0.25/0.5), then `hadskip compare --budgets ...` with that schedule; every baseline trains as long
as HadSkip's stage III at its budget (hadskip.evaluation.compare). With --study, a stage II / homotopy study at one
budget of
the first task follows, each variant with the same total epochs, chosen on dev. Results are copied to OUT as each
job ends, so a run cut short keeps what finished:

    OUT/<task>/compare.json, compare.md, frontier.png      OUT/study.json      OUT/frontier_run.json

    python scripts/frontier_run.py --out OUT --seconds 400 --backbone PATH --task rotten-tomatoes --task FOLDER

A backbone folder whose weights are stored in fp16 (to carry it in less space) is restored to fp32 first.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

SCHEDULES = ((1.0, 2.0), (0.5, 1.0), (0.25, 0.5))  # (phase_epochs, final_phase_epochs), longest first
# cost of one training step relative to a fine-tuning step (measured on CPU: stage III runs the teacher and the
# student with attentions; stage II backpropagates through the frozen backbone to the gates)
COST = {"stage2": 2.0, "stage3": 2.5, "budgeted": 1.5, "exits": 2.5}
VARIANTS = {  # the stage II / homotopy study (hadskip.training.stages.HadSkipConfig fields)
    "default": {},
    "no-homotopy": {"homotopy": False},
    "homotopy-from-L-1": {"homotopy_start": None},  # filled in with L - 1
    "stage2-kd": {"stage2_kd": True},
    "hard-tail-0.5": {"hard_tail": 0.5},
}


def fp32_backbone(src: Path, work: Path) -> Path:
    """src itself, or a copy with its floating weights in fp32 when they are stored in half precision."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = src / "model.safetensors"
    if not weights.is_file():
        return src
    sd = load_file(str(weights))
    if not any(v.dtype in (torch.float16, torch.bfloat16) for v in sd.values()):
        return src
    dst = work / "backbone-fp32"
    shutil.copytree(src, dst, dirs_exist_ok=True)
    save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
              str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def projected_steps(steps_per_epoch: int, budgets: list[float], num_layers: int, sched: tuple[float, float],
                    stage2_epochs: float = 0.5) -> float:
    """Fine-tuning-step equivalents of one `compare` at this schedule (the teacher already trained)."""
    from hadskip.training.config import HadSkipConfig
    from hadskip.training.schedule import phase_epochs

    e3 = {k: sum(phase_epochs(num_layers, HadSkipConfig(budget=k, phase_epochs=sched[0],
                                                        final_phase_epochs=sched[1]))) for k in budgets}
    units = sum(COST["stage2"] * stage2_epochs + COST["stage3"] * e + COST["budgeted"] * e for e in e3.values())
    units += COST["exits"] * max(e3.values())
    return units * steps_per_epoch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the results (copied as each job ends)")
    ap.add_argument("--work", default=None, help="folder for the runs (default: OUT/runs)")
    ap.add_argument("--seconds", type=float, required=True, help="wall-clock budget for everything")
    ap.add_argument("--backbone", required=True, help="backbone folder (fp16 weights are restored to fp32)")
    ap.add_argument("--task", action="append", required=True, help="task (registry name or folder); repeatable")
    ap.add_argument("--budgets", default="2,3,4")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--study", action="store_true", help="the stage II / homotopy study on the first task")
    ap.add_argument("--study-budget", type=float, default=2.0)
    ap.add_argument("--shares", default="0.55,0.25", help="share of the time left given to each task's compare")
    args = ap.parse_args(argv)

    t0 = time.time()
    left = lambda: args.seconds - (time.time() - t0)  # noqa: E731
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "runs"
    work.mkdir(parents=True, exist_ok=True)
    budgets = [float(b) for b in args.budgets.split(",")]
    shares = [float(s) for s in args.shares.split(",")]
    record: dict = {"budgets": budgets, "seconds": args.seconds, "tasks": {}}

    def save_record() -> None:
        record["elapsed"] = round(time.time() - t0, 1)
        (out / "frontier_run.json").write_text(json.dumps(record, indent=2))

    import torch

    from hadskip.evaluation.compare import CompareConfig, compare
    from hadskip.training.config import HadSkipConfig, TrainConfig
    from hadskip.training.finetune import finetune
    from hadskip.training.schedule import phase_epochs
    from hadskip.training.stages import train_hadskip

    record["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    backbone = fp32_backbone(Path(args.backbone), work)
    first = None
    for i, task in enumerate(args.task):
        name = Path(task).name or task.replace("/", "-")
        root = work / name
        rec = record["tasks"][name] = {"task": task}
        t = time.time()
        teacher = root / "full"
        if (teacher / "run.json").is_file():  # a rerun keeps its teacher (the runs trained from it stay valid)
            from hadskip.modeling.checkpoint import read_info

            m = read_info(teacher).metrics
        else:
            m = finetune(TrainConfig(backbone=str(backbone), task=task, out=str(teacher), max_len=args.max_len,
                                     epochs=3.0, progress=False))
        n_train = math.ceil(m["train_examples_per_s"] * m["seconds"] / 32 / 3)  # steps per epoch (batch 32)
        step_s = m["seconds"] / (3 * n_train)
        rec.update(teacher=m, steps_per_epoch=n_train, finetune_step_s=round(step_s, 4),
                   teacher_seconds=round(time.time() - t, 1))
        save_record()
        share = shares[i] if i < len(shares) else 1.0
        from hadskip.modeling.checkpoint import load_run

        L = load_run(teacher)[0].num_layers
        fits = [s for s in SCHEDULES if projected_steps(n_train, budgets, L, s) * step_s <= share * left()]
        sched = fits[0] if fits else SCHEDULES[-1]
        rec["schedule"] = {"phase_epochs": sched[0], "final_phase_epochs": sched[1], "stage2_epochs": 0.5,
                           "projected_s": round(projected_steps(n_train, budgets, L, sched) * step_s, 1),
                           "time_left_s": round(left(), 1)}
        save_record()
        t = time.time()
        result = compare(CompareConfig(budgets=budgets, out=str(root), teacher=str(teacher), max_len=args.max_len,
                                       hadskip_options={"phase_epochs": sched[0], "final_phase_epochs": sched[1]},
                                       progress=False))
        rec["compare_seconds"] = round(time.time() - t, 1)
        rec["margins"] = result["margins"]
        dest = out / name
        dest.mkdir(exist_ok=True)
        for f in ("compare.json", "compare.md", "frontier.png"):
            shutil.copy(root / f, dest / f)
        save_record()
        print((root / "compare.md").read_text(), flush=True)
        if first is None:
            first = (task, root, teacher, sched, L, n_train, step_s)
        if left() < 30:
            break

    if args.study and first is not None:
        task, root, teacher, sched, L, n_train, step_s = first
        k = args.study_budget
        study = record["study"] = {"task": task, "budget": k, "schedule": list(sched), "variants": {}}
        base = root / f"hadskip-{k:g}"
        for name, opts in VARIANTS.items():
            opts = dict(opts)
            if "homotopy_start" in opts:
                opts["homotopy_start"] = float(L - 1)
            run = base if name == "default" else root / f"study-{name}"
            e3 = sum(phase_epochs(L, HadSkipConfig(budget=k, phase_epochs=sched[0], final_phase_epochs=sched[1])))
            need = (COST["stage2"] * 0.5 + COST["stage3"] * e3) * n_train * step_s
            if name != "default" and need > left() - 10:
                study["variants"][name] = {"skipped": f"needs ~{need:.0f} s, {left():.0f} s left"}
                save_record()
                continue
            if not (run / "run.json").is_file():
                train_hadskip(HadSkipConfig(backbone=str(backbone), task=task, out=str(run), budget=k,
                                            teacher=str(teacher), max_len=args.max_len, phase_epochs=sched[0],
                                            final_phase_epochs=sched[1], progress=False, **opts))
            from hadskip.evaluation.report import evaluate_path

            ev = {s: evaluate_path(str(run), s, plots_dir=None) for s in ("dev", "test")}
            study["variants"][name] = {"options": opts, "dev": ev["dev"]["value"],
                                       "dev_avg_layers": ev["dev"]["avg_layers"], "test": ev["test"]["value"],
                                       "test_avg_layers": ev["test"]["avg_layers"]}
            save_record()
        # only variants at the budget compete (a variant using more layers would win for that reason alone)
        done = {n: v for n, v in study["variants"].items() if "dev" in v and abs(v["dev_avg_layers"] - k) <= 0.05}
        if done:
            study["best_on_dev"] = max(done, key=lambda n: done[n]["dev"])
    save_record()
    (out / "study.json").write_text(json.dumps(record.get("study", {}), indent=2))
    print(json.dumps({k: v for k, v in record.items() if k != "tasks"}, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
