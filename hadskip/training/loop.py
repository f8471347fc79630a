"""The training loop every stage shares (hadskip.training, hadskip.evaluation.baselines): accelerate setup, tokenised
task data, the optimiser, the step loop with one linear warmup/decay schedule, dev evaluation, and the per-phase log.

    run_steps(acc, model, dl, optimizer, steps, warmup, step_fn, desc, progress) -> mean loss parts
        step_fn(batch) -> {"part": loss tensor}; the parts are summed and back-propagated, "_x" parts are only
        logged (as "x").
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hadskip.data import load_task
from hadskip.data.batches import encode_split, loader, pad_id
from hadskip.errors import HadSkipError
from hadskip.evaluation.evaluate import evaluate

if TYPE_CHECKING:
    from hadskip.training.config import TrainConfig


class Log:
    """Per-phase records to OUT/log.jsonl and one line each to stderr."""

    def __init__(self, out: Path, enabled: bool = True):
        self.file = out / "log.jsonl"
        self.enabled = enabled

    def __call__(self, **record) -> None:
        record["time"] = round(time.time(), 1)
        with open(self.file, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.enabled:
            parts = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                             if k != "time")
            print(parts, file=sys.stderr, flush=True)


def accelerator(seed: int):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    acc = Accelerator()
    set_seed(seed)
    return acc


def progress_bar(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn
    from rich.console import Console

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                    console=Console(stderr=True), disable=not enabled, transient=False)


def adamw(groups: list[tuple[list, float]], weight_decay: float):
    """AdamW over (parameters, lr) groups, leaving out frozen parameters and empty groups."""
    params = [{"params": [p for p in ps if p.requires_grad], "lr": lr, "weight_decay": weight_decay}
              for ps, lr in groups]
    params = [g for g in params if g["params"]]
    return torch.optim.AdamW(params)


def run_steps(acc, model, dl, optimizer, steps: int, warmup: float, step_fn, desc: str, progress: bool,
              offset: int = 0, total: int | None = None, first_epoch: int = 0, on_pass=None):
    """`steps` optimisation steps over `dl` (re-iterated per epoch) with linear warmup/decay.
    `step_fn(batch)` returns loss parts; parts named "_x" are only logged (as "x"). Returns their means.
    on_pass(steps done): called after each full pass over `dl` and after the last step (a dev curve)."""
    # linear warmup then linear decay over `total` steps, of which this call runs [offset, offset + steps)
    total = total or steps
    warm = max(1, int(total * warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + offset + 1) / warm, max(0.0, (total - s - offset) / max(1, total - warm))))
    sums: dict[str, float] = defaultdict(float)
    done, epoch = 0, first_epoch
    model.train()
    with progress_bar(progress and acc.is_main_process) as bar:
        task = bar.add_task(desc, total=steps, status="")
        while done < steps:
            dl.dataset.epoch = epoch  # reseeds the shuffle
            for batch in dl:
                batch = {k: v.to(acc.device) for k, v in batch.items()}
                parts = step_fn(batch)
                loss = sum(v for k, v in parts.items() if not k.startswith("_"))
                acc.backward(loss)
                optimizer.step()
                sched.step()
                optimizer.zero_grad(set_to_none=True)
                for k, v in parts.items():
                    sums[k.lstrip("_")] += float(v.detach())
                done += 1
                bar.update(task, advance=1, status=f"loss {float(loss.detach()):.3f}")
                if done >= steps:
                    break
            else:
                if done == 0:
                    raise HadSkipError("an epoch yielded no training batch")
                if on_pass is not None and done < steps:
                    on_pass(done)
                    model.train()
            epoch += 1
    if on_pass is not None:
        on_pass(done)
        model.train()
    return {k: v / max(1, done) for k, v in sums.items()}


def load_data(cfg: TrainConfig):
    return load_task(cfg.task, text_col=cfg.text_col, pair_col=cfg.pair_col, label_col=cfg.label_col,
                     metric=cfg.metric, seed=cfg.seed, max_examples=cfg.max_examples,
                     train_examples=cfg.train_examples)


class Prepared:
    """Task data tokenised once, shared by every stage."""

    def __init__(self, cfg: TrainConfig, tokenizer, data=None):
        self.data = data if data is not None else load_data(cfg)
        self.source = {"task": cfg.task, "text_col": cfg.text_col, "pair_col": cfg.pair_col,
                       "label_col": cfg.label_col, "metric": cfg.metric}
        self.spec = self.data.spec
        self.pad_id = pad_id(tokenizer)
        self.train = encode_split(self.data.train, tokenizer, cfg.max_len)
        self.dev = encode_split(self.data.dev, tokenizer, cfg.max_len)
        self.test = encode_split(self.data.test, tokenizer, cfg.max_len)

    def task_dict(self) -> dict:
        """The TaskSpec plus how to load it again (`source` and column options) for `hadskip eval`."""
        d = asdict(self.spec)
        d["label_names"] = list(d.get("label_names") or [])
        d["source"] = self.source
        return d


def train_loader(acc, prep: Prepared, cfg: TrainConfig, seed: int):
    """This process's shard of the shuffled training batches (see BatchIterable)."""
    return loader(prep.train, cfg.batch_size, prep.pad_id, shuffle=True, seed=seed, rank=acc.process_index,
                  world=acc.num_processes)


def num_steps(n_batches: int, epochs: float) -> int:
    return max(1, math.ceil(n_batches * epochs))


def eval_split(acc, model, enc, prep: Prepared, cfg: TrainConfig, gates: str):
    """evaluate() on the unwrapped model (eval mode; predict() runs no gradient)."""
    return evaluate(acc.unwrap_model(model), enc, prep.spec.metric, prep.pad_id, cfg.eval_batch_size, gates=gates)
