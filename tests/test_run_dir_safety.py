"""Training never overwrites a finished run or writes into a user's folder (issue 23, item 1).

`hadskip train --out <a finished run>` used to retrain silently, overwriting model.safetensors, run.json and
tokenizer/ and leaving a stale dial.json. Now: --resume continues, --force replaces (only what hadskip wrote
there), anything else is refused in one line before any work; a folder of someone else's files is never
written into, even with --force.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hadskip.modeling.checkpoint import claim_run_dir, read_info, write_info
from hadskip.cli.main import main
from hadskip.errors import HadSkipError
from hadskip.testing import tiny_backbone_dir, tiny_run, tiny_task_dir


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    torch.set_num_threads(1)
    return tmp_path_factory.mktemp("run-dir-safety")


@pytest.fixture(scope="module")
def task(root):
    return tiny_task_dir(root / "task", n_train=16, n_eval=8)


@pytest.fixture(scope="module")
def teacher(root):
    t = tiny_run(root / "teacher", "bert")
    write_info(t, replace(read_info(t), kind="finetune"))
    return t


def _train(teacher, task, out, *extra) -> list[str]:
    return ["train", "--teacher", str(teacher), "--task", str(task), "--budget", "2", "--stage2-epochs", "0.2",
            "--phase-epochs", "0.2", "--final-phase-epochs", "0.2", "--batch-size", "8", "--max-len", "32",
            "--out", str(out), "--quiet", *extra]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def finished(root, teacher, task):
    out = root / "finished"
    assert main(_train(teacher, task, out)) == 0
    return out


def test_a_finished_run_is_refused_without_resume_or_force(finished, teacher, task, capsys):
    (finished / "dial.json").write_text('{"mine": true}')
    before = {p.name: _sha(p) for p in finished.iterdir() if p.is_file()}
    assert main(_train(teacher, task, finished)) == 2
    assert "already holds a finished hadskip run; --resume continues it, --force replaces it" in _one_error(capsys)
    assert {p.name: _sha(p) for p in finished.iterdir() if p.is_file()} == before


def test_resume_continues_a_finished_run_without_retraining(finished, teacher, task):
    weights = _sha(finished / "model.safetensors")
    assert main(_train(teacher, task, finished, "--resume")) == 0
    assert _sha(finished / "model.safetensors") == weights  # every phase was recorded: nothing trained again


def test_force_replaces_only_what_hadskip_wrote(root, teacher, task):
    out = root / "forced"
    assert main(_train(teacher, task, out)) == 0
    (out / "dial.json").write_text("{}")  # a dial of the old weights must not survive them
    (out / "eval-test").mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "mine").mkdir()
    assert main(_train(teacher, task, out, "--force")) == 0
    assert not (out / "dial.json").exists() and not (out / "eval-test").exists()
    assert (out / "notes.txt").read_text() == "my notes" and (out / "mine").is_dir()
    assert read_info(out).kind == "hadskip"


def test_finetune_over_a_finished_run_is_refused(teacher, capsys):
    before = _sha(teacher / "model.safetensors")
    assert main(["finetune", "--out", str(teacher), "--quiet"]) == 2
    message = _one_error(capsys)
    assert "already holds a finished finetune run; --force replaces it" in message and "--resume" not in message
    assert _sha(teacher / "model.safetensors") == before


@pytest.mark.parametrize("flags", [[], ["--force"], ["--resume"]])
def test_a_folder_of_someone_elses_files_is_never_written_into(root, teacher, task, flags, capsys):
    web = root / f"webapp{len(flags)}{flags[0] if flags else ''}"
    web.mkdir()
    (web / "index.html").write_text("<html>mine</html>")
    (web / "model.safetensors").write_text("not ours either")  # a name we write: still not ours
    assert main(_train(teacher, task, web, *flags)) == 2
    assert "holds files that are not a hadskip run (index.html" in _one_error(capsys)
    assert sorted(p.name for p in web.iterdir()) == ["index.html", "model.safetensors"]
    assert (web / "model.safetensors").read_text() == "not ours either"


def test_a_foreign_run_json_does_not_make_a_folder_ours(root, teacher, task, capsys):
    d = root / "other-tool"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"id": 7}))  # another tool's run.json, not our schema
    (d / "results.csv").write_text("a,b\n")
    assert main(_train(teacher, task, d, "--force")) == 2
    assert "not a hadskip run (results.csv)" in _one_error(capsys)
    assert (d / "run.json").read_text() == json.dumps({"id": 7})


def test_an_unfinished_run_with_stages_done_needs_resume_or_force(root, capsys):
    d = root / "unfinished"
    (d / "stages" / "stage2").mkdir(parents=True)
    (d / "progress.json").write_text(json.dumps({"settings": {}, "done": {"stage2": str(d / "stages/stage2")}}))
    with pytest.raises(HadSkipError, match=r"unfinished run with 1 stage\(s\) done; --resume continues it"):
        claim_run_dir(d)
    claim_run_dir(d, resume=True)
    assert (d / "progress.json").is_file()
    claim_run_dir(d, force=True)
    assert list(d.iterdir()) == []


def test_what_a_killed_run_leaves_with_nothing_done_is_reused(root):
    d = root / "killed"
    d.mkdir()
    (d / "log.jsonl").write_text('{"stage": "finetune", "epoch": 1, "time": 1.0}\n')
    assert claim_run_dir(d, resumable=False) == d and (d / "log.jsonl").is_file()


def test_out_a_file_or_unwritable_is_one_line(root, teacher, task, capsys):
    f = root / "a-file"
    f.write_text("x")
    for out, pattern in ((f, "is a file, not a folder"), (f / "below", "cannot write the run dir"),
                         (Path("/proc/hadskip-cannot-be-here"), "cannot write the run dir")):
        assert main(_train(teacher, task, out)) == 2
        assert pattern in _one_error(capsys)
    assert f.read_text() == "x"
    link = root / "dangling"
    os.symlink(root / "nowhere", link)
    assert main(_train(teacher, task, link)) == 2
    assert "dangling symlink" in _one_error(capsys)


@pytest.mark.parametrize("option, value", [("--epochs", "nan"), ("--budget", "nan"), ("--budget", "inf"),
                                           ("--stage2-epochs", "nan"), ("--final-phase-epochs", "-inf"),
                                           ("--lr", "nan"), ("--gate-lr", "inf"), ("--tau", "nan"),
                                           ("--beta", "nan"), ("--homotopy-start", "nan")])
def test_non_finite_numbers_are_one_line_before_any_work(root, teacher, task, option, value, capsys):
    out = root / f"nan{option}{value}"
    assert main(_train(teacher, task, out, option, value)) == 2
    assert f"{option} must be a finite number" in _one_error(capsys)
    assert not out.exists()


def test_finetune_refuses_non_finite_epochs(root, capsys):
    backbone = tiny_backbone_dir(root / "backbone", "bert")
    out = root / "ft-nan"
    assert main(["finetune", "--backbone", str(backbone), "--epochs", "nan", "--out", str(out), "--quiet"]) == 2
    assert "--epochs must be a finite number" in _one_error(capsys)
    assert not out.exists()


def test_resume_never_continues_into_a_run_that_train_did_not_write(teacher, task, capsys):
    """Review finding: `train --resume --out TEACHER` retrained over the teacher (a finished run without a
    progress.json); --out equal to --teacher is refused, and --resume needs a `hadskip train` run."""
    before = _sha(teacher / "model.safetensors")
    assert main(_train(teacher, task, teacher, "--resume")) == 2
    assert "is the --teacher run" in _one_error(capsys)
    with pytest.raises(HadSkipError, match="--resume continues a `hadskip train` run only"):
        claim_run_dir(teacher, resume=True)
    assert _sha(teacher / "model.safetensors") == before


def test_a_folder_with_names_like_ours_is_not_ours(root):
    """Review finding: stages/, eval-*/ and log.jsonl of a user's folder made it "ours" (reused, and --force
    removed them); a folder is ours by a run.json or progress.json that reads, or our own log alone."""
    d = root / "lookalike"
    (d / "stages").mkdir(parents=True)
    (d / "stages" / "my_notes.txt").write_text("mine")
    (d / "eval-results").mkdir()
    (d / "eval-results" / "table.csv").write_text("a,b")
    (d / "log.jsonl").write_text("my own log\n")
    for kw in ({}, {"force": True}, {"resume": True}):
        with pytest.raises(HadSkipError, match="not a hadskip run"):
            claim_run_dir(d, **kw)
    assert (d / "stages" / "my_notes.txt").read_text() == "mine" and (d / "eval-results" / "table.csv").exists()
