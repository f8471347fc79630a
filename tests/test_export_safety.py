"""Export never loses a user's files and never leaves temp dirs: the --out rule, and signals mid-export.

The signal tests run a real export in a subprocess, held inside its first unit, and send it SIGTERM or SIGINT
there; afterwards nothing may be left beside the target or in the temp dir, and an old model dir at the target
must be exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hadskip.export import ExportError, export_model
from hadskip.runtime.manifest import load_manifest
from hadskip.testing import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("safety") / "run", "bert")


@pytest.fixture(scope="module")
def model_dir(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("safety-model") / "model"
    export_model(run_dir, out, max_batch=2, validate=False, progress=False)
    return out


def snapshot(root: Path) -> dict:
    """Every entry under root (not following links): path -> sha256 of a file, the target of a link, or 'dir'."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _user_file(d: Path, tmp: Path) -> str:
    (d / "notes.txt").write_text("mine")
    return "notes.txt"


def _run_dir_inside(d: Path, tmp: Path) -> str:
    tiny_run(d / "myrun", "bert")
    return "myrun/"


def _file_in_a_unit_folder(d: Path, tmp: Path) -> str:
    (d / "layers" / "README").write_text("my notes on the layers")
    return "layers/README"


def _empty_folder(d: Path, tmp: Path) -> str:
    (d / "keep").mkdir()
    return "keep/"


def _symlink(d: Path, tmp: Path) -> str:
    (tmp / "precious").mkdir(exist_ok=True)
    (tmp / "precious" / "data.txt").write_text("elsewhere")
    (d / "data").symlink_to(tmp / "precious", target_is_directory=True)
    return "data (a symlink)"


def _listed_file_replaced_by_a_link(d: Path, tmp: Path) -> str:
    (tmp / "head-backup.onnx").write_bytes((d / "head.onnx").read_bytes())
    (d / "head.onnx").unlink()
    (d / "head.onnx").symlink_to(tmp / "head-backup.onnx")
    return "head.onnx (a symlink)"


@pytest.mark.parametrize("plant", [_user_file, _run_dir_inside, _file_in_a_unit_folder, _empty_folder, _symlink,
                                   _listed_file_replaced_by_a_link])
def test_reexport_refuses_a_model_dir_holding_anything_else(run_dir, model_dir, tmp_path, plant):
    import shutil

    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    name = plant(d, tmp_path)
    before, around = snapshot(d), snapshot(tmp_path)
    with pytest.raises(ExportError) as err:
        export_model(run_dir, d, max_batch=2, validate=False, progress=False)
    message = str(err.value)
    assert "\n" not in message and name in message and "export did not write" in message
    assert snapshot(d) == before and snapshot(tmp_path) == around  # nothing removed, nothing left beside


