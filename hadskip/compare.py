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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hadskip.checkpoint import read_info, task_source
from hadskip.errors import HadSkipError

METHODS = ("full", "budgeted-exit", "early-exit", "patience-exit", "hadskip", "hadskip-dial")
BASELINES = ("budgeted-exit", "early-exit", "patience-exit")


@dataclass
class CompareConfig:
    task: str | None = None  # default: the teacher's task, else rotten-tomatoes
    budgets: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0])
    out: str = "runs/compare"
    backbone: str = "minilm-l6"
    teacher: str | None = None  # a finished finetune run (trained into OUT/full when missing)
    hadskip_runs: dict[float, str] = field(default_factory=dict)  # K -> run dir (trained into OUT when missing)
    dial_from: str | None = None  # the run whose dial gives the hadskip-dial rows
    max_len: int = 64
    epochs: float = 3.0  # the teacher's epochs, when trained here
    hadskip_options: dict = field(default_factory=dict)  # HadSkipConfig fields for runs trained here
    baseline_epochs: float | None = None  # default: the compared HadSkip run's stage III epochs
    kd: str = "full"  # distillation of every method trained here (and of every --hadskip run): full, logits, none
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.budgets:
            raise HadSkipError("give at least one budget, e.g. --budgets 2,3,4")
        if any(not b > 0 for b in self.budgets):  # NaN too
            raise HadSkipError(f"budgets must be > 0, got {self.budgets}")
        self.budgets = sorted(set(float(b) for b in self.budgets))
        self.hadskip_runs = {float(k): str(v) for k, v in self.hadskip_runs.items()}
        extra = sorted(set(self.hadskip_runs) - set(self.budgets))
        if extra:
            raise HadSkipError(f"--hadskip given for budget(s) {extra} that are not in --budgets {self.budgets}")
        if self.kd not in ("full", "logits", "none"):
            raise HadSkipError(f"--kd must be full, logits or none, got {self.kd!r}")
        if self.baseline_epochs is not None and not self.baseline_epochs > 0:
            raise HadSkipError(f"--baseline-epochs must be > 0, got {self.baseline_epochs}")


def _have(run_dir: Path) -> bool:
    return (run_dir / "run.json").is_file()


def _weights_id(run_dir: Path) -> str:
    from hadskip.runtime.manifest import sha256_file

    return sha256_file(Path(run_dir) / "model.safetensors")


