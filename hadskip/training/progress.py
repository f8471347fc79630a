"""OUT/progress.json of `hadskip train`: the settings and the stages/phases done, so --resume skips them."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, fields
from pathlib import Path

from hadskip.errors import HadSkipError

# settings that do not change what a finished phase contains (so --resume may change them)
_RESUMABLE = ("out", "resume", "force", "progress", "eval_batch_size")


def _defaults(cfg) -> dict:
    return {f.name: f.default for f in fields(cfg) if f.default is not MISSING and f.name not in _RESUMABLE}


class ProgressFile:
    """OUT/progress.json: the settings and the stages/phases done, each with its run dir. Only the main
    process writes it. --resume refuses a progress file written with other settings."""

    def __init__(self, out: Path, cfg, resume: bool, is_main: bool):
        self.file, self.is_main = out / "progress.json", is_main
        self.settings = {k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE}
        self.done: dict[str, str] = {}
        if resume and self.file.is_file():
            saved = json.loads(self.file.read_text())
            # a setting added after the run was written is read as its default (what that run trained with)
            had = {**_defaults(cfg), **saved.get("settings", {})}
            if had != {**_defaults(cfg), **self.settings}:
                changed = sorted(k for k in set(self.settings) | set(had) if self.settings.get(k) != had.get(k))
                raise HadSkipError(f"--resume: {out} was trained with other settings ({', '.join(changed)}); "
                                   "use the same options, or a new --out without --resume")
            self.done = saved["done"]
        elif is_main:
            self.file.unlink(missing_ok=True)

    def mark(self, name: str, run_dir: Path) -> None:
        self.done[name] = str(run_dir)
        if self.is_main:
            tmp = self.file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"settings": self.settings, "done": self.done}, indent=2))
            tmp.replace(self.file)