def test_refusals_of_unreadable_or_foreign_dirs(run_dir, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "a.txt").write_text("x")
    with pytest.raises(ExportError, match="not a hadskip model dir"):
        export_model(run_dir, foreign, progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(ExportError, match="manifest.json that is not a hadskip model dir's"):
        export_model(run_dir, broken, progress=False)
    (broken / "manifest.json").write_text(json.dumps({"files": ["a"]}))
    with pytest.raises(ExportError, match="not a hadskip model dir's"):
        export_model(run_dir, broken, progress=False)
    assert (foreign / "a.txt").read_text() == "x" and (broken / "manifest.json").is_file()


def test_a_foreign_manifest_with_a_files_object_owns_nothing(run_dir, tmp_path):
    """Issue 23 item 2: a web app's manifest.json whose "files" object lists the app's files made export delete
    them; ownership is proven by our schema and hashes now."""
    web = tmp_path / "webapp"
    web.mkdir()
    (web / "index.html").write_text("<html>mine</html>")
    (web / "manifest.json").write_text(json.dumps({"name": "app", "files": {"index.html": {"sha256": "0" * 64}}}))
    before = snapshot(web)
    with pytest.raises(ExportError, match="not a hadskip model dir's") as err:
        export_model(run_dir, web, max_batch=2, validate=False, progress=False)
    assert "\n" not in str(err.value) and snapshot(web) == before


def test_a_listed_file_changed_since_the_export_is_not_replaced(run_dir, model_dir, tmp_path):
    import shutil

    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    (d / "head.onnx").write_bytes(b"my own head, edited after the export")
    before = snapshot(d)
    with pytest.raises(ExportError, match=r"changed since they were exported \(head\.onnx\)"):
        export_model(run_dir, d, max_batch=2, validate=False, progress=False)
    assert snapshot(d) == before


@pytest.mark.parametrize("listed", ["../victim.txt", "/tmp/victim.txt", "layers/../../victim.txt", "a\0b"])
def test_a_manifest_listing_paths_outside_is_refused_and_nothing_outside_is_touched(run_dir, model_dir, tmp_path,
                                                                                    listed):
    import shutil

    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    (tmp_path / "victim.txt").write_text("precious")
    data = json.loads((d / "manifest.json").read_text())
    data["files"][listed.replace("/tmp/", f"{tmp_path}/")] = {"sha256": "0" * 64, "bytes": 8}
    (d / "manifest.json").write_text(json.dumps(data))
    before = snapshot(tmp_path)
    with pytest.raises(ExportError, match="lists a path outside it"):
        export_model(run_dir, d, max_batch=2, validate=False, progress=False)
    assert snapshot(tmp_path) == before


def test_an_out_under_a_file_is_one_line(run_dir, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match=r"cannot write the model dir .*afile/model") as err:
        export_model(run_dir, tmp_path / "afile" / "model", max_batch=2, validate=False, progress=False)
    assert "\n" not in str(err.value) and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_an_empty_dir_is_a_fine_target(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    export_model(run_dir, tmp_path / "empty", max_batch=2, validate=False, progress=False)
    assert load_manifest(tmp_path / "empty").num_layers == 3


def test_a_file_appearing_during_the_export_is_kept(run_dir, model_dir, tmp_path, monkeypatch):
    """The check is repeated at install, and the old dir is removed file by file, never as a tree."""
    import shutil

    from hadskip.export import install as inst

    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    real_check = inst.check_target

    def check_then_race(out):
        owned = real_check(out)
        (out / "late.txt").write_text("written while the export ran")  # after the last check
        return owned

    monkeypatch.setattr(inst, "check_target", check_then_race)
    with pytest.warns(UserWarning, match="kept in"):
        export_model(run_dir, d, max_batch=2, validate=False, progress=False)
    kept = [p for p in tmp_path.glob(".model.old-*/late.txt")]
    assert len(kept) == 1 and kept[0].read_text() == "written while the export ran"
    assert sorted(p.name for p in kept[0].parent.iterdir()) == ["late.txt"]  # the old model's files are gone


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import hadskip.export.units as units
    from hadskip.export import export_model

    run_dir, out, marker = sys.argv[1:4]
    real, done = units.export_onnx, []

    def held(spec, path, dummy):  # the first unit waits, inside the export, for the test's signal
        real(spec, path, dummy)
        done.append(spec.name)
        if len(done) == 1:
            Path(marker).write_text(spec.name)
            time.sleep(600)

    units.export_onnx = held
    export_model(run_dir, out, max_batch=2, progress=False)
    print("finished without a signal")
""")


def _interrupt(run_dir: Path, out: Path, tmpdir: Path, sig: int) -> subprocess.CompletedProcess:
    """Start an export in a subprocess (temp dir `tmpdir`), wait until it holds its first unit, send `sig`."""
    marker = tmpdir.parent / "marker"
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), str(out), str(marker)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300  # generous: the CI machine may be busy; this bounds a hang only
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the export never reached its first unit"
            time.sleep(0.05)
        leftovers = list(out.parent.glob(f".{out.name}.*.tmp")) + list(tmpdir.glob("hadskip-export-*"))
        assert leftovers, "the export should be mid-way, with its temp dirs present"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("sig,existing", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_a_signal_mid_export_leaves_no_temp_dirs(run_dir, model_dir, tmp_path, sig, existing):
    import shutil

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "target" / "model"
    out.parent.mkdir()
    if existing:
        shutil.copytree(model_dir, out)
    before = snapshot(out.parent)
    result = _interrupt(run_dir, out, tmpdir, sig)
    assert "finished without a signal" not in result.stdout
    assert result.returncode == -sig, result.stderr  # the process still ends by the signal, as without us
    assert list(tmpdir.glob("hadskip-export-*")) == []  # no scratch dir (other libraries may leave their own)
    assert snapshot(out.parent) == before  # no .model.*.tmp beside it; an old model dir untouched
    if existing:
        load_manifest(out)


def test_a_killed_export_leaves_temp_dirs_that_the_next_export_removes(run_dir, tmp_path, monkeypatch):
    """Issue 23: kill -9 cannot run a cleanup; the next export finds the dead export's dirs (by the pid in their
    names) and removes them, and leaves a live process's dirs alone."""
    import tempfile

    from hadskip.export.install import CleanupNote

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "target" / "model"
    out.parent.mkdir()
    _interrupt(run_dir, out, tmpdir, signal.SIGKILL)
    left = list(out.parent.glob(f".{out.name}.*.tmp")) + list(tmpdir.glob("hadskip-export-*"))
    assert len(left) == 2  # the kill left both behind
    from hadskip.export.install import _host_tag

    tag = _host_tag()
    live = [out.parent / f".{out.name}.hx{tag}-{os.getpid()}-live.tmp",
            tmpdir / f"hadskip-export-hx{tag}-{os.getppid()}-live"]
    # a user's dirs named like ours, and a dead pid's dir of another host (a shared folder): never ours
    theirs = [out.parent / f".{out.name}.3999999-mydata.tmp", tmpdir / "hadskip-export-3999999-mine",
              out.parent / f".{out.name}.hx00000000-3999999-other.tmp"]
    for d in live + theirs:
        d.mkdir()
        (d / "keep.txt").write_text("x")
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    with pytest.warns(CleanupNote, match="MB of temp dirs left by an export that was killed"):
        export_model(run_dir, out, max_batch=2, validate=False, progress=False)
    assert not any(d.exists() for d in left) and all((d / "keep.txt").exists() for d in live + theirs)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["model", live[0].name, theirs[0].name,
                                                                    theirs[2].name])
    load_manifest(out)
