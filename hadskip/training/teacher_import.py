"""`hadskip train --teacher CLASSIFIER`: a fine-tuned transformers sequence classifier (folder or hub name) as
stage I, without re-fine-tuning.

It is materialised once as a proper finetune run dir, OUT/stages/teacher-import (its weights and head, its config
with id2label, its tokenizer; dev and test metrics of the task evaluated with every layer on), and the rest of
`train` reads that run exactly as it reads a `hadskip finetune` run.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from hadskip.errors import HadSkipError
from hadskip.evaluation.evaluate import evaluate
from hadskip.modeling.checkpoint import RunInfo, save_run
from hadskip.modeling.hf_classifier import id2label_names, load_hf_classifier
from hadskip.training.loop import Prepared

IMPORT_STAGE = "teacher-import"


def check_labels(name: str, teacher: list[str] | None, num_labels: int, spec) -> None:
    """The classifier fits the task: as many labels, and named labels (when both name them) in the same order;
    HadSkipError (one line) otherwise."""
    if num_labels != spec.num_labels:
        raise HadSkipError(f"--teacher {name} has {num_labels} labels, task {spec.name} has {spec.num_labels}")
    own = [str(n) for n in (spec.label_names or ())]
    if teacher and own and [n.lower() for n in teacher] != [n.lower() for n in own] \
            and sorted(n.lower() for n in teacher) == sorted(n.lower() for n in own):
        raise HadSkipError(f"--teacher {name} numbers its labels {','.join(teacher)} but task {spec.name} numbers "
                           f"them {','.join(own)}: label i would mean another class; reorder the task's labels or "
                           "use integer labels")


def import_teacher(cfg, dest: Path) -> Path:
    """Write the classifier cfg.teacher as the finetune run dir `dest` (kind "finetune"); returns dest."""
    t0 = time.time()
    model, tokenizer = load_hf_classifier(cfg.teacher)
    prep = Prepared(cfg, tokenizer)
    check_labels(cfg.teacher, id2label_names(model.config.hf_config), model.config.num_labels, prep.spec)
    dev = evaluate(model, prep.dev, prep.spec.metric, prep.pad_id, cfg.eval_batch_size, gates="off")
    test = evaluate(model, prep.test, prep.spec.metric, prep.pad_id, cfg.eval_batch_size, gates="off")
    metrics = {"dev": dev.value, "test": test.value, "epoch": 0, "seconds": round(time.time() - t0, 1)}
    return save_run(dest, model, tokenizer, RunInfo(task=prep.task_dict(), max_len=cfg.max_len, kind="finetune",
                                                    metrics=metrics, extra={"imported_from": cfg.teacher,
                                                                            "config": asdict(cfg)}))
