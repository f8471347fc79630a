"""`hadskip eval`: evaluate a run dir (PyTorch) or an exported model dir (runtime) and plot layer usage.

JSON keys follow docs/architecture.md (JSON outputs): task, split, metric, value, examples, num_layers,
avg_layers, layer_usage, layers_hist. Plots (the paper's Fig. 2-5 kinds): per-layer usage probability,
histogram of layers used per input, and per-layer usage split by gold label.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hadskip.errors import HadSkipError
from hadskip.evaluation.evaluate import default_device, predict, summarize
from hadskip.evaluation.plots import plot_layer_usage
from hadskip.evaluation.skip_exit import exit_heads_note
from hadskip.modeling.checkpoint import encode_run_split, load_run, load_run_task, read_info
from hadskip.runtime import Runtime
from hadskip.runtime.dial import read_dial, resolve_offset
from hadskip.runtime.dial import BUDGET_MARGIN, budget_gap

__all__ = ["default_device", "evaluate_path", "plot_layer_usage"]


def evaluate_path(path: str, split: str = "test", task: str | None = None, plots_dir: str | None = "",
                  batch_size: int = 64, budget: float | None = None) -> dict:
    """Evaluate PATH (a run dir with run.json, or a model dir with manifest.json) on a split.
    plots_dir "" = RUN/eval-SPLIT (RUN/eval-SPLIT-bBUDGET with a budget) for a run dir, and no plots for a model
    dir (a model dir is never written into: its manifest lists every file it owns), None = no plots.
    budget: a target average of layers through the budget dial (RUN/dial.json or the manifest's dial).
    Returns the §10 dict (+ "plots", "kind"; with a budget also "target_budget" and "gate_offset")."""
    p = Path(path)
    model_dir = not (p / "run.json").is_file()
    if plots_dir and model_dir and _inside(Path(plots_dir), p):
        raise HadSkipError(f"--plots {plots_dir} is inside the model dir {p}, which only holds what export wrote; "
                           "give a folder outside it")
    if (p / "run.json").is_file():
        report, gates, labels = _eval_run(p, split, task, batch_size, budget)
    elif (p / "manifest.json").is_file():
        report, gates, labels = _eval_model_dir(p, split, task, batch_size, budget)
    else:
        raise HadSkipError(f"{p} is neither a run dir (run.json) nor an exported model dir (manifest.json)")
    if plots_dir == "" and model_dir:
        report["plots"] = None  # nothing is written into a model dir; --plots DIR writes them elsewhere
    elif plots_dir is not None:
        default = f"eval-{split}" if budget is None else f"eval-{split}-b{float(budget):g}"
        out = Path(plots_dir) if plots_dir else p / default
        out.mkdir(parents=True, exist_ok=True)
        report["plots"] = plot_layer_usage(gates, labels, out, title=f"{report['task']} ({split})")
        (out / "eval.json").write_text(json.dumps(report, indent=2))
    return report


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _layers_keys(report: dict, trained: dict | None) -> dict:
    """What the model ran next to what it aimed at: "trained_avg_layers" (dev/test when trained; None: not
    recorded) and "budget_missed" (None, or {budget, avg_layers, gap, margin} when this evaluation's average
    layers is further than BUDGET_MARGIN from the budget asked for, else the trained one)."""
    target = report.get("target_budget", report.get("budget"))
    gap = None if target is None else budget_gap(report["avg_layers"], target)
    missed = None if gap is None else {
        "budget": float(target), "avg_layers": report["avg_layers"], "gap": round(gap, 4), "margin": BUDGET_MARGIN}
    return {"trained_avg_layers": trained, "budget_missed": missed}


def _dial_keys(budget: float | None, offset: float) -> dict:
    return {} if budget is None else {"target_budget": float(budget), "gate_offset": offset}


def _eval_run(p: Path, split: str, task: str | None, batch_size: int, budget: float | None = None):
    if budget is not None:  # refuse a budget before loading anything big
        first = read_info(p)
        if not first.is_gated:
            raise HadSkipError(f"{p} is a {first.kind} run without gates: a budget needs a `hadskip train` run")
    offset = resolve_offset(read_dial(p, p / "model.safetensors") if budget is not None else None, budget, str(p))
    model, tokenizer, info = load_run(p)
    model.to(default_device())  # evaluate where the model can run fastest
    run_split = encode_run_split(tokenizer, info, split, task)
    logits, used, labels = predict(model, run_split.enc, run_split.pad_id, batch_size,
                                   gates="route" if info.is_gated else "off", gate_offset=offset)
    res = summarize(logits, used, labels, run_split.spec.metric)
    report = {"task": run_split.spec.name, "split": split, **res.to_dict(), "kind": info.kind, "budget": info.budget,
              **_dial_keys(budget, offset)}
    if model.exits is not None:  # skip + exit: scored by `hadskip compare`; here the gates alone
        report.update(exit_threshold=0.0, note=exit_heads_note(p))
    metrics = info.metrics or {}
    report.update(_layers_keys(report, {k: metrics[f"{k}_avg_layers"] for k in ("dev", "test")
                                        if isinstance(metrics.get(f"{k}_avg_layers"), (int, float))} or None))
    return report, used, labels


def _eval_model_dir(p: Path, split: str, task: str | None, batch_size: int, budget: float | None = None):
    with Runtime.load(p, budget=budget) as rt:
        manifest = rt.info.manifest
        data = load_run_task(manifest.task, task)
        s = data.split(split)
        inputs = list(zip(s.texts, s.pairs, strict=True)) if s.pairs is not None else list(s.texts)
        out = rt.predict(inputs, batch_size=batch_size, allow_empty=True)  # the split as it is, like PyTorch eval
        offset = rt.gate_offset
        trained = rt.info.trained_avg_layers
    used = np.asarray(out.gates, dtype=np.float32)  # (N, L)
    labels = np.asarray(s.labels)
    res = summarize(out.probabilities, used, labels, data.spec.metric)  # argmax of probabilities = of logits
    report = {"task": data.spec.name, "split": split, **res.to_dict(), "kind": "model-dir",
              "budget": manifest.budget, **_dial_keys(budget, offset)}
    report.update(_layers_keys(report, trained))
    return report, used, labels