def _same_run(a: str | Path, b: str | Path) -> bool:
    """The same run dir, or a copy of it (same weights)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return _weights_id(a) == _weights_id(b)
    except OSError:
        return False


def _task_key(task: dict) -> tuple:
    src = task.get("source") or {}
    return task.get("name"), src.get("text_col"), src.get("pair_col"), src.get("label_col"), src.get("metric")


def check_hadskip_run(run: str | Path, budget: float | None, teacher: str | Path, teacher_task: dict,
                      kd: str | None = None, flag: str = "--hadskip") -> None:
    """Refuse a run that is not a HadSkip run for `budget` (None: any), from `teacher`, on the teacher's task,
    distilled as `kd` (None: any)."""
    run = Path(run)
    info = read_info(run)
    if info.kind != "hadskip" or info.budget is None:
        raise HadSkipError(f"{flag} {run}: a {info.kind!r} run, not a `hadskip train` run")
    if budget is None:
        budget = float(info.budget)
    run_kd = info.extra.get("config", {}).get("kd", "full")
    if kd is not None and run_kd != kd:
        raise HadSkipError(f"{flag} {budget:g}={run}: trained with --kd {run_kd}, the comparison distils with {kd}")
    if abs(float(info.budget) - budget) > 1e-9:
        raise HadSkipError(f"{flag} {budget:g}={run}: trained for budget {info.budget}, not {budget:g}")
    if _task_key(info.task) != _task_key(teacher_task):
        raise HadSkipError(f"{flag} {budget:g}={run}: task {info.task.get('name')} differs from the teacher's "
                           f"{teacher_task.get('name')}")
    its_teacher = info.extra.get("teacher")
    if not its_teacher or not _same_run(its_teacher, teacher):
        raise HadSkipError(f"{flag} {budget:g}={run}: trained from teacher {its_teacher}, not {teacher}")


def _reuse_or_check(run_dir: Path, kind: str, wanted) -> bool:
    """True when run_dir holds a finished `kind` run trained with the BaselineConfig `wanted` (same teacher or a
    copy of it, same settings); False when it holds no run; refuses anything else (never overwritten silently)."""
    from dataclasses import asdict

    if not _have(run_dir):
        return False
    info = read_info(run_dir)
    skip = ("out", "progress", "teacher")
    want = {k: v for k, v in asdict(wanted).items() if k not in skip}
    have = {k: v for k, v in info.extra.get("config", {}).items() if k not in skip}
    diff = sorted(k for k in want if have.get(k) != want[k])
    if info.kind != kind or diff or not _same_run(info.extra.get("teacher", ""), wanted.teacher):
        what = f"other settings: {', '.join(diff)}" if diff else f"a {info.kind} run from {info.extra.get('teacher')}"
        raise HadSkipError(f"{run_dir} holds another run ({what}); remove it or choose another --out")
    return True


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


def _teacher(cfg: CompareConfig, root: Path) -> tuple[Path, dict]:
    from hadskip.train import TrainConfig, finetune

    if cfg.teacher:
        info = read_info(cfg.teacher)
        if info.kind != "finetune":
            raise HadSkipError(f"--teacher {cfg.teacher} is a {info.kind!r} run, not a finetune run")
        teacher_task, _ = task_source(info.task)
        if cfg.task is not None and cfg.task != teacher_task:
            raise HadSkipError(f"--task {cfg.task} differs from the teacher's task {teacher_task} ({cfg.teacher})")
        return Path(cfg.teacher), info.task
    teacher_dir = root / "full"
    task = cfg.task or "rotten-tomatoes"
    if not _have(teacher_dir):
        finetune(TrainConfig(backbone=cfg.backbone, task=task, out=str(teacher_dir), max_len=cfg.max_len,
                             epochs=cfg.epochs, progress=cfg.progress))
    info = read_info(teacher_dir)
    its_task, _ = task_source(info.task)
    backbone = json.loads((teacher_dir / "model_config.json").read_text()).get("backbone")
    if info.kind != "finetune" or its_task != task or backbone != cfg.backbone:
        raise HadSkipError(f"{teacher_dir} holds another teacher ({info.kind} of {backbone} on {its_task}; wanted "
                           f"{cfg.backbone} on {task}): remove it, choose another --out, or pass it as --teacher")
    return teacher_dir, info.task


def _metric(spec, preds: np.ndarray, labels: np.ndarray) -> float:
    from hadskip.data.metrics import compute_metric

    return float(compute_metric(spec.metric, preds, labels, spec.num_labels))


def compare(cfg: CompareConfig) -> dict:
    """Build (or reuse) every run, score every method on dev and test; write compare.json/md and frontier.png.
    Returns the compare.json dict."""
    from hadskip.baselines import BaselineConfig, train_budgeted_exit, train_exit_model
    from hadskip.report import evaluate_path
    from hadskip.train import HadSkipConfig, stage3_epochs, train_hadskip

    clock = _Clock()
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    t = time.time()
    teacher_dir, teacher_task = _teacher(cfg, root)
    task_name, options = task_source(teacher_task)
    full = {s: evaluate_path(str(teacher_dir), s, plots_dir=None) for s in ("dev", "test")}
    L = full["test"]["num_layers"]
    for k in cfg.budgets:
        if k > L:
            raise HadSkipError(f"budget {k:g} is more than the model's {L} layers")
    clock.lap("full", t)

    # every run given is checked before anything trains
    for k, run in cfg.hadskip_runs.items():
        if not _have(Path(run)):
            raise HadSkipError(f"--hadskip {k:g}={run} is not a finished run dir (no run.json)")
        check_hadskip_run(run, k, teacher_dir, teacher_task, cfg.kd)
    if cfg.dial_from:
        check_hadskip_run(cfg.dial_from, None, teacher_dir, teacher_task, cfg.kd, flag="--dial-from")

    # --- HadSkip at each budget (the compared average layers come from it) ---
    t = time.time()
    runs: dict[float, Path] = {}
    for k in cfg.budgets:
        run = Path(cfg.hadskip_runs.get(k) or root / f"hadskip-{k:g}")
        if not _have(run):
            train_hadskip(HadSkipConfig(backbone=cfg.backbone, task=task_name, out=str(run), budget=k,
                                        teacher=str(teacher_dir), max_len=cfg.max_len, progress=cfg.progress,
                                        kd=cfg.kd, **options, **cfg.hadskip_options))
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
        same = {f: c[f] for f in ("lr", "batch_size", "weight_decay", "warmup", "seed") if f in c}
        return BaselineConfig(teacher=str(teacher_dir), out=str(out), epochs=ep, kd=cfg.kd, progress=cfg.progress,
                              new_lr=c.get("gate_lr", 1e-3), **same)

    # --- budgeted exit: one static model per budget ---
    t = time.time()
    budgeted: dict[float, dict] = {}
    for k in cfg.budgets:
        kb = max(1, min(L, int(np.floor(target[k] + 0.5))))
        bdir = root / f"budgeted-exit-{kb}-e{epochs[k]:g}"
        wanted = base_cfg(bdir, epochs[k], k)
        if not _reuse_or_check(bdir, "budgeted-exit", wanted):
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
    if not _reuse_or_check(edir, "early-exit", wanted):
        train_exit_model(wanted)
    exits = _exit_rows(edir, cfg.budgets, target)
    clock.lap("early-exit", t)

    # --- the dial of one HadSkip run ---
    t = time.time()
    dial_run = Path(cfg.dial_from) if cfg.dial_from else runs[cfg.budgets[len(cfg.budgets) // 2]]
    dial = _dial_rows(dial_run, cfg.budgets, target, L)
    clock.lap("hadskip-dial", t)

    rows = [_row("full", L, full)]
    for k in cfg.budgets:
        rows.append(_row("budgeted-exit", k, budgeted[k], run=budgeted[k]["run"]))
        rows.extend(exits["rows"][k])
        rows.append(_row("hadskip", k, hadskip[k], run=str(runs[k])))
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
    from hadskip.frontier import plot_frontier

    result["plot"] = str(plot_frontier(result, root / "frontier.png"))
    (root / "compare.json").write_text(json.dumps(result, indent=2))
    return result


def _row(method: str, budget: float, ev: dict, **extra) -> dict:
    return {"method": method, "budget": budget, "value": ev["test"]["value"], "avg_layers": ev["test"]["avg_layers"],
            "dev_value": ev["dev"]["value"], "dev_avg_layers": ev["dev"]["avg_layers"], **extra}


def _exit_rows(edir: Path, budgets: list[float], target: dict[float, float]) -> dict:
    """early-exit and patience-exit rows at each budget, and their test curves."""
    from hadskip.baselines import exit_probs, load_exit_model
    from hadskip.baselines import rules
    from hadskip.batches import encode_split
    from hadskip.checkpoint import load_run_task

    model, tokenizer, info = load_exit_model(edir)
    data = load_run_task(info.task)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    probs, labels = {}, {}
    for s in ("dev", "test"):
        enc = encode_split(data.split(s), tokenizer, info.max_len)
        probs[s], labels[s] = exit_probs(model, enc, pad), enc.labels
    spec, L = data.spec, model.num_layers
    ent = {s: rules.entropy(p) for s, p in probs.items()}

    def at_threshold(s: str, thr: float) -> tuple[float, float]:
        op = rules.at_exits(probs[s], rules.exit_layers(ent[s], thr))
        return op.avg_layers, _metric(spec, op.preds, labels[s])

    patience = {s: [] for s in probs}
    for s in probs:
        preds = probs[s].argmax(-1)
        for p in range(L):
            op = rules.at_exits(probs[s], rules.patience_layers(preds, p))
            patience[s].append((op.avg_layers, _metric(spec, op.preds, labels[s])))
    rows: dict[float, list] = {}
    for k in budgets:
        thr = rules.threshold_for(ent["dev"], target[k])
        (dl, dv), (tl, tv) = at_threshold("dev", thr), at_threshold("test", thr)
        row_e = {"method": "early-exit", "budget": k, "value": tv, "avg_layers": tl, "dev_value": dv,
                 "dev_avg_layers": dl, "threshold": thr, "run": str(edir)}
        p, a = rules.mix(patience["dev"], target[k])
        (dl, dv), (tl, tv) = rules.mixed(patience["dev"], p, a), rules.mixed(patience["test"], p, a)
        row_p = {"method": "patience-exit", "budget": k, "value": tv, "avg_layers": tl, "dev_value": dv,
                 "dev_avg_layers": dl, "patience": [p, p + 1], "mix": a, "run": str(edir)}
        rows[k] = [row_e, row_p]
    grid = np.arange(1.0, L + 1e-9, 0.125)
    curve_e = sorted({at_threshold("test", rules.threshold_for(ent["dev"], g)) for g in grid})
    curve_p = [list(x) for x in patience["test"]]
    return {"rows": rows, "curves": {"early-exit": [list(x) for x in curve_e], "patience-exit": curve_p}}


def _dial_rows(run: Path, budgets: list[float], target: dict[float, float], L: int) -> dict:
    """hadskip-dial rows (dial calibrated on dev to each compared average, scored on test) and its test curve."""
    from hadskip.dial import build_dial, sweep_split

    dev, dev_labels, spec, info, _ = sweep_split(run, "dev", progress=False)
    test, test_labels, _, _, _ = sweep_split(run, "test", progress=False)
    grid = sorted(set([*(1.0 + 0.25 * j for j in range(int((L - 1) / 0.25) + 1)), *target.values()]))
    grid = [g for g in grid if 0.0 <= g <= L] or [float(L)]
    dial = build_dial(dev, dev_labels, spec.metric, spec.num_labels, L, grid)

    def on_test(offset: float) -> tuple[float, float]:
        layers, preds = test.at(offset, len(test_labels))
        return float(layers.mean()), _metric(spec, preds, test_labels)

    by_target = {p.target: p for p in dial.points}
    rows = {}
    for k in budgets:
        p = by_target.get(target[k]) or min(dial.points, key=lambda q: abs(q.target - target[k]))
        tl, tv = on_test(p.offset)
        rows[k] = {"method": "hadskip-dial", "budget": k, "value": tv, "avg_layers": tl, "dev_value": p.value,
                   "dev_avg_layers": p.avg_layers, "gate_offset": p.offset, "run": str(run),
                   "trained_budget": info.budget}
    curve = sorted({on_test(p.offset) for p in dial.curve})
    return {"rows": rows, "curve": [list(x) for x in curve]}


def margins(rows: list[dict], budgets: list[float]) -> dict:
    """Per budget: hadskip's test metric minus the best baseline's, and which baseline that is."""
    out = {}
    for k in budgets:
        at = {r["method"]: r for r in rows if r["budget"] == k}
        best = max(BASELINES, key=lambda m: at[m]["value"] if m in at else -np.inf)
        if "hadskip" in at and best in at:
            out[f"{k:g}"] = {"best_baseline": best, "hadskip_minus_best": at["hadskip"]["value"] - at[best]["value"],
                             "dial_minus_best": (at["hadskip-dial"]["value"] - at[best]["value"]
                                                 if "hadskip-dial" in at else None)}
    return out


def to_markdown(result: dict) -> str:
    full = result["rows"][0]["value"]
    m = result["metric"]
    lines = [f"| method | budget | test {m} | % of full | test avg layers | dev {m} | dev avg layers |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        pct = f"{100 * r['value'] / full:.1f}%" if full else "-"
        dev = f"{r['dev_value']:.4f} | {r['dev_avg_layers']:.2f}" if "dev_value" in r else "- | -"
        lines.append(f"| {r['method']} | {r['budget']:g} | {r['value']:.4f} | {pct} | {r['avg_layers']:.2f} | {dev} |")
    notes = [f"- budget {k}: hadskip − best baseline ({v['best_baseline']}) = {100 * v['hadskip_minus_best']:+.2f} "
             f"points" + (f"; dial {100 * v['dial_minus_best']:+.2f}" if v.get("dial_minus_best") is not None else "")
             for k, v in result.get("margins", {}).items()]
    epochs = ", ".join(f"{k}: {v:g}" for k, v in result.get("epochs", {}).items())
    notes.append(f"- training epochs per budget (HadSkip stage III = budgeted exit): {epochs}; early and patience "
                 f"exit: one multi-exit model, {result.get('exit_model_epochs', 0):g} epochs")
    return (f"Task {result['task']} (test; dynamic methods calibrated on dev to HadSkip's dev average layers)\n\n"
            + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n")
