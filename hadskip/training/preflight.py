"""Checks `finetune` and `train` make before they create a run dir or train a step.

A refused backbone, a --max-len beyond the backbone's position table, a budget beyond its layers or a teacher
of the wrong kind would otherwise surface after an epoch of training, or leave an empty run dir behind.
These read configs only (the backbone's config.json, the teacher's run.json and model_config.json): no
weights and no task data.
"""

from __future__ import annotations

from pathlib import Path

from hadskip.errors import HadSkipError
from hadskip.modeling.backbone import check_max_len, load_config
from hadskip.modeling.checkpoint import read_model_config, read_teacher, task_source
from hadskip.modeling.hf_classifier import classifier_config, classifier_location
from hadskip.training.schedule import homotopy_schedule


def check_finetune(cfg, init=None) -> None:
    """For `finetune(cfg, init)`: the backbone loads and is supported, and cfg.max_len fits its positions.
    `init` (model, tokenizer) replaces the backbone, as in the baselines."""
    hf_config = init[0].config.hf_config if init is not None else load_config(cfg.backbone).to_dict()
    check_max_len(cfg.max_len, hf_config, cfg.backbone)


def check_hadskip(cfg) -> None:
    """For `train_hadskip(cfg)`: the teacher (or backbone) is usable, its max_len fits, the budget fits its layers."""
    if cfg.teacher and classifier_location(cfg.teacher) is not None:  # a transformers classifier
        config = classifier_config(cfg.teacher)
        hf_config, num_layers, max_len, name = config.to_dict(), config.num_hidden_layers, cfg.max_len, cfg.teacher
    elif cfg.teacher:
        teacher = Path(cfg.teacher)
        if Path(cfg.out).resolve() == teacher.resolve():
            raise HadSkipError(f"--out {cfg.out} is the --teacher run: training would overwrite the teacher it "
                               "reads; give another --out")
        info = read_teacher(teacher)
        model_config = read_model_config(teacher)
        hf_config, num_layers, max_len, name = (model_config["hf_config"], int(model_config["num_layers"]),
                                                 info.max_len, str(teacher))
    else:
        config = load_config(cfg.backbone)
        hf_config, num_layers, max_len, name = config.to_dict(), config.num_hidden_layers, cfg.max_len, cfg.backbone
    check_max_len(max_len, hf_config, name)
    # the schedule the run will use; raises for budget > layers
    homotopy_schedule(num_layers, cfg.budget, cfg.homotopy, cfg.homotopy_start)



def resolve_task(cfg) -> None:
    """A HadSkip run without a task trains on its teacher's (the same folder and columns), or on
    rotten-tomatoes when stage I runs here; an explicit task (and columns) is kept as given."""
    if cfg.task is not None:
        return
    if not cfg.teacher:
        cfg.task = "rotten-tomatoes"
        return
    if classifier_location(cfg.teacher) is not None:
        raise HadSkipError(f"--teacher {cfg.teacher} is a transformers classifier, which records no task: give "
                           "--task (the task, or folder, it was fine-tuned on)")
    name, options = task_source(read_teacher(Path(cfg.teacher)).task)
    cfg.task = name
    for key in ("text_col", "pair_col", "label_col", "metric"):
        if getattr(cfg, key) is None and options.get(key) is not None:
            setattr(cfg, key, options[key])
