"""What the trained baselines share: their config, the teacher they start from, and the training run.

Every baseline starts from the same fine-tuned teacher as HadSkip, trains for a given number of epochs (the
comparison passes HadSkip's stage III epochs) with the same optimiser, schedule and batch size, and distils
from the teacher with the same loss weights where the method allows it (hadskip.training.losses.LossWeights).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from hadskip.errors import HadSkipError
from hadskip.modeling.checkpoint import RunInfo, load_run, read_teacher, save_run, task_source
from hadskip.training import loop
from hadskip.training.config import KdMode, LossWeights, OptimConfig, TrainConfig


@dataclass(kw_only=True)
class BaselineConfig(OptimConfig):
    """A baseline trained from `teacher` (a finished finetune run) into the run dir `out`, with the optimiser
    settings (OptimConfig: lr, batch_size, weight_decay, warmup, seed) of the HadSkip run it is compared with."""

    teacher: str
    out: str
    epochs: float  # HadSkip's stage III epochs at the compared budget
    kd: str = "full"  # "full" | "logits" | "none", as HadSkip's --kd
    new_lr: float = 1e-3  # modules the teacher lacks (exit heads): HadSkip's gate learning rate for its gates
    eval_batch_size: int = 64
    max_examples: int | None = None
    train_examples: int | None = None  # as HadSkip's run at the compared budget
    exit_pool: str | None = None  # the multi-exit model's exit heads (units.EXIT_POOLS; None: "mean"); else unused
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs <= 0 or self.new_lr <= 0:
            raise HadSkipError("a baseline needs epochs > 0 and learning rates > 0")
        KdMode.parse(self.kd, "kd")

    def weights(self) -> LossWeights:
        return KdMode(self.kd).weights()


@dataclass
class Setup:
    """The teacher (frozen, on the training device), its tokenizer and task data, and the accelerator."""

    cfg: BaselineConfig
    acc: object
    teacher: torch.nn.Module
    tokenizer: object
    prep: loop.Prepared
    train_cfg: object  # hadskip.training.config.TrainConfig of the teacher's task, with this baseline's settings


def setup(cfg: BaselineConfig) -> Setup:
    read_teacher(cfg.teacher, "teacher")
    teacher, tokenizer, info = load_run(cfg.teacher)
    task, options = task_source(info.task)
    optim = {f.name: getattr(cfg, f.name) for f in fields(OptimConfig)}
    tc = TrainConfig(backbone=teacher.config.backbone, task=task, out=cfg.out, max_len=info.max_len,
                     epochs=cfg.epochs, max_examples=cfg.max_examples, train_examples=cfg.train_examples,
                     eval_batch_size=cfg.eval_batch_size,
                     progress=cfg.progress, **optim, **options)
    acc = loop.accelerator(cfg.seed)
    prep = loop.Prepared(tc, tokenizer)
    teacher = teacher.eval().to(acc.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return Setup(cfg, acc, teacher, tokenizer, prep, tc)


def train(st: Setup, model, step_fn, desc: str, new: list | None = None, dev_fn=None) -> tuple:
    """cfg.epochs of `step_fn(model_prepared, batch)` over the training split: the parameters in `new` (modules
    the teacher lacks) at cfg.new_lr, every other parameter of `model` at cfg.lr.
    dev_fn(unwrapped model) -> dev score(s), taken after each epoch and at the end (the dev curve).
    Returns (the unwrapped model, mean loss parts, seconds, dev curve [[epochs, score], ...])."""
    cfg, acc = st.cfg, st.acc
    t0 = time.time()
    for name, p in model.named_parameters():  # the gates a plain model carries get no gradient: frozen (DDP)
        p.requires_grad_(".gates." not in f".{name}")
    fresh = {id(p) for p in new or []}
    old = [p for p in model.parameters() if id(p) not in fresh and p.requires_grad]
    opt = loop.adamw([(old, cfg.lr), (list(new or []), cfg.new_lr)], cfg.weight_decay)
    dl = loop.train_loader(acc, st.prep, st.train_cfg, cfg.seed + 20)
    model_p, opt = acc.prepare(model, opt)
    curve: list = []

    def on_pass(done: int) -> None:
        curve.append([round(done / len(dl), 4), dev_fn(acc.unwrap_model(model_p))])
        if cfg.progress and acc.is_main_process:  # a line per epoch also where stderr is no terminal (--json)
            print(f"{desc}: {curve[-1][0]:g} epochs, dev {curve[-1][1]}", file=sys.stderr, flush=True)

    parts = loop.run_steps(acc, model_p, dl, opt, loop.num_steps(len(dl), cfg.epochs), cfg.warmup,
                           lambda batch: step_fn(model_p, batch), desc, cfg.progress,
                           on_pass=on_pass if dev_fn is not None else None)
    model = acc.unwrap_model(model_p)
    acc.free_memory()
    return model, parts, time.time() - t0, curve


def save(st: Setup, model, kind: str, metrics: dict, extra: dict | None = None) -> Path:
    out = Path(st.cfg.out)
    if st.acc.is_main_process:
        save_run(out, model.cpu(), st.tokenizer, RunInfo(
            task=st.prep.task_dict(), max_len=st.train_cfg.max_len, kind=kind, metrics=metrics,
            extra={"config": asdict(st.cfg), "teacher": str(st.cfg.teacher), **(extra or {})}))
    st.acc.wait_for_everyone()
    return out
