"""`hadskip finetune | train | eval | compare`: training and evaluation commands (parse, then call the library)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

Backbone = Annotated[str, typer.Option(help="minilm-l6 (offline), a local model folder, or a hub name.")]
Task = Annotated[str, typer.Option(help="rotten-tomatoes (offline), glue/<name>, or a folder of train/dev/test files.")]
MaxLen = Annotated[int, typer.Option(help="Truncate inputs to this many tokens.")]
TextCol = Annotated[Optional[str], typer.Option(help="Text column of a folder task (default: text).")]
PairCol = Annotated[Optional[str], typer.Option(help="Second-text column of a folder task (default: text_pair).")]
LabelCol = Annotated[Optional[str], typer.Option(help="Label column of a folder task (default: label).")]
Metric = Annotated[Optional[str], typer.Option(help="Override the task metric: accuracy, f1 or mcc.")]
MaxExamples = Annotated[Optional[int], typer.Option(help="Cap every split (quick runs).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (logs go to stderr).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars or per-phase lines.")]
Force = Annotated[bool, typer.Option(
    "--force", help="Replace a run already at --out (only the files hadskip wrote there are removed).")]
Budget = Annotated[Optional[float], typer.Option(
    help="Target average layers through the model's budget dial (`hadskip dial`); default: the trained gates.")]


def finetune(
    out: Annotated[str, typer.Option(help="Run dir to write.")] = "runs/finetune",
    backbone: Backbone = "minilm-l6",
    task: Task = "rotten-tomatoes",
    max_len: MaxLen = 64,
    epochs: Annotated[float, typer.Option(help="Training epochs (fractions allowed).")] = 3.0,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (linear warmup and decay).")] = 5e-5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    max_examples: MaxExamples = None,
    text_col: TextCol = None,
    pair_col: PairCol = None,
    label_col: LabelCol = None,
    metric: Metric = None,
    force: Force = False,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a plain backbone (HadSkip's stage I and its teacher); keeps the best dev epoch."""
    from hadskip.training.config import TrainConfig
    from hadskip.training.finetune import finetune as run

    metrics = run(TrainConfig(backbone=backbone, task=task, out=out, max_len=max_len, epochs=epochs,
                              batch_size=batch_size, lr=lr, seed=seed, max_examples=max_examples, text_col=text_col,
                              pair_col=pair_col, label_col=label_col, metric=metric, progress=not quiet,
                              force=force))
    _report({"out": out, **metrics}, as_json)


