"""Run directories: a trained model saved as safetensors + JSON, reloadable without the backbone files.

    RUN/model.safetensors     GatedEncoder weights (safetensors: never unpickle untrusted files)
    RUN/model_config.json     ModelConfig (backbone facts and the transformers config)
    RUN/run.json              task spec, max_len, budget, what produced it, metrics
    RUN/tokenizer/            the tokenizer (tokenizer.json is what export copies)

Saving writes run.json last: a dir without it is not a run, so a kill never leaves a half checkpoint loadable.

`claim_run_dir` is the one rule for writing a run dir: a finished run is continued only with `resume`,
replaced only with `force`, and a folder holding anything else is never written into.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hadskip.data import load_task
from hadskip.data.batches import Encoded, encode_split, pad_id
from hadskip.errors import HadSkipError
from hadskip.modeling.backbone import empty_hf_model
from hadskip.modeling.encoder import GatedEncoder, ModelConfig

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

    @property
    def is_teacher(self) -> bool:
        """A `hadskip finetune` run (stage I): every layer on, no gates trained; what HadSkip and the baselines
        start from and distil from."""
        return self.kind == "finetune"

    @property
    def is_gated(self) -> bool:
        """A run whose gates were trained for a budget (`hadskip train` and its stages II/III): evaluated with
        routing, calibrated by a dial."""
        return not self.is_teacher and self.budget is not None


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
    folder = src.pop("folder", None)  # a model dir's folder task: by name only (hadskip.export.portable)
    if name is None:
        raise HadSkipError(f"the model was trained on the task folder {folder or task.get('name')!r}, which a model "
                           "dir records by name only: pass --task FOLDER (the folder with its train/dev/test files)")
    return name, {k: v for k, v in src.items() if v is not None}


def load_run_task(task: dict, override: str | None = None):
    """The TaskData of a run's (or manifest's) task dict; `override` loads that task instead."""
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


def read_teacher(path: str | Path, flag: str = "--teacher") -> RunInfo:
    """The RunInfo of the teacher run `path`; HadSkipError (naming `flag`) unless it is a finished finetune run."""
    info = read_info(path)
    if not info.is_teacher:
        raise HadSkipError(f"{flag} {path} is a {info.kind!r} run, not a finetune run")
    return info


def read_model_config(path: str | Path) -> dict:
    """RUN/model_config.json as a dict (the ModelConfig fields), checked to hold what a rebuild needs."""
    f = Path(path) / "model_config.json"
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HadSkipError(f"cannot read {f}: {exc}") from exc
    if not isinstance(d, dict) or not isinstance(d.get("hf_config"), dict) or "num_layers" not in d:
        raise HadSkipError(f"{f} lacks hf_config or num_layers; is {path} a hadskip run dir?")
    return d


@dataclass
class RunSplit:
    """One split of a run's task, tokenised as the run was trained (its tokenizer and max_len)."""

    enc: Encoded
    pad_id: int
    spec: object  # hadskip.data.TaskSpec


def encode_run_split(tokenizer, info: RunInfo, split: str, task: str | None = None) -> RunSplit:
    """The `split` of the run's task (or of `task`, another task or folder) encoded with the run's tokenizer."""
    data = load_run_task(info.task, task)
    return RunSplit(encode_split(data.split(split), tokenizer, info.max_len), pad_id(tokenizer), data.spec)


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


# what hadskip itself writes into a run dir: the only entries `claim_run_dir(force=True)` removes
RUN_ENTRIES = ("model.safetensors", "model_config.json", "run.json", "run.json.tmp", "tokenizer", ".saving",
               "log.jsonl", "progress.json", "progress.tmp", "stages", "dial.json", "dial.json.tmp")
_EVAL_DIR = re.compile(r"eval-(train|dev|test|validation)(-b[0-9.eE+-]+)?")  # `hadskip eval RUN`'s plot folders
KILLED_LEFTOVERS = {"log.jsonl", ".saving"}  # what a run killed before its first save leaves


def _is_run_entry(name: str) -> bool:
    return name in RUN_ENTRIES or _EVAL_DIR.fullmatch(name) is not None


def _progress(path: Path) -> dict | None:
    """OUT/progress.json when it is ours ({"settings": {...}, "done": {...}}), else None."""
    try:
        d = json.loads((path / "progress.json").read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(d, dict) and isinstance(d.get("settings"), dict) and isinstance(d.get("done"), dict)
    return d if ok else None


def _our_log(path: Path) -> bool:
    """OUT/log.jsonl as our Log writes it: its first line a JSON object with a "time"."""
    try:
        with open(path / "log.jsonl", encoding="utf-8") as fh:
            first = json.loads(fh.readline())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(first, dict) and "time" in first


def claim_run_dir(out: str | Path, *, resume: bool = False, force: bool = False, resumable: bool = True) -> Path:
    """Make `out` ready to train into, or refuse in one line; the one rule for every command that writes a run.

    A folder is a run of ours when it has a run.json that reads or a progress.json of ours; then
    - finished (run.json), or with stages done (progress.json): refused, unless `force` (its hadskip files are
      removed first; other files stay) or `resume` (only a `hadskip train` run, which has a progress.json);
    Otherwise
    - missing or empty: created;
    - only what a run killed before its first save leaves (our log.jsonl): reused;
    - anything else (a user's folder, even one with names like ours): refused, even with `force`;
    - a file, a dangling symlink, or a path that cannot be created or written: refused.
    `resumable` False (finetune) leaves --resume out of the advice."""
    p = Path(out)
    if p.is_symlink() and not p.exists():
        raise HadSkipError(f"--out {p} is a dangling symlink; give a folder")
    if p.exists() and not p.is_dir():
        raise HadSkipError(f"--out {p} is a file, not a folder")
    entries = sorted(e.name for e in p.iterdir()) if p.is_dir() else []
    if entries:
        finished = None
        if (p / "run.json").is_file():
            try:
                finished = read_info(p)
            except (HadSkipError, TypeError):
                finished = None
        progress = _progress(p)
        done = len(progress["done"]) if progress else 0
        ours = finished is not None or progress is not None
        killed = set(entries) <= KILLED_LEFTOVERS and (p / "log.jsonl").is_file() and _our_log(p)
        hint = ("--resume continues it, --force replaces it" if resumable else "--force replaces it")
        if not ours and not killed:
            foreign = [e for e in entries if not _is_run_entry(e)] or entries
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise HadSkipError(f"--out {p} holds files that are not a hadskip run ({shown}); refusing to write into "
                               "it: give a new or empty folder")
        if force:
            _remove_run_entries(p, entries)
        elif resume and resumable and progress is not None:
            pass
        elif resume and resumable and finished is not None:
            raise HadSkipError(f"--out {p} holds a finished {finished.kind} run without a progress.json: --resume "
                               "continues a `hadskip train` run only; --force replaces it, or give another --out")
        elif finished is not None:
            raise HadSkipError(f"--out {p} already holds a finished {finished.kind} run; {hint}, or give another "
                               "--out")
        elif done:
            raise HadSkipError(f"--out {p} holds an unfinished run with {done} stage(s) done; {hint}, or give "
                               "another --out")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as exc:
        raise HadSkipError(f"cannot write the run dir {p}: {exc.strerror or exc}") from exc
    return p


def _remove_run_entries(p: Path, entries: list[str]) -> None:
    for name in entries:
        if not _is_run_entry(name):
            continue  # not ours: kept
        e = p / name
        if e.is_symlink() or e.is_file():
            e.unlink()
        elif e.is_dir():
            shutil.rmtree(e)

