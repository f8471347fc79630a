"""The hub (issue 22, item 4): a manifest holds no build paths, a model dir loads by hub repo id (one resolver:
a local dir wins, else huggingface_hub's snapshot_download into the HF cache), `hadskip push` uploads a verified
model dir with a generated model card. Everything runs with the hub offline: a populated cache
(hadskip.testing.hub_cache_standin, HF_HUB_OFFLINE=1) or a loopback stand-in of the hub's HTTP API
(tests/hub_standin.py) reached by the real huggingface_hub client through HF_ENDPOINT, in subprocesses because
huggingface_hub reads its environment when imported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest



def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


# --- manifests hold no build paths --------------------------------------------------------------------------

def test_a_fresh_manifest_holds_no_absolute_path_nor_the_builders_home_or_cwd(tmp_path, monkeypatch):
    """A run trained on a folder task from a local backbone folder, with a recorded teacher, exported with its
    baseline from another working dir: no string of the manifest is an absolute path or contains the home,
    the cwd or the build tree; the run and the teacher are recorded by name and weights' sha256."""
    pytest.importorskip("optimum.exporters.onnx")
    from hadskip.export import export_model
    from hadskip.runtime.files import sha256_file
    from hadskip.runtime.manifest import load_manifest
    from hadskip.testing import tiny_run, tiny_task_dir

    build = tmp_path / "build"
    task = tiny_task_dir(build / "data" / "reviews")
    teacher = tiny_run(build / "runs" / "ft", "bert", seed=1)
    student = tiny_run(build / "runs" / "h3", "bert", seed=0)
    for path, kind, extra in ((teacher, "finetune", {}),
                              (student, "hadskip", {"teacher": str(teacher), "config": {"out": str(student)}})):
        info = json.loads((path / "run.json").read_text())
        info["task"].update(name=str(task), source={"task": str(task), "text_col": None, "pair_col": None,
                                                    "label_col": None, "metric": None})
        info.update(kind=kind, extra=extra)
        (path / "run.json").write_text(json.dumps(info))
        config = json.loads((path / "model_config.json").read_text())
        config["backbone"] = str(build / "backbones" / "tiny-bert")  # a local backbone folder
        (path / "model_config.json").write_text(json.dumps(config))
    (build / "backbones" / "tiny-bert").mkdir(parents=True)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    export_model(student, tmp_path / "model", with_baseline=True, max_batch=4, validate=False, progress=False)
    m = load_manifest(tmp_path / "model")
    raw = json.loads((tmp_path / "model" / "manifest.json").read_text())
    forbidden = [str(tmp_path), str(Path.home()), os.getcwd(), str(build)]
    bad = [s for s in _strings(raw) if s.startswith(("/", "~")) or any(f in s for f in forbidden)]
    assert not bad, bad
    assert m.export["run"] == {"name": "h3", "weights_sha256": sha256_file(student / "model.safetensors")}
    assert m.export["baseline"]["model"] == "teacher" and m.export["baseline"]["teacher_run"] == "ft"
    assert m.export["baseline"]["teacher_weights_sha256"] == sha256_file(teacher / "model.safetensors")
    assert m.task["name"] == "reviews" and m.backbone["name"] == "tiny-bert"


def test_eval_of_a_model_dir_whose_task_folder_is_recorded_by_name_asks_for_the_folder(tmp_path):
    """A folder task is recorded by its name only: `hadskip eval MODEL` without --task says to pass the
    folder (one line) instead of loading whatever folder of that name the cwd holds."""
    from hadskip.errors import HadSkipError
    from hadskip.modeling.checkpoint import load_run_task

    task = {"name": "reviews", "num_labels": 2, "metric": "accuracy",
            "source": {"task": None, "folder": "reviews", "text_col": None}}
    with pytest.raises(HadSkipError, match=r"task folder 'reviews'.*--task"):
        load_run_task(task)
