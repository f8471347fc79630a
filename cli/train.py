"""`hadskip finetune | train | eval | compare`: training and evaluation commands (parse, then call the library)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from hadskip.cli.options import Budget, Json, config_command, field_help
from hadskip.training.config import HadSkipConfig, OptimConfig, TrainConfig

Backbone = Annotated[str, typer.Option(help=field_help(TrainConfig, "backbone"))]  # compare's, as train's
MaxLen = Annotated[int, typer.Option(help=field_help(TrainConfig, "max_len"))]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars or per-phase lines.")]

# Settings `hadskip train` does not offer, and why (every other field of HadSkipConfig is an option)
TRAIN_INTERNAL = {
    **{f"weights.{w}": "the paper's loss weights; set them from Python (HadSkipConfig(weights=LossWeights(...)))"
       for w in ("task", "kd_logits", "kd_hidden", "kd_attention", "kd_embedding", "temperature")},
}
FINETUNE_INTERNAL: dict[str, str] = {}
PANELS = {OptimConfig: "Optimiser", HadSkipConfig: "HadSkip stages"}
_JSON = inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Json)


def _finetune(cfg: TrainConfig, as_json: bool) -> None:
    from hadskip.training.finetune import finetune as run

    _report({"out": cfg.out, **run(cfg)}, as_json)


def _train(cfg: HadSkipConfig, as_json: bool) -> None:
    from hadskip.training.stages import train_hadskip

    metrics = train_hadskip(cfg)
    _report({"out": cfg.out, **metrics}, as_json)
    if metrics.get("budget_missed"):  # the run is saved and kept; exit 0
        typer.echo(f"warning: {metrics['budget_missed']['message']}", err=True)


finetune = config_command(
    TrainConfig, _finetune, internal=FINETUNE_INTERNAL, panels=PANELS, extra=(_JSON,),
    doc="Fine-tune a plain backbone (HadSkip's stage I and its teacher); keeps the best dev epoch.")
train = config_command(
    HadSkipConfig, _train, internal=TRAIN_INTERNAL, panels=PANELS, extra=(_JSON,),
    doc="Train HadSkip: stage I (or --teacher), gate initialisation, then joint KD training to the budget.")


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
    if report.get("note"):
        typer.echo(f"note: {report['note']}", err=True)
    missed = report.get("budget_missed")
    if missed:
        typer.echo(f"warning: {report['avg_layers']:.2f} layers on average, {abs(missed['gap']):.2f} "
                   f"{'over' if missed['gap'] > 0 else 'under'} the budget {missed['budget']:g} "
                   f"(margin {missed['margin']:g}); `hadskip dial` calibrates budgets exactly", err=True)


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
    from hadskip.evaluation.skip_exit import exit_heads_note

    note = exit_heads_note(run)
    if note:
        typer.echo(f"note: {note}", err=True)
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
    seeds: Annotated[int, typer.Option(
        help="Train every method with seeds 0..N-1 (OUT/seed-S each; finished runs are reused) and report mean ± "
             "SE, paired bootstrap intervals and the route to deploy per budget.")] = 1,
    variants: Annotated[str, typer.Option(
        help="HadSkip variants trained beside it, comma-separated: per-layer (each layer runs for K/L of the "
             "rows), attn-gate (attention-pooled gate input), per-layer-attn (both), skip-exit (exit heads "
             "trained with the gates; gate offset and exit threshold set on dev).")] = "",
    train_examples: Annotated[Optional[int], typer.Option(
        help="Every method trains on the same fixed subset of this many training examples (dev/test whole).")
                              ] = None,
    oracle: Annotated[bool, typer.Option(
        help="Also train an any-subset backbone and report the best fixed K-subset and the per-row oracle over "
             "K-subsets (how much routing could add at all).")] = False,
    max_len: MaxLen = 64,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Full model vs budgeted exit, cascade, early exit (entropy and patience) and HadSkip at matched average
    layers; writes compare.md, compare.json, rows.npz and frontier.png (trains what is missing)."""
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
                               baseline_epochs=baseline_epochs, kd=kd, progress=not quiet,
                               seeds=list(range(seeds)) if seeds >= 1 else [], train_examples=train_examples,
                               variants=[v.strip() for v in variants.split(",") if v.strip()], oracle=oracle))
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(to_markdown(result))
        typer.echo(f"frontier: {result['plot']}")