def train(
    out: Annotated[str, typer.Option(help="Run dir to write (stages are kept under OUT/stages/).")] = "runs/hadskip",
    backbone: Backbone = "minilm-l6",
    task: Task = "rotten-tomatoes",
    budget: Annotated[float, typer.Option(help="Average layers to run, K of L (fractions allowed).")] = 3.0,
    teacher: Annotated[Optional[str], typer.Option(help="Reuse a finished `hadskip finetune` run as stage I.")] = None,
    max_len: MaxLen = 64,
    epochs: Annotated[float, typer.Option(help="Stage I epochs (when no --teacher).")] = 3.0,
    stage2_epochs: Annotated[float, typer.Option(help="Stage II (gate initialisation) epochs.")] = 0.5,
    phase_epochs: Annotated[float, typer.Option(help="Epochs per homotopic phase of stage III.")] = 1.0,
    final_phase_epochs: Annotated[float, typer.Option(help="Epochs of the last phase (k = K).")] = 2.0,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 32,
    lr: Annotated[float, typer.Option(help="Backbone learning rate.")] = 5e-5,
    gate_lr: Annotated[float, typer.Option(help="Gate learning rate.")] = 1e-3,
    estimator: Annotated[str, typer.Option(help="Gate gradient estimator: reinmax or ste.")] = "reinmax",
    tau: Annotated[float, typer.Option(help="ReinMax temperature.")] = 1.0,
    beta: Annotated[float, typer.Option(help="Weight of the budget penalty.")] = 20.0,
    kd: Annotated[str, typer.Option(help="Distillation: full, logits (prediction-KD only) or none.")] = "full",
    no_gate_init: Annotated[bool, typer.Option("--no-gate-init", help="Ablation: skip stage II.")] = False,
    no_homotopy: Annotated[bool, typer.Option("--no-homotopy", help="Ablation: stage III at K only.")] = False,
    homotopy_start: Annotated[Optional[float], typer.Option(
        help="First k of stage III's homotopy (default: L). Total stage III epochs stay the same.")] = None,
    stage2_kd: Annotated[bool, typer.Option("--stage2-kd", help="Distil from the teacher in stage II too.")] = False,
    hard_tail: Annotated[float, typer.Option(
        help="Share of the last phase trained on the gates' own (inference) decisions, gates frozen.")] = 0.0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue after the last finished stage/phase.")] = False,
    force: Force = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    max_examples: MaxExamples = None,
    text_col: TextCol = None,
    pair_col: PairCol = None,
    label_col: LabelCol = None,
    metric: Metric = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Train HadSkip: stage I (or --teacher), gate initialisation, then joint KD training to the budget."""
    from hadskip.training.config import HadSkipConfig, LossWeights
    from hadskip.training.stages import train_hadskip

    cfg = HadSkipConfig(backbone=backbone, task=task, out=out, budget=budget, teacher=teacher, max_len=max_len,
                        epochs=epochs, stage2_epochs=stage2_epochs, phase_epochs=phase_epochs,
                        final_phase_epochs=final_phase_epochs, batch_size=batch_size, lr=lr, gate_lr=gate_lr,
                        estimator=estimator, tau=tau, weights=LossWeights(budget=beta), kd=kd,
                        gate_init=not no_gate_init, homotopy=not no_homotopy, homotopy_start=homotopy_start,
                        stage2_kd=stage2_kd, hard_tail=hard_tail, resume=resume, seed=seed,
                        max_examples=max_examples, text_col=text_col, pair_col=pair_col, label_col=label_col,
                        metric=metric, progress=not quiet, force=force)
    _report({"out": out, **train_hadskip(cfg)}, as_json)


def evaluate(
    path: Annotated[str, typer.Argument(help="A run dir (or an exported model dir).")],
    split: Annotated[str, typer.Option(help="train, dev or test.")] = "test",
    task: Annotated[Optional[str], typer.Option(help="Evaluate on another task/folder than the run's own.")] = None,
    plots: Annotated[Optional[str], typer.Option(
        help="Folder for PNG plots (default: RUN/eval-SPLIT/ for a run dir; none for a model dir, which is never "
             "written into).")] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")] = False,
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 64,
    budget: Budget = None,
    as_json: Json = False,
) -> None:
    """Task metric, average layers, per-layer usage and the layers-used histogram (JSON + PNG plots)."""
    from hadskip.evaluation.report import evaluate_path

    report = evaluate_path(path, split=split, task=task, plots_dir=None if no_plots else (plots or ""),
                           batch_size=batch_size, budget=budget)
    _report(report, as_json)


def dial(
    run: Annotated[str, typer.Argument(help="A `hadskip train` run dir.")],
    targets: Annotated[Optional[str], typer.Option(
        help="Average layers to record, comma-separated (default: 1, 1.5, ..., L and the trained budget); the "
             "dial serves budgets between the smallest and the largest.")] = None,
    split: Annotated[str, typer.Option(help="Split to calibrate on (choose settings on dev, report test).")] = "dev",
    batch_size: Annotated[int, typer.Option(min=1, max=4096, help="Rows per sweep batch.")] = 32,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Calibrate the budget dial: gate offset -> average layers -> dev metric, written to RUN/dial.json
    (`hadskip export` copies it into the manifest; then --budget works in eval, predict, bench, serve-local)."""
    from hadskip.evaluation.dial import calibrate
    from hadskip.errors import HadSkipError

    values = None
    if targets is not None:
        try:
            values = [float(t) for t in targets.split(",") if t.strip()]
        except ValueError as exc:
            raise HadSkipError(f"--targets takes numbers of layers like 2,2.5,3 ({exc})") from exc
        if not values:
            raise HadSkipError("--targets is empty")
    d = calibrate(run, values, split=split, batch_size=batch_size, progress=not quiet)
    if as_json:
        typer.echo(json.dumps({"path": str(Path(run) / "dial.json"), **d.to_dict()}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"budget dial of {run} ({d.task}, {d.split}, {d.examples} examples)",
                  caption=f"written to {Path(run) / 'dial.json'}; average layers "
                          f"{'never rose' if d.monotone else f'rose by up to {d.max_rise:.4f}'} with the offset")
    for col in ("target", "gate offset", "avg layers", f"{d.split} {d.metric}"):
        table.add_column(col, justify="right")
    for p in d.points:
        table.add_row(f"{p.target:g}", f"{p.offset:.4f}", f"{p.avg_layers:.3f}", f"{p.value:.4f}")
    Console().print(table)


def _report(d: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(d))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("key", "value")
    for k, v in d.items():
        table.add_row(str(k), f"{v:.4f}" if isinstance(v, float) else json.dumps(v) if isinstance(v, dict | list)
                      else str(v))
    Console().print(table)




def compare(
    task: Annotated[Optional[str], typer.Option(
        help="Task (default: the --teacher's task, else rotten-tomatoes); registry name or folder.")] = None,
    budgets: Annotated[str, typer.Option(help="Comma-separated budgets K, e.g. 2,3,4.")] = "2,3,4",
    out: Annotated[str, typer.Option(help="Folder for the runs it trains, compare.md/json and frontier.png.")
                   ] = "runs/compare",
    backbone: Backbone = "minilm-l6",
    teacher: Annotated[Optional[str], typer.Option(help="A finished finetune run to use as the full model.")] = None,
    hadskip_run: Annotated[Optional[list[str]], typer.Option(
        "--hadskip", help="Reuse a trained HadSkip run for a budget: K=RUN_DIR (repeatable; its budget, teacher "
                          "and task must match).")] = None,
    dial_from: Annotated[Optional[str], typer.Option(
        help="The HadSkip run whose budget dial gives the hadskip-dial rows (default: the middle budget's).")
                         ] = None,
    phase_epochs: Annotated[Optional[float], typer.Option(
        help="Stage III epochs per homotopic phase of HadSkip runs trained here.")] = None,
    final_phase_epochs: Annotated[Optional[float], typer.Option(
        help="Epochs of the last phase of HadSkip runs trained here.")] = None,
    baseline_epochs: Annotated[Optional[float], typer.Option(
        help="Baseline training epochs (default: the compared HadSkip run's stage III epochs).")] = None,
    kd: Annotated[str, typer.Option(
        help="Distillation of every method (HadSkip runs given must match): full, logits or none.")] = "full",
    max_len: MaxLen = 64,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Full model vs budgeted exit, early exit (entropy and patience) and HadSkip at matched average layers;
    writes compare.md, compare.json and frontier.png (trains what is missing)."""
    from hadskip.evaluation.compare import CompareConfig, to_markdown
    from hadskip.evaluation.compare import compare as run
    from hadskip.errors import HadSkipError

    try:
        ks = [float(b) for b in budgets.split(",") if b.strip()]
        runs = {float(k): v for k, v in (item.split("=", 1) for item in (hadskip_run or []))}
    except ValueError as exc:
        raise HadSkipError(f"--budgets takes numbers like 2,3,4 and --hadskip takes K=RUN_DIR ({exc})") from exc
    options = {k: v for k, v in (("phase_epochs", phase_epochs), ("final_phase_epochs", final_phase_epochs))
               if v is not None}
    result = run(CompareConfig(task=task, budgets=ks, out=out, backbone=backbone, teacher=teacher,
                               hadskip_runs=runs, dial_from=dial_from, max_len=max_len, hadskip_options=options,
                               baseline_epochs=baseline_epochs, kd=kd, progress=not quiet))
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(to_markdown(result))
        typer.echo(f"frontier: {result['plot']}")
