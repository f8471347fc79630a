"""`hadskip compare`: the accuracy-compute frontier of one task, every method from the same teacher.

    full            the fine-tuned teacher (every layer)
    budgeted-exit   the first round(K) layers, trained as long as HadSkip's stage III, with KD
    early-exit      one multi-exit model (exits trained jointly with the backbone, KD), entropy rule
    patience-exit   the same model, PABEE's patience rule
    hadskip         the HadSkip run trained for budget K, gates as trained (offset 0)
    hadskip-dial    one HadSkip run (--dial-from, default the middle budget's) at K through its budget dial
    cascade         a budgeted-exit model of k <= K layers first, the full model for its least confident rows
                    (cascade.py; every such k is trained, as long as budgeted exit at K)
    hadskip-NAME    a HadSkip variant (plan.VARIANTS, --variants) trained for budget K, through its own dial;
                    skip-exit (exit heads) through its gate offset and exit threshold, both set on dev
                    (hadskip/evaluation/skip_exit.py)
    best-subset     (--oracle) the best fixed K-subset of an any-subset-trained backbone, chosen on dev
    oracle          (--oracle) each test row on its best K-subset of that backbone: the headroom of routing
    subset-router   (--oracle) each test row on the K-subset a router picks from its embeddings, the router
                    fitted to the per-row best subsets of the training rows no run trained on, else cross-fitted
                    on dev (subset_router.py)

Matching: the compared average layers at budget K is the HadSkip run's average on dev; every dynamic rule (the
entropy threshold, the patience mixture, the dial offset) is calibrated on dev to it, and test is reported.
Outputs in OUT: compare.json (DESIGN.md §10 keys, plus dev numbers, the test curves of every method,
path diversity of the gated rows, timings and peak memory), compare.md (the table), rows.npz (every method's
test predictions and layers per row, records.py), frontier.png (metric vs average layers).
A --hadskip K=RUN whose budget, teacher or task differs from the comparison's is refused.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import MISSING
from dataclasses import fields as dataclass_fields
from dataclasses import replace
from pathlib import Path

import numpy as np

from hadskip.data.metrics import compute_metric

from hadskip.errors import HadSkipError
from hadskip.evaluation.baselines import BaselineConfig, train_budgeted_exit, train_exit_model
from hadskip.evaluation.baselines.anysubset import headroom, train_any_subset
from hadskip.evaluation.compare.cascade import Stage, calibrated
from hadskip.evaluation.compare.cascade import curve as cascade_curve
from hadskip.evaluation.compare.plan import VARIANTS, CompareConfig
from hadskip.evaluation.compare.records import Outputs, path_codes, path_diversity, record, run_outputs, save_records
from hadskip.evaluation.compare.render import margins, to_markdown
from hadskip.evaluation.compare.seeds import aggregate, route_to_deploy
from hadskip.evaluation.compare.seeds import to_markdown as seeds_markdown
from hadskip.evaluation.compare.reuse import check_hadskip_run, finished, reuse_or_check, teacher
from hadskip.evaluation.compare.rows import dial_rows, exit_rows, row
from hadskip.evaluation.frontier import plot_dev_curves, plot_frontier
from hadskip.evaluation.skip_exit import skip_exit_row
from hadskip.modeling.checkpoint import read_info, task_source
from hadskip.training.config import HadSkipConfig, OptimConfig
from hadskip.training.schedule import stage3_epochs
from hadskip.training.stages import train_hadskip


# HadSkipConfig's settings that shape a trained run, at their defaults: what compare asks of a run it trains or
# reuses in OUT unless hadskip_options say otherwise. Left out: what compare sets or checks itself (task, teacher,
# budget, kd, the teacher's max_len and backbone) and what does not change a run (out, progress, resume, force,
# eval_batch_size; stage I's epochs, unused with a teacher).
_NOT_COMPARED = ("backbone", "task", "out", "max_len", "epochs", "eval_batch_size", "text_col", "pair_col",
                 "label_col", "metric", "progress", "force", "budget", "teacher", "kd", "resume")
_TRAINING_DEFAULTS = {f.name: f.default for f in dataclass_fields(HadSkipConfig)
                      if f.default is not MISSING and f.name not in _NOT_COMPARED}


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


def _ev(out: Outputs, gates: np.ndarray | None = None) -> dict:
    """value and avg_layers of one split's outputs (gates: the layers that ran, default out.gates)."""
    g = out.gates if gates is None else gates
    preds = out.logits.argmax(axis=1)
    return {"value": float(compute_metric(out.metric, preds, out.labels, out.num_labels)),
            "avg_layers": float(g.sum(axis=1).mean()), "preds": preds, "layers": g.sum(axis=1)}


