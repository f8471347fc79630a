"""The rows of `hadskip compare` that need more than an eval report: the early-exit and patience-exit rules and the
HadSkip dial, each calibrated on dev to the compared average layers and scored on test."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hadskip.data.metrics import compute_metric
from hadskip.evaluation.baselines import exit_probs, load_exit_model, rules
from hadskip.evaluation.dial import build_dial, sweep_split
from hadskip.modeling.checkpoint import encode_run_split


def metric(spec, preds: np.ndarray, labels: np.ndarray) -> float:
    return float(compute_metric(spec.metric, preds, labels, spec.num_labels))


def row(method: str, budget: float, ev: dict, **extra) -> dict:
    return {"method": method, "budget": budget, "value": ev["test"]["value"], "avg_layers": ev["test"]["avg_layers"],
            "dev_value": ev["dev"]["value"], "dev_avg_layers": ev["dev"]["avg_layers"], **extra}


def exit_rows(edir: Path, budgets: list[float], target: dict[float, float]) -> dict:
    """early-exit and patience-exit rows at each budget, and their test curves."""
    model, tokenizer, info = load_exit_model(edir)
    probs, labels = {}, {}
    for s in ("dev", "test"):
        run_split = encode_run_split(tokenizer, info, s)
        probs[s], labels[s] = exit_probs(model, run_split.enc, run_split.pad_id), run_split.enc.labels
    spec, L = run_split.spec, model.num_layers
    ent = {s: rules.entropy(p) for s, p in probs.items()}

    def at_threshold(s: str, thr: float) -> tuple[float, float]:
        op = rules.at_exits(probs[s], rules.exit_layers(ent[s], thr))
        return op.avg_layers, metric(spec, op.preds, labels[s])

    patience = {s: [] for s in probs}
    for s in probs:
        preds = probs[s].argmax(-1)
        for p in range(L):
            op = rules.at_exits(probs[s], rules.patience_layers(preds, p))
            patience[s].append((op.avg_layers, metric(spec, op.preds, labels[s])))
    rows: dict[float, list] = {}
    for k in budgets:
        thr = rules.threshold_for(ent["dev"], target[k])
        (dl, dv), (tl, tv) = at_threshold("dev", thr), at_threshold("test", thr)
        op = rules.at_exits(probs["test"], rules.exit_layers(ent["test"], thr))
        row_e = {"method": "early-exit", "budget": k, "value": tv, "avg_layers": tl, "dev_value": dv,
                 "dev_avg_layers": dl, "threshold": thr, "run": str(edir),
                 "_record": {"preds": op.preds, "layers": op.layers}}
        p, a = rules.mix(patience["dev"], target[k])
        (dl, dv), (tl, tv) = rules.mixed(patience["dev"], p, a), rules.mixed(patience["test"], p, a)
        row_p = {"method": "patience-exit", "budget": k, "value": tv, "avg_layers": tl, "dev_value": dv,
                 "dev_avg_layers": dl, "patience": [p, p + 1], "mix": a, "run": str(edir)}
        rows[k] = [row_e, row_p]
    grid = np.arange(1.0, L + 1e-9, 0.125)
    curve_e = sorted({at_threshold("test", rules.threshold_for(ent["dev"], g)) for g in grid})
    curve_p = [list(x) for x in patience["test"]]
    return {"rows": rows, "curves": {"early-exit": [list(x) for x in curve_e], "patience-exit": curve_p}}


def dial_rows(run: Path, budgets: list[float], target: dict[float, float], L: int) -> dict:
    """hadskip-dial rows (dial calibrated on dev to each compared average, scored on test) and its test curve."""
    dev, dev_labels, spec, info, _ = sweep_split(run, "dev", progress=False)
    test, test_labels, _, _, _ = sweep_split(run, "test", progress=False)
    grid = sorted(set([*(1.0 + 0.25 * j for j in range(int((L - 1) / 0.25) + 1)), *target.values()]))
    grid = [g for g in grid if 0.0 <= g <= L] or [float(L)]
    dial = build_dial(dev, dev_labels, spec.metric, spec.num_labels, L, grid)

    def on_test(offset: float) -> tuple[float, float]:
        layers, preds = test.at(offset, len(test_labels))
        return float(layers.mean()), metric(spec, preds, test_labels)

    by_target = {p.target: p for p in dial.points}
    rows = {}
    for k in budgets:
        p = by_target.get(target[k]) or min(dial.points, key=lambda q: abs(q.target - target[k]))
        tl, tv = on_test(p.offset)
        layers, preds = test.at(p.offset, len(test_labels))
        rows[k] = {"method": "hadskip-dial", "budget": k, "value": tv, "avg_layers": tl, "dev_value": p.value,
                   "dev_avg_layers": p.avg_layers, "gate_offset": p.offset, "run": str(run),
                   "trained_budget": info.budget, "_record": {"preds": preds, "layers": layers}}
    curve = sorted({on_test(p.offset) for p in dial.curve})
    return {"rows": rows, "curve": [list(x) for x in curve]}
