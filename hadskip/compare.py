"""`hadskip compare`: the paper's Table-1 style comparison for one task, training what is missing.

Rows: full (the fine-tuned teacher), budgeted exit, entropy early exit and HadSkip, each with the budget,
the task metric on test and the measured average layers. Saved as OUT/compare.md and OUT/compare.json
(keys of docs/architecture.md, JSON outputs).
"""

from __future__ import annotations

import json
from pathlib import Path

from hadskip.checkpoint import read_info, task_source
from hadskip.errors import HadSkipError


def _have(run_dir: Path) -> bool:
    try:
        read_info(run_dir)
        return True
    except HadSkipError:
        return False


def compare(task: str | None, budgets: list[float], out: str = "runs/compare", backbone: str = "minilm-l6",
            teacher: str | None = None, hadskip_runs: dict[float, str] | None = None, max_len: int = 64,
            epochs: float = 3.0, exit_epochs: float = 2.0, hadskip_options: dict | None = None,
            progress: bool = True) -> dict:
    """Build (or reuse) every row and return {"task", "metric", "rows": [...]}; writes compare.md/json.
    With a teacher, every row uses the teacher's task (and column options); `task` may only repeat it."""
    from hadskip.baselines import early_exit, nearest_int_budget, train_budgeted_exit
    from hadskip.report import evaluate_path
    from hadskip.train import HadSkipConfig, TrainConfig, finetune, train_hadskip

    if not budgets:
        raise HadSkipError("give at least one budget, e.g. --budgets 2,3,4")
    root = Path(out)
    options: dict = {}
    if teacher:
        teacher_task, options = task_source(read_info(teacher).task)
        if task is not None and task != teacher_task:
            raise HadSkipError(f"--task {task} differs from the teacher's task {teacher_task} ({teacher})")
        task = teacher_task
    task = task or "rotten-tomatoes"
    root.mkdir(parents=True, exist_ok=True)
    teacher_dir = Path(teacher) if teacher else root / "full"
    if not _have(teacher_dir):
        if teacher:
            raise HadSkipError(f"--teacher {teacher} is not a finished run dir")
        finetune(TrainConfig(backbone=backbone, task=task, out=str(teacher_dir), max_len=max_len, epochs=epochs,
                             progress=progress))
    full = evaluate_path(str(teacher_dir), "test", plots_dir=None)
    L = full["num_layers"]
    rows = [{"method": "full", "budget": L, "value": full["value"], "avg_layers": full["avg_layers"]}]
    exits = early_exit(str(teacher_dir), budgets, out=str(root / "early-exit"))
    for k in budgets:
        if not 0 < k <= L:
            raise HadSkipError(f"budget {k} is outside 1..{L}")
        kb = nearest_int_budget(k)
        bdir = root / f"budgeted-exit-{kb}"
        if not _have(bdir):
            train_budgeted_exit(str(teacher_dir), kb, str(bdir), epochs=exit_epochs, progress=progress)
        b = evaluate_path(str(bdir), "test", plots_dir=None)
        rows.append({"method": "budgeted-exit", "budget": k, "value": b["value"], "avg_layers": b["avg_layers"]})
        e = exits[k]
        rows.append({"method": "early-exit", "budget": k, "value": e.test_value, "avg_layers": e.test_avg_layers,
                     "threshold": e.threshold})
        hdir = Path((hadskip_runs or {}).get(k) or root / f"hadskip-{k:g}")
        if not _have(hdir):
            train_hadskip(HadSkipConfig(backbone=backbone, task=task, out=str(hdir), budget=k,
                                        teacher=str(teacher_dir), max_len=max_len, progress=progress,
                                        **options, **(hadskip_options or {})))
        h = evaluate_path(str(hdir), "test", plots_dir=None)
        rows.append({"method": "hadskip", "budget": k, "value": h["value"], "avg_layers": h["avg_layers"]})
    result = {"task": full["task"], "metric": full["metric"], "rows": rows,
              "runs": {"teacher": str(teacher_dir), "out": str(root)}}
    (root / "compare.json").write_text(json.dumps(result, indent=2))
    (root / "compare.md").write_text(to_markdown(result))
    return result


def to_markdown(result: dict) -> str:
    full = result["rows"][0]["value"]
    lines = [f"| method | budget | {result['metric']} | % of full | avg layers |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['budget']:g} | {r['value']:.4f} | {100 * r['value'] / full:.1f}% "
                     f"| {r['avg_layers']:.2f} |")
    return f"Task {result['task']} (test split)\n\n" + "\n".join(lines) + "\n"