def _evs(run: Path) -> tuple[dict, dict]:
    """({split: _ev}, {split: Outputs}) of a run dir on dev and test, its own gates."""
    outs = {s: run_outputs(run, s) for s in ("dev", "test")}
    return {s: _ev(o) for s, o in outs.items()}, outs


def _gated_row(method: str, k: float, evs: dict, outs: dict, L: int, **extra) -> tuple[dict, dict]:
    codes = path_codes(outs["test"].gates)
    r = {**row(method, k, evs, **extra), **path_diversity(codes, L)}
    return r, record(evs["test"]["preds"], evs["test"]["layers"], codes)


def _dial_row(method: str, run: Path, k: float, target: float, L: int) -> tuple[dict, dict]:
    """A gated run at the compared average through its own dial (calibrated on dev), with its test paths."""
    r = dial_rows(run, [k], {k: target}, L)["rows"][k]
    rec = r.pop("_record")
    codes = path_codes(run_outputs(run, "test", gate_offset=r["gate_offset"]).gates)
    return {**r, "method": method, **path_diversity(codes, L)}, record(rec["preds"], rec["layers"], codes)


def _skip_exit_row(method: str, run: Path, k: float, target: float, L: int) -> tuple[dict, dict]:
    """A run with exit heads at the compared average: gate offset and exit threshold calibrated on dev, with the
    test paths (each row's layers up to its exit)."""
    r = skip_exit_row(method, run, k, target, L)
    rec = r.pop("_record")
    codes = path_codes(rec["ran"])
    return {**r, **path_diversity(codes, L)}, record(rec["preds"], rec["layers"], codes)


