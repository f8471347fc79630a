"""What a manifest says about where a model came from, without the build machine's paths: a model dir is
pushed to the hub and loaded elsewhere, so a run is recorded by its folder's name and the sha256 of its
weights, a folder task and a local backbone folder by their folder's name (registry tasks and hub names as
they are)."""

from __future__ import annotations

from pathlib import Path

from hadskip.runtime.files import sha256_file


def run_ref(run_dir: str | Path) -> dict:
    """{"name": the run folder's name, "weights_sha256": of its model.safetensors (None: none there)}."""
    p = Path(run_dir)
    weights = p / "model.safetensors"
    return {"name": p.resolve().name, "weights_sha256": sha256_file(weights) if weights.is_file() else None}


def is_local_path(name: str) -> bool:
    """Whether `name` (a backbone or task as given) names a local file or folder rather than a registry or hub
    name: absolute, home- or dot-relative, or there."""
    p = Path(name)
    return p.is_absolute() or name.startswith(("~", ".")) or p.expanduser().exists()


def portable_name(name: str | None) -> str | None:
    """A local path as its last part; any other name as it is."""
    if not name or not is_local_path(name):
        return name
    return Path(name).expanduser().resolve().name or name


def portable_task(task: dict) -> dict:
    """The run's task dict for the manifest: a registry task as it is; a folder task by the folder's name, its
    `source` saying "folder": NAME instead of the path (`hadskip eval MODEL` then asks for --task FOLDER)."""
    from hadskip.data.tasks import TASKS

    out = dict(task)
    source = dict(task.get("source") or {"task": task.get("name")})
    where = source.get("task")
    if where is None or where in TASKS or not isinstance(where, str):
        return out
    name = Path(where).expanduser().name or str(where)
    out["name"] = name if task.get("name") == where or is_local_path(str(task.get("name", ""))) else task["name"]
    out["source"] = {**source, "task": None, "folder": name}
    return out
