"""Stage I: plain fine-tuning of the backbone and head (every layer on), keeping the best dev epoch: the teacher."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from functools import partial

from hadskip.evaluation.evaluate import evaluate
from hadskip.modeling.backbone import build_gated
from hadskip.modeling.checkpoint import RunInfo, claim_run_dir, save_run
from hadskip.training import loop
from hadskip.training.config import TrainConfig
from hadskip.training.loop import Log, Prepared, adamw, eval_split, num_steps, train_loader
from hadskip.training.losses import task_loss
from hadskip.training.preflight import check_finetune


def _task_step(model, batch) -> dict:
    """Stage I: the task loss of the plain encoder (every layer on every row)."""
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], gates="off")
    return {"task": task_loss(out.logits, batch["labels"])}


def finetune(cfg: TrainConfig, init=None, kind: str = "finetune") -> dict:
    """Fine-tune the plain backbone (or `init`, a (GatedEncoder, tokenizer) pair) with every layer on; keep the
    best dev epoch as the run dir cfg.out, of the given `kind`. Returns its metrics."""
    check_finetune(cfg, init)  # before the run dir exists
    out = claim_run_dir(cfg.out, force=cfg.force, resumable=False)
    log = Log(out, cfg.progress)
    acc = loop.accelerator(cfg.seed)
    t0 = time.time()
    data = loop.load_data(cfg)
    model, tokenizer = init if init is not None else build_gated(cfg.backbone, num_labels=data.spec.num_labels)
    prep = Prepared(cfg, tokenizer, data)
    for p in model.gate_parameters():
        p.requires_grad_(False)
    opt = adamw([(list(model.backbone_parameters()), cfg.lr)], cfg.weight_decay)
    dl = train_loader(acc, prep, cfg, cfg.seed)
    model, opt = acc.prepare(model, opt)

    # the best epoch is kept in memory and the run dir written once at the end: a run.json on disk always
    # means a finished run (make, compare and --teacher rely on that)
    best, best_state, best_epoch, examples, done = None, None, 0, 0, 0
    epochs = math.ceil(cfg.epochs)
    total = num_steps(len(dl), cfg.epochs)
    for epoch in range(epochs):
        steps = min(len(dl), total - done)
        # one warmup/decay schedule over all epochs, evaluated on dev after each
        parts = loop.run_steps(acc, model, dl, opt, steps, cfg.warmup, partial(_task_step, model),
                               f"{kind} epoch {epoch + 1}/{epochs}", cfg.progress, offset=done, total=total,
                               first_epoch=epoch)
        done += steps
        examples += steps * cfg.batch_size
        dev = eval_split(acc, model, prep.dev, prep, cfg, gates="off")
        log(stage=kind, epoch=epoch + 1, **parts, dev=dev.value, metric=dev.metric)
        if best is None or dev.value > best:
            best, best_epoch = dev.value, epoch + 1
            best_state = {k: v.detach().cpu().clone() for k, v in acc.unwrap_model(model).state_dict().items()}
    acc.wait_for_everyone()
    seconds = time.time() - t0
    final = acc.unwrap_model(model).cpu()
    final.load_state_dict(best_state)
    test = evaluate(final, prep.test, prep.spec.metric, prep.pad_id, cfg.eval_batch_size, gates="off")
    metrics = {"dev": best, "epoch": best_epoch, "test": test.value, "seconds": round(seconds, 1),
               "train_examples_per_s": round(examples * acc.num_processes / seconds, 2)}
    if acc.is_main_process:
        save_run(out, final, tokenizer, RunInfo(task=prep.task_dict(), max_len=cfg.max_len, kind=kind,
                                                metrics=metrics, extra={"config": asdict(cfg)}))
    acc.wait_for_everyone()
    acc.free_memory()
    log(stage=kind, done=True, test=test.value, seconds=round(seconds, 1))
    return metrics


# --------------------------------------------------------------------------------------------- stages II-III
