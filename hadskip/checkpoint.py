"""Run directories: a trained model saved as safetensors + JSON, reloadable without the backbone files.

    RUN/model.safetensors     GatedEncoder weights (safetensors: never unpickle untrusted files)
    RUN/model_config.json     ModelConfig (backbone facts and the transformers config)
    RUN/run.json              task spec, max_len, budget, what produced it, metrics
    RUN/tokenizer/            the tokenizer (tokenizer.json is what export copies)

Saving writes run.json last: a dir without it is not a run, so a kill never leaves a half checkpoint loadable.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hadskip.errors import HadSkipError

RUN_FORMAT = 1


@dataclass
class RunInfo:
    """What a run dir says about how its model was made."""

    task: dict  # TaskSpec as a dict
    max_len: int
    kind: str  # "finetune" | "hadskip" | "budgeted-exit" | "early-exit" | a stage name
    budget: float | None = None  # K of L layers, for gated models
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    format: int = RUN_FORMAT


def save_run(path: str | Path, model, tokenizer, info: RunInfo) -> Path:
    """Save into PATH (created if needed), leaving other files there (e.g. stages/) alone.

    run.json is removed first and written last, so a dir killed mid-save has no run.json and is not taken
    for a run (nothing half-written is ever loaded)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path / ".saving"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (path / "run.json").unlink(missing_ok=True)  # the run is incomplete until run.json is back
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    (tmp / "model_config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    for name in ("model.safetensors", "model_config.json", "tokenizer"):
        dest = path / name
        if dest.is_dir():
            shutil.rmtree(dest)
        (tmp / name).replace(dest)
    shutil.rmtree(tmp)
    write_info(path, info)
    return path


def task_source(task: dict) -> tuple[str, dict]:
    """(task name or folder, load_task options) that load a run's task again. Runs record how they loaded it
    under task["source"]; older ones only have the registry name."""
    src = dict(task.get("source") or {"task": task.get("name")})
    name = src.pop("task")
    return name, {k: v for k, v in src.items() if v is not None}


def load_run_task(task: dict, override: str | None = None):
    """The TaskData of a run's (or manifest's) task dict; `override` loads that task instead."""
    from hadskip.data import load_task

    name, options = (override, {}) if override else task_source(task)
    return load_task(name, **options)


def read_info(path: str | Path) -> RunInfo:
    path = Path(path)
    f = path / "run.json"
    if not f.is_file():
        raise HadSkipError(f"{path} is not a hadskip run dir (no run.json)")
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise HadSkipError(f"{f} is not valid JSON ({exc})") from exc
    if d.get("format") != RUN_FORMAT:
        raise HadSkipError(f"{f} has run format {d.get('format')}, this hadskip reads {RUN_FORMAT}")
    return RunInfo(**d)


def write_info(path: str | Path, info: RunInfo) -> None:
    f = Path(path) / "run.json"
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2))
    tmp.replace(f)


# buffers the backbone rebuilds itself, so a checkpoint may lack them
REBUILT_BUFFERS = ("position_ids", "token_type_ids")


def load_weights(module, state: dict, mismatch: str, error: type[HadSkipError] = HadSkipError) -> None:
    """module.load_state_dict(state), where only REBUILT_BUFFERS may be missing; any other missing or unexpected
    key raises `error`: "<mismatch> (missing [...], unexpected [...])"."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(REBUILT_BUFFERS)]
    if missing or unexpected:
        raise error(f"{mismatch} (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_model(folder: str | Path, map_location: str = "cpu"):
    """The GatedEncoder (eval mode) in FOLDER/{model_config.json, model.safetensors}: a run dir, or the torch/
    folder of a model dir."""
    from safetensors.torch import load_file

    from hadskip.backbone import empty_hf_model
    from hadskip.model import GatedEncoder, ModelConfig

    folder = Path(folder)
    config = ModelConfig.from_dict(json.loads((folder / "model_config.json").read_text()))
    model = GatedEncoder(config, empty_hf_model(config.hf_config))
    weights = folder / "model.safetensors"
    load_weights(model, load_file(str(weights), device=map_location), f"{weights} does not match its config")
    return model.eval()


def load_run(path: str | Path, map_location: str = "cpu"):
    """(GatedEncoder in eval mode, tokenizer, RunInfo) from a run dir."""
    from transformers import AutoTokenizer

    path = Path(path)
    info = read_info(path)
    for name in ("model.safetensors", "model_config.json", "tokenizer"):
        if not (path / name).exists():
            raise HadSkipError(f"run dir {path} is missing {name}")
    model = load_model(path, map_location)
    tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"), use_fast=True)
    return model, tokenizer, info
