"""Which runs `hadskip compare` may reuse: the teacher, the --hadskip runs, the baselines already in OUT. A run that
does not match the comparison is refused, never overwritten."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from hadskip.errors import HadSkipError
from hadskip.evaluation.compare.plan import CompareConfig
from hadskip.modeling.checkpoint import read_info, read_model_config, read_teacher, task_source
from hadskip.runtime.files import sha256_file
from hadskip.training.config import TrainConfig
from hadskip.training.finetune import finetune



def finished(run_dir: Path) -> bool:
    return (run_dir / "run.json").is_file()


def _weights_id(run_dir: Path) -> str:
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


def reuse_or_check(run_dir: Path, kind: str, wanted) -> bool:
    """True when run_dir holds a finished `kind` run trained with the BaselineConfig `wanted` (same teacher or a
    copy of it, same settings); False when it holds no run; refuses anything else (never overwritten silently)."""
    if not finished(run_dir):
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


def teacher(cfg: CompareConfig, root: Path) -> tuple[Path, dict]:
    """(teacher run dir, its task dict): --teacher, or the teacher trained (or found) in OUT/full."""
    if cfg.teacher:
        info = read_teacher(cfg.teacher)
        teacher_task, _ = task_source(info.task)
        if cfg.task is not None and cfg.task != teacher_task:
            raise HadSkipError(f"--task {cfg.task} differs from the teacher's task {teacher_task} ({cfg.teacher})")
        return Path(cfg.teacher), info.task
    teacher_dir = root / "full"
    task = cfg.task or "rotten-tomatoes"
    if not finished(teacher_dir):
        finetune(TrainConfig(backbone=cfg.backbone, task=task, out=str(teacher_dir), max_len=cfg.max_len,
                             epochs=cfg.epochs, progress=cfg.progress))
    info = read_info(teacher_dir)
    its_task, _ = task_source(info.task)
    backbone = read_model_config(teacher_dir).get("backbone")
    if not info.is_teacher or its_task != task or backbone != cfg.backbone:
        raise HadSkipError(f"{teacher_dir} holds another teacher ({info.kind} of {backbone} on {its_task}; wanted "
                           f"{cfg.backbone} on {task}): remove it, choose another --out, or pass it as --teacher")
    return teacher_dir, info.task