def compare(cfg: CompareConfig) -> dict:
    """Build (or reuse) every run, score every method on dev and test; write compare.json/md, rows.npz and
    frontier.png. With several --seeds, each seed's comparison goes to OUT/seed-S and OUT gets the statistics
    (hadskip.evaluation.compare.seeds). Returns the compare.json dict."""
    if len(cfg.seeds) > 1:
        return compare_seeds(cfg)
    clock = _Clock()
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    t = time.time()
    teacher_dir, teacher_task = teacher(cfg, root)
    task_name, options = task_source(teacher_task)
    full_ev, full_out = _evs(teacher_dir)
    L = full_out["test"].gates.shape[1]
    for k in cfg.budgets:
        if k > L:
            raise HadSkipError(f"budget {k:g} is more than the model's {L} layers")
    clock.lap("full", t)
    seed = cfg.seeds[0]
    hs_options = {**cfg.hadskip_options, "seed": seed, "train_examples": cfg.train_examples}

    # every run given is checked before anything trains
    for k, run in cfg.hadskip_runs.items():
        if not finished(Path(run)):
            raise HadSkipError(f"--hadskip {k:g}={run} is not a finished run dir (no run.json)")
        check_hadskip_run(run, k, teacher_dir, teacher_task, cfg.kd)
    if cfg.dial_from:
        check_hadskip_run(cfg.dial_from, None, teacher_dir, teacher_task, cfg.kd, flag="--dial-from")

    def hadskip_run(run: Path, k: float, extra: dict) -> Path:
        """Train (or resume, or reuse) the HadSkip run at `run` for budget k with the comparison's options (an
        option not given is its default: a run in OUT trained with another value is refused, not reused)."""
        wanted = {**_TRAINING_DEFAULTS, **hs_options, **extra}
        if not finished(run):
            train_hadskip(HadSkipConfig(backbone=cfg.backbone, task=task_name, out=str(run), budget=k,
                                        teacher=str(teacher_dir), max_len=cfg.max_len, progress=cfg.progress,
                                        kd=cfg.kd, resume=True,  # a killed run continues (its settings
                                        **options, **wanted))  # are checked by progress.json)
        check_hadskip_run(run, k, teacher_dir, teacher_task, cfg.kd)
        config = read_info(run).extra.get("config", {})
        changed = sorted(o for o, v in wanted.items() if config.get(o, _TRAINING_DEFAULTS.get(o)) != v)
        if changed:
            raise HadSkipError(f"{run} was trained with other {', '.join(changed)}: remove it or choose another --out")
        return run

    # --- HadSkip at each budget (the compared average layers come from it) ---
    t = time.time()
    runs: dict[float, Path] = {}
    for k in cfg.budgets:
        runs[k] = Path(cfg.hadskip_runs[k]) if k in cfg.hadskip_runs else hadskip_run(root / f"hadskip-{k:g}", k, {})
    hadskip = {k: _evs(r) for k, r in runs.items()}
    target = {k: hadskip[k][0]["dev"]["avg_layers"] for k in cfg.budgets}
    infos = {k: read_info(r) for k, r in runs.items()}
    epochs = {k: cfg.baseline_epochs or stage3_epochs(infos[k], L) for k in cfg.budgets}
    clock.lap("hadskip", t)

    # --- HadSkip variants, each at the compared average through its own dial ---
    t = time.time()
    variant_runs = {(v, k): hadskip_run(root / f"hadskip-{v}-{k:g}", k, VARIANTS[v])
                    for v in cfg.variants for k in cfg.budgets}
    clock.lap("variants", t)

    def base_cfg(out: Path, ep: float, k: float) -> BaselineConfig:
        """The baseline's settings: those HadSkip's run at budget k trained with (its gate learning rate for
        the modules the teacher lacks, its training subset)."""
        c = infos[k].extra.get("config", {})
        same = OptimConfig.settings_in(c)
        return BaselineConfig(teacher=str(teacher_dir), out=str(out), epochs=ep, kd=cfg.kd, progress=cfg.progress,
                              new_lr=c.get("gate_lr", 1e-3), max_examples=c.get("max_examples"),
                              train_examples=c.get("train_examples"), **same)

    # --- budgeted exit: one static model per budget (and the smaller ones a cascade starts from) ---
    t = time.time()
    budgeted: dict[float, dict] = {}
    first_models: dict[float, dict[int, tuple[Stage, Stage]]] = {}
    full_preds = {s: full_ev[s]["preds"] for s in ("dev", "test")}
    trained: dict[Path, tuple[dict, dict]] = {}

    def budgeted_exit(kb: int, k: float) -> tuple[dict, dict]:
        bdir = root / f"budgeted-exit-{kb}-e{epochs[k]:g}"
        if bdir not in trained:
            wanted = base_cfg(bdir, epochs[k], k)
            if not reuse_or_check(bdir, "budgeted-exit", wanted):
                train_budgeted_exit(wanted, kb)
            trained[bdir] = _evs(bdir)
            trained[bdir][0]["run"] = str(bdir)
        return trained[bdir]

    for k in cfg.budgets:
        kb = max(1, min(L, int(np.floor(target[k] + 0.5))))
        budgeted[k] = budgeted_exit(kb, k)[0]
        first_models[k] = {}
        for kc in range(1, min(L - 1, int(np.floor(target[k] + 1e-9))) + 1):  # first stages that fit the target
            outs = budgeted_exit(kc, k)[1]
            first_models[k][kc] = tuple(Stage(outs[s].probs, kc, full_preds[s], L) for s in ("dev", "test"))
    clock.lap("budgeted-exit", t)

    # --- cascade: a budgeted-exit model first, the full model for its least confident rows ---
    labels = {s: full_out[s].labels for s in ("dev", "test")}
    spec_metric, n_labels = full_out["test"].metric, full_out["test"].num_labels

    def score(preds: np.ndarray, split: str) -> float:
        return float(compute_metric(spec_metric, preds, labels[split], n_labels))

    cascades = {k: calibrated(first_models[k], target[k], score) for k in cfg.budgets}

    # --- the multi-exit model (one for every budget, trained as long as the longest HadSkip stage III) ---
    t = time.time()
    k_long = max(cfg.budgets, key=lambda k: epochs[k])
    ep_exit = epochs[k_long]
    edir = root / f"early-exit-e{ep_exit:g}"
    wanted = replace(base_cfg(edir, ep_exit, k_long), exit_pool="mean")  # a run with first-token exits is refused
    if not reuse_or_check(edir, "early-exit", wanted):
        train_exit_model(wanted)
    exits = exit_rows(edir, cfg.budgets, target)
    clock.lap("early-exit", t)

    # --- the oracle headroom: an any-subset backbone, its best fixed subset and its per-row oracle ---
    oracle: dict[float, dict] = {}
    if cfg.oracle:
        t = time.time()
        adir = root / f"any-subset-e{ep_exit:g}"
        wanted = base_cfg(adir, ep_exit, k_long)
        if not reuse_or_check(adir, "any-subset", wanted):
            train_any_subset(wanted)
        by_k: dict[int, dict] = {}
        for k in cfg.budgets:
            kk = int(np.floor(target[k] + 0.5))
            if 1 <= kk < L:
                by_k.setdefault(kk, headroom(adir, kk))
                oracle[k] = {**by_k[kk], "run": str(adir)}
        clock.lap("oracle", t)

    # --- the dial of one HadSkip run ---
    t = time.time()
    dial_run = Path(cfg.dial_from) if cfg.dial_from else runs[cfg.budgets[len(cfg.budgets) // 2]]
    dial = dial_rows(dial_run, cfg.budgets, target, L)
    clock.lap("hadskip-dial", t)

    records: dict[tuple[str, float], dict] = {("full", float(L)): record(full_ev["test"]["preds"],
                                                                          full_ev["test"]["layers"])}
    rows = [row("full", L, full_ev)]
    for k in cfg.budgets:
        rows.append(row("budgeted-exit", k, budgeted[k], run=budgeted[k]["run"]))
        records[("budgeted-exit", k)] = record(budgeted[k]["test"]["preds"], budgeted[k]["test"]["layers"])
        c = cascades[k]
        if c is not None:
            rows.append({"method": "cascade", "budget": k, **{n: c[n] for n in (
                "value", "avg_layers", "dev_value", "dev_avg_layers", "threshold", "first_layers", "deferred_test")},
                "run": str(root / f"budgeted-exit-{c['first_layers']}-e{epochs[k]:g}")})
            records[("cascade", k)] = record(c["preds"], c["layers"])
        for r in exits["rows"][k]:
            rec = r.pop("_record", None)
            rows.append(r)
            if rec is not None:
                records[(r["method"], k)] = record(rec["preds"], rec["layers"])
        r, rec = _gated_row("hadskip", k, hadskip[k][0], hadskip[k][1], L, run=str(runs[k]))
        rows.append(r)
        records[("hadskip", k)] = rec
        r = dial["rows"][k]
        rec = r.pop("_record")
        codes = path_codes(run_outputs(dial_run, "test", gate_offset=r["gate_offset"]).gates)
        rows.append({**r, **path_diversity(codes, L)})
        records[("hadskip-dial", k)] = record(rec["preds"], rec["layers"], codes)
        if k in oracle:
            o = oracle[k]
            rows.append({"method": "best-subset", "budget": k, "value": o["best_subset_test"], "avg_layers": o["k"],
                         "dev_value": o["best_subset_dev"], "dev_avg_layers": o["k"], "subset": o["best_subset"],
                         "run": o["run"]})
            rows.append({"method": "oracle", "budget": k, "value": o["oracle_test"], "avg_layers": o["k"],
                         "subsets": o["subsets"], "rows_where_subsets_disagree": o["rows_where_subsets_disagree"],
                         "run": o["run"]})
            records[("best-subset", k)] = record(o["best_subset_preds"], np.full(len(labels["test"]), o["k"]))
            codes = path_codes(o["router_gates"])
            rows.append({"method": "subset-router", "budget": k, "value": o["router_test"], "avg_layers": o["k"],
                         "dev_value": o["router_dev"], "dev_avg_layers": o["k"], "alpha": o["router_alpha"],
                         "train_rows": o["router_train_rows"], "fitted_on": o["router_fit"], "run": o["run"],
                         **({"no_held_out": o["router_no_held_out"]} if "router_no_held_out" in o else {}),
                         **path_diversity(codes, L)})
            records[("subset-router", k)] = record(o["router_preds"], np.full(len(labels["test"]), o["k"]), codes)
        for v in cfg.variants:
            score_variant = _skip_exit_row if VARIANTS[v].get("exit_heads") else _dial_row
            r, rec = score_variant(f"hadskip-{v}", variant_runs[(v, k)], k, target[k], L)
            rows.append(r)
            records[(f"hadskip-{v}", k)] = rec
    grid = np.arange(1.0, L + 1e-9, 0.125)
    curves = {"full": [[full_ev["test"]["avg_layers"], full_ev["test"]["value"]]],
              "budgeted-exit": sorted([budgeted[k]["test"]["avg_layers"], budgeted[k]["test"]["value"]]
                                      for k in cfg.budgets),
              "cascade": cascade_curve(first_models[max(cfg.budgets)], score, grid),
              "early-exit": exits["curves"]["early-exit"], "patience-exit": exits["curves"]["patience-exit"],
              "hadskip": sorted([hadskip[k][0]["test"]["avg_layers"], hadskip[k][0]["test"]["value"]]
                                for k in cfg.budgets),
              "hadskip-dial": dial["curve"]}
    for v in cfg.variants:
        curves[f"hadskip-{v}"] = sorted([r["avg_layers"], r["value"]] for r in rows if r["method"] == f"hadskip-{v}")
    result = {"task": full_out["test"].task, "metric": spec_metric,
              "num_labels": n_labels, "split": "test", "num_layers": L, "seed": seed, "variants": list(cfg.variants),
              "train_examples": cfg.train_examples,
              "rows": rows, "curves": curves, "margins": margins(rows, cfg.budgets),
              "deploy": {f"{k:g}": d for k in cfg.budgets
                         if (d := route_to_deploy({r["method"]: r for r in rows if r["budget"] == k}, k))},
              "epochs": {f"{k:g}": epochs[k] for k in cfg.budgets}, "exit_model_epochs": ep_exit,
              "dial_from": str(dial_run), "kd": cfg.kd,
              "runs": {"teacher": str(teacher_dir), "out": str(root), "early-exit": str(edir)},
              "seconds": {**clock.parts, "total": round(time.time() - clock.t0, 1)},
              "peak_rss_mb": {**clock.peak, "process": _peak_mb()}}
    result["dev_curves"] = _dev_curves(runs, variant_runs, trained, edir)
    save_records(root, labels["test"], records)
    (root / "compare.json").write_text(json.dumps(result, indent=2))
    (root / "compare.md").write_text(to_markdown(result))
    result["plot"] = str(plot_frontier(result, root / "frontier.png"))
    result["dev_curves_plot"] = str(plot_dev_curves(result["dev_curves"], root / "dev_curves.png"))
    (root / "compare.json").write_text(json.dumps(result, indent=2))
    return result


def _dev_curves(runs: dict, variant_runs: dict, budgeted: dict, edir: Path) -> dict:
    """Every trained run's dev curve (does dev still improve at the end of the schedule?): HadSkip runs
    [[stage III epochs, k, dev, dev layers], ...], budgeted exit [[epochs, dev], ...], the multi-exit model
    [[epochs, [dev of each exit]], ...]; runs trained before the curves were recorded have none."""
    curves = {f"hadskip@{k:g}": read_info(r).metrics.get("dev_curve") for k, r in runs.items()}
    curves.update({f"hadskip-{v}@{k:g}": read_info(r).metrics.get("dev_curve") for (v, k), r in variant_runs.items()})
    curves.update({Path(d).name: read_info(d).metrics.get("dev_curve") for d in budgeted})
    curves[edir.name] = read_info(edir).metrics.get("dev_curve")
    return curves


def compare_seeds(cfg: CompareConfig) -> dict:
    """`compare` once per seed of cfg.seeds (every method trained from the same teacher with that seed, in
    OUT/seed-S; finished runs are reused, so a study is built up run by run across sessions), then the
    statistics over seeds (seeds.py) in OUT. Returns them."""
    if cfg.dial_from:
        raise HadSkipError("--dial-from names one seed's run: give it without --seeds")
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    teacher_dir, _ = teacher(cfg, root)
    per_seed, result = [], {}
    for i, s in enumerate(cfg.seeds):
        if cfg.progress:
            print(f"seed {s} ({i + 1}/{len(cfg.seeds)}): {root / f'seed-{s}'}", file=sys.stderr, flush=True)
        per_seed.append(compare(replace(cfg, out=str(root / f"seed-{s}"), seeds=[s], teacher=str(teacher_dir))))
        # the statistics of the seeds finished so far (a study stopped here still reports them)
        result = aggregate(per_seed, [root / f"seed-{t}" for t in cfg.seeds[:i + 1]])
        result["seeds_planned"] = list(cfg.seeds)
        (root / "compare.json").write_text(json.dumps(result, indent=2))
        (root / "compare.md").write_text(seeds_markdown(result))
        result["plot"] = str(plot_frontier(result, root / "frontier.png"))
        (root / "compare.json").write_text(json.dumps(result, indent=2))
    return result
