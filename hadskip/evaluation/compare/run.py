"""`hadskip compare`: the accuracy-compute frontier of one task, every method from the same teacher.

    full            the fine-tuned teacher (every layer)
    budgeted-exit   the first round(K) layers, trained as long as HadSkip's stage III, with KD
    early-exit      one multi-exit model (exits trained jointly with the backbone, KD), entropy rule
    patience-exit   the same model, PABEE's patience rule
    hadskip         the HadSkip run trained for budget K, gates as trained (offset 0)
    hadskip-dial    one HadSkip run (--dial-from, default the middle budget's) at K through its budget dial

Matching: the compared average layers at budget K is the HadSkip run's average on dev; every dynamic rule (the
entropy threshold, the patience mixture, the dial offset) is calibrated on dev to it, and test is reported.
Outputs in OUT: compare.json (DESIGN.md §10 keys, plus dev numbers, the test curves of every method,
timings and peak memory), compare.md (the table), frontier.png (metric vs average layers).
A --hadskip K=RUN whose budget, teacher or task differs from the comparison's is refused.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np

from hadskip.errors import HadSkipError
from hadskip.evaluation.baselines import BaselineConfig, train_budgeted_exit, train_exit_model
from hadskip.evaluation.compare.plan import CompareConfig
from hadskip.evaluation.compare.render import margins, to_markdown
from hadskip.evaluation.compare.reuse import check_hadskip_run, finished, reuse_or_check, teacher
from hadskip.evaluation.compare.rows import dial_rows, exit_rows, row
from hadskip.evaluation.frontier import plot_frontier
from hadskip.evaluation.report import evaluate_path
from hadskip.modeling.checkpoint import read_info, task_source
from hadskip.training.config import HadSkipConfig, OptimConfig
from hadskip.training.schedule import stage3_epochs
from hadskip.training.stages import train_hadskip


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class _Clock:
    def __init__(self):
        self.t0 = time.time()
        self.parts: dict[str, float] = {}
        self.peak: dict[str, float] = {}

    def lap(self, name: str, since: float) -> None:
        self.parts[name] = round(self.parts.get(name, 0.0) + time.time() - since, 1)
        self.peak[name] = _peak_mb()


def compare(cfg: CompareConfig) -> dict:
    """Build (or reuse) every run, score every method on dev and test; write compare.json/md and frontier.png.
    Returns the compare.json dict."""
    clock = _Clock()
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    t = time.time()
    teacher_dir, teacher_task = teacher(cfg, root)
    task_name, options = task_source(teacher_task)
    full = {s: evaluate_path(str(teacher_dir), s, plots_dir=None) for s in ("dev", "test")}
    L = full["test"]["num_layers"]
    for k in cfg.budgets:
        if k > L:
            raise HadSkipError(f"budget {k:g} is more than the model's {L} layers")
    clock.lap("full", t)

    # every run given is checked before anything trains
    for k, run in cfg.hadskip_runs.items():
        if not finished(Path(run)):
            raise HadSkipError(f"--hadskip {k:g}={run} is not a finished run dir (no run.json)")
        check_hadskip_run(run, k, teacher_dir, teacher_task, cfg.kd)
    if cfg.dial_from:
        check_hadskip_run(cfg.dial_from, None, teacher_dir, teacher_task, cfg.kd, flag="--dial-from")

    # --- HadSkip at each budget (the compared average layers come from it) ---
    t = time.time()
    runs: dict[float, Path] = {}
    for k in cfg.budgets:
        run = Path(cfg.hadskip_runs.get(k) or root / f"hadskip-{k:g}")
        if not finished(run):
            train_hadskip(HadSkipConfig(backbone=cfg.backbone, task=task_name, out=str(run), budget=k,
                                        teacher=str(teacher_dir), max_len=cfg.max_len, progress=cfg.progress,
                                        kd=cfg.kd, resume=True,  # a killed run continues (its settings
                                        **options, **cfg.hadskip_options))  # are checked by progress.json)
        if k not in cfg.hadskip_runs:  # the runs given were checked above
            check_hadskip_run(run, k, teacher_dir, teacher_task, cfg.kd)
            config = read_info(run).extra.get("config", {})
            changed = sorted(o for o, v in cfg.hadskip_options.items() if config.get(o) != v)
            if changed:
                raise HadSkipError(f"{run} was trained with other {', '.join(changed)}: remove it or choose another "
                                   "--out")
        runs[k] = run
    hadskip = {k: {s: evaluate_path(str(r), s, plots_dir=None) for s in ("dev", "test")} for k, r in runs.items()}
    target = {k: hadskip[k]["dev"]["avg_layers"] for k in cfg.budgets}
    infos = {k: read_info(r) for k, r in runs.items()}
    epochs = {k: cfg.baseline_epochs or stage3_epochs(infos[k], L) for k in cfg.budgets}
    clock.lap("hadskip", t)

    def base_cfg(out: Path, ep: float, k: float) -> BaselineConfig:
        """The baseline's settings: those HadSkip's run at budget k trained with (its gate learning rate for
        the modules the teacher lacks)."""
        c = infos[k].extra.get("config", {})
        same = OptimConfig.settings_in(c)
        return BaselineConfig(teacher=str(teacher_dir), out=str(out), epochs=ep, kd=cfg.kd, progress=cfg.progress,
                              new_lr=c.get("gate_lr", 1e-3), **same)

    # --- budgeted exit: one static model per budget ---
    t = time.time()
    budgeted: dict[float, dict] = {}
    for k in cfg.budgets:
        kb = max(1, min(L, int(np.floor(target[k] + 0.5))))
        bdir = root / f"budgeted-exit-{kb}-e{epochs[k]:g}"
        wanted = base_cfg(bdir, epochs[k], k)
        if not reuse_or_check(bdir, "budgeted-exit", wanted):
            train_budgeted_exit(wanted, kb)
        budgeted[k] = {s: evaluate_path(str(bdir), s, plots_dir=None) for s in ("dev", "test")}
        budgeted[k]["run"] = str(bdir)
    clock.lap("budgeted-exit", t)

    # --- the multi-exit model (one for every budget, trained as long as the longest HadSkip stage III) ---
    t = time.time()
    k_long = max(cfg.budgets, key=lambda k: epochs[k])
    ep_exit = epochs[k_long]
    edir = root / f"early-exit-e{ep_exit:g}"
    wanted = base_cfg(edir, ep_exit, k_long)
    if not reuse_or_check(edir, "early-exit", wanted):
        train_exit_model(wanted)
    exits = exit_rows(edir, cfg.budgets, target)
    clock.lap("early-exit", t)

    # --- the dial of one HadSkip run ---
    t = time.time()
    dial_run = Path(cfg.dial_from) if cfg.dial_from else runs[cfg.budgets[len(cfg.budgets) // 2]]
    dial = dial_rows(dial_run, cfg.budgets, target, L)
    clock.lap("hadskip-dial", t)

    rows = [row("full", L, full)]
    for k in cfg.budgets:
        rows.append(row("budgeted-exit", k, budgeted[k], run=budgeted[k]["run"]))
        rows.extend(exits["rows"][k])
        rows.append(row("hadskip", k, hadskip[k], run=str(runs[k])))
        rows.append(dial["rows"][k])
    curves = {"full": [[full["test"]["avg_layers"], full["test"]["value"]]],
              "budgeted-exit": sorted([budgeted[k]["test"]["avg_layers"], budgeted[k]["test"]["value"]]
                                      for k in cfg.budgets),
              "early-exit": exits["curves"]["early-exit"], "patience-exit": exits["curves"]["patience-exit"],
              "hadskip": sorted([hadskip[k]["test"]["avg_layers"], hadskip[k]["test"]["value"]] for k in cfg.budgets),
              "hadskip-dial": dial["curve"]}
    result = {"task": full["test"]["task"], "metric": full["test"]["metric"], "split": "test", "num_layers": L,
              "rows": rows, "curves": curves, "margins": margins(rows, cfg.budgets),
              "epochs": {f"{k:g}": epochs[k] for k in cfg.budgets}, "exit_model_epochs": ep_exit,
              "dial_from": str(dial_run), "kd": cfg.kd,
              "runs": {"teacher": str(teacher_dir), "out": str(root), "early-exit": str(edir)},
              "seconds": {**clock.parts, "total": round(time.time() - clock.t0, 1)},
              "peak_rss_mb": {**clock.peak, "process": _peak_mb()}}
    (root / "compare.json").write_text(json.dumps(result, indent=2))
    (root / "compare.md").write_text(to_markdown(result))
    result["plot"] = str(plot_frontier(result, root / "frontier.png"))
    (root / "compare.json").write_text(json.dumps(result, indent=2))
    return result
