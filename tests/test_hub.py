"""The hub (issue 22, item 4): a manifest holds no build paths, a model dir loads by hub repo id (one resolver:
a local dir wins, else huggingface_hub's snapshot_download into the HF cache), `hadskip push` uploads a verified
model dir with a generated model card. Everything runs with the hub offline: a populated cache
(hadskip.testing.hub_cache_standin, HF_HUB_OFFLINE=1) or a loopback stand-in of the hub's HTTP API
(tests/hub_standin.py) reached by the real huggingface_hub client through HF_ENDPOINT, in subprocesses because
huggingface_hub reads its environment when imported."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hadskip.testing import hub_cache_standin
from test_runtime_support import cached_model  # tests/ is on sys.path under pytest



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


# --- loading by repo id, from a populated hub cache with the hub offline ----------------------------------

REPO = "someone/tiny-h3"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return cached_model(tmp_path_factory, "bert", 0)[1]


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch, model_dir):
    """The model dir laid out in a hub cache as a download of REPO (blobs + links), HF_HUB_OFFLINE on."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hf-cache"
    snap = hub_cache_standin(cache, REPO, model_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    return snap


def _texts(tmp_path) -> str:
    f = tmp_path / "in.txt"
    f.write_text("a good movie\nthe plot was dull and the actor was bad\nfun\n")
    return str(f)


def test_every_loader_takes_a_repo_id_from_the_hub_cache(offline_cache, model_dir, tmp_path, capsys):
    """Runtime.load, hadskip.pipeline, predict, bench and triton-repo take "owner/name": the cached snapshot,
    whose files are links into the cache's blobs, loads and checks like the model dir itself."""
    import hadskip
    from hadskip.cli.main import main
    from hadskip.runtime import Runtime
    from hadskip.runtime.bench import run_bench
    from hadskip.triton.repo import write_repo

    texts = ["a good movie", "the plot was dull"]
    with Runtime.load(model_dir) as local, Runtime.load(REPO) as hub:
        assert Path(hub.info.source).resolve() == offline_cache.resolve()
        assert (offline_cache / "layers" / "00.onnx").is_symlink()
        want, got = local.predict(texts), hub.predict(texts)
        assert got.labels == want.labels and (got.probabilities == want.probabilities).all()
    with hadskip.pipeline(REPO) as pipe:
        assert pipe(texts[0], top_k=None) == [{"label": k, "score": pytest.approx(v)}
                                              for k, v in sorted(want[0].probs.items(), key=lambda kv: -kv[1])]
    assert main(["predict", REPO, "-i", _texts(tmp_path), "--quiet"]) == 0
    assert [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()] == \
        Runtime.load(model_dir).predict(Path(_texts(tmp_path)).read_text().split("\n")[:3]).labels
    report = run_bench(REPO, batches=[1], seqs=[8], repeats=1, warmup=0, ks=[0])
    assert report.rows
    target = write_repo(REPO, tmp_path / "triton", revision=None)
    copied = target / "1" / "model"
    assert not (copied / "layers" / "00.onnx").is_symlink()
    assert (copied / "layers" / "00.onnx").read_bytes() == (model_dir / "layers" / "00.onnx").read_bytes()


def test_a_local_folder_wins_over_a_repo_id_of_the_same_spelling(offline_cache, tmp_path_factory, tmp_path):
    """./someone/tiny-h3 exists: it is loaded, not the hub's model of that name; --revision with it is refused."""
    from hadskip.errors import HadSkipError
    from hadskip.runtime import Runtime

    other = cached_model(tmp_path_factory, "bert", 1)[1]
    shutil.copytree(other, tmp_path / REPO)
    with Runtime.load(REPO) as rt:
        assert Path(rt.info.source) == Path(REPO)
        assert rt.predict(["a good movie"]).probabilities.tolist() == \
            Runtime.load(other).predict(["a good movie"]).probabilities.tolist()
    with pytest.raises(HadSkipError, match="--revision v2 applies to a hub repo id"):
        Runtime.load(REPO, revision="v2")


@pytest.mark.parametrize("name, pattern", [
    ("someone/missing", r"someone/missing is not in the hub cache .* HF_HUB_OFFLINE is set"),
    ("someone/a..b", r"'someone/a\.\.b' is not a hub repo id"),
    ("someone/a--b", r"is not a hub repo id"),
    ("someone/" + "x" * 200, r"is not a hub repo id"),
    ("../someone", r"model dir \.\./someone does not exist"),
])
def test_a_repo_id_that_cannot_load_is_one_line(offline_cache, name, pattern):
    import hadskip
    from hadskip.errors import HadSkipError

    with pytest.raises(HadSkipError, match=pattern) as info:
        hadskip.pipeline(name)
    assert "\n" not in str(info.value)


def test_a_revision_not_in_the_cache_and_a_repo_that_is_no_model_dir(offline_cache, tmp_path):
    from hadskip.errors import HadSkipError
    from hadskip.runtime import Runtime
    from hadskip.testing import hub_cache_standin

    with pytest.raises(HadSkipError, match=r"someone/tiny-h3 at revision v2 is not in the hub cache"):
        Runtime.load(REPO, revision="v2")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    hub_cache_standin(tmp_path / "hf-cache", "someone/bert", plain)
    with pytest.raises(HadSkipError, match=r"someone/bert .*is not in the hub cache|holds no manifest\.json"):
        Runtime.load("someone/bert")


def test_a_cached_snapshot_with_a_changed_file_is_refused(offline_cache):
    """The snapshot goes through the manifest's sha256 checks like any model dir."""
    from hadskip.runtime import Runtime
    from hadskip.runtime.manifest import ManifestError

    blob = (offline_cache / "layers" / "01.onnx").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"layers/01\.onnx is corrupted"):
        Runtime.load(REPO)


def test_a_link_out_of_a_folder_that_is_no_hub_snapshot_is_still_refused(tmp_path, model_dir):
    """The blobs exception holds only for HF_HUB_CACHE/models--*/snapshots/*: a model dir elsewhere whose file
    links to a folder beside it is refused as before."""
    from hadskip.runtime.manifest import ManifestError, load_manifest

    d = tmp_path / "snapshots" / "m"
    shutil.copytree(model_dir, d)
    (tmp_path / "blobs").mkdir()
    (d / "head.onnx").rename(tmp_path / "blobs" / "head")
    (d / "head.onnx").symlink_to(tmp_path / "blobs" / "head")
    with pytest.raises(ManifestError, match="outside the model dir"):
        load_manifest(d)


# --- push -> load through the real huggingface_hub client and a loopback stand-in of the hub ----------------

TOKEN = "hf_standin"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from hub_standin import HubStandin

    standin = HubStandin(tmp_path_factory.mktemp("hub-standin"), token=TOKEN).start()
    yield standin
    standin.stop()


def _env(hub, home: Path, token: str | None = TOKEN) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_IMPLICIT_TOKEN="0")
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def _hadskip(env: dict, *args: str, code: str | None = None):
    import subprocess
    import sys

    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "hadskip.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _one_error(proc, pattern: str) -> None:
    import re

    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines and lines[-1].startswith("error: ") and re.search(pattern, lines[-1]), proc.stderr


def _front_matter(text: str) -> dict:
    import yaml

    assert text.startswith("---\n")
    return yaml.safe_load(text[4:text.index("\n---", 4)])


PIPE = ("import hadskip, json, sys\n"  # argv: repo id [revision]
        "pipe = hadskip.pipeline(sys.argv[1], revision=(sys.argv[2:] or [None])[0])\n"
        "print(json.dumps(pipe('a good movie', top_k=None)))\n")


def test_push_then_load_the_same_repo_through_huggingface_hub(hub, model_dir, tmp_path):
    """`hadskip push` creates the repo and uploads manifest.json, every file it lists and a generated card;
    a fresh HF cache then loads "owner/name" with `hadskip predict` and hadskip.pipeline, answering as the local
    model dir does."""
    from hadskip.runtime import Runtime
    from hadskip.runtime.manifest import load_manifest

    env = _env(hub, tmp_path / "pusher")
    proc = _hadskip(env, "push", str(model_dir), "me/tiny-h3", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["created"] and report["card"] == "generated" and report["revision"] == "main"
    files = hub.files("me/tiny-h3")
    manifest = load_manifest(model_dir)
    assert set(files) == {"manifest.json", "README.md", *manifest.files}
    assert all(files[rel] == (model_dir / rel).read_bytes() for rel in ("manifest.json", *manifest.files))
    card = files["README.md"].decode()
    meta = _front_matter(card)
    assert meta["library_name"] == "hadskip" and meta["pipeline_tag"] == "text-classification"
    assert {"hadskip", "bert"} <= set(meta["tags"])
    assert "| 0 | label0 |" in card and 'hadskip.pipeline("me/tiny-h3")' in card and "serve-local me/tiny-h3" in card

    reader = _env(hub, tmp_path / "reader", token=None)
    texts = _texts(tmp_path)
    proc = _hadskip(reader, "predict", "me/tiny-h3", "-i", texts, "--quiet")
    assert proc.returncode == 0, proc.stderr
    want = Runtime.load(model_dir).predict(Path(texts).read_text().splitlines())
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [g["label"] for g in got] == want.labels
    assert [g["probs"] for g in got] == pytest.approx([p.probs for p in want])
    assert list((tmp_path / "reader" / "hub").glob("models--me--tiny-h3/snapshots/*/manifest.json"))
    proc = _hadskip(reader, "me/tiny-h3", code=PIPE)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["label"] == want[0].label


def test_push_to_a_branch_and_load_that_revision(hub, model_dir, tmp_path_factory, tmp_path):
    """--revision v2 pushes to branch v2 (created from main), main is left as it was, and --revision / revision=
    loads the branch."""
    from hadskip.runtime import Runtime

    env = _env(hub, tmp_path / "home")
    assert _hadskip(env, "push", str(model_dir), "me/branchy").returncode == 0
    main_files = hub.files("me/branchy")
    other = cached_model(tmp_path_factory, "bert", 1)[1]
    proc = _hadskip(env, "push", str(other), "me/branchy", "--revision", "v2")
    assert proc.returncode == 0, proc.stderr
    assert hub.files("me/branchy") == main_files
    assert hub.files("me/branchy", "v2")["layers/00.onnx"] == (other / "layers" / "00.onnx").read_bytes()
    proc = _hadskip(env, "me/branchy", "v2", code=PIPE)
    assert proc.returncode == 0, proc.stderr
    want = Runtime.load(other).predict(["a good movie"])[0].probs
    assert {d["label"]: d["score"] for d in json.loads(proc.stdout)} == pytest.approx(want)
    _one_error(_hadskip(env, "predict", "me/branchy", "--revision", "nope", "-i", _texts(tmp_path)),
               r"me/branchy has no revision nope")


def test_private_repos_and_tokens(hub, model_dir, tmp_path):
    """--private creates a private repo: readable with the token, "not found, or private" without; --private on
    an existing public repo is refused before anything is uploaded; no token or a wrong one is one line."""
    env = _env(hub, tmp_path / "home")
    proc = _hadskip(env, "push", str(model_dir), "me/secret", "--private")
    assert proc.returncode == 0, proc.stderr
    assert hub.repos["me/secret"]["private"]
    assert _hadskip(env, "me/secret", code=PIPE).returncode == 0
    _one_error(_hadskip(_env(hub, tmp_path / "anon", token=None), "predict", "me/secret", "-i", _texts(tmp_path)),
               r"hub repo me/secret was not found, or is private .*HF_TOKEN")
    assert _hadskip(env, "push", str(model_dir), "me/public").returncode == 0
    commits = dict(hub.repos["me/public"]["commits"])
    _one_error(_hadskip(env, "push", str(model_dir), "me/public", "--private"), r"exists and is public")
    assert hub.repos["me/public"]["commits"] == commits
    _one_error(_hadskip(_env(hub, tmp_path / "anon2", token=None), "push", str(model_dir), "me/x"),
               r"no Hugging Face token: log in with `hf auth login` or set HF_TOKEN")
    _one_error(_hadskip(_env(hub, tmp_path / "bad", token="hf_wrong"), "push", str(model_dir), "me/x"),
               r"the hub refused \(401\) writing to me/x")
    assert "me/x" not in hub.repos


def test_push_keeps_a_readme_the_user_wrote(hub, model_dir, tmp_path):
    """A README.md in the model dir is uploaded as it is and never rewritten; --card generated replaces the
    repo's README.md with the generated card and leaves the local file alone; auto keeps a README.md the repo
    already has."""
    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    mine = "---\nlicense: mit\n---\n# My notes\nkeep me\n"
    (d / "README.md").write_text(mine)
    env = _env(hub, tmp_path / "home")
    proc = _hadskip(env, "push", str(d), "me/notes", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["card"] == "model dir"
    assert hub.files("me/notes")["README.md"].decode() == mine
    proc = _hadskip(env, "push", str(d), "me/notes", "--card", "generated", "--json")
    assert proc.returncode == 0, proc.stderr
    assert _front_matter(hub.files("me/notes")["README.md"].decode())["library_name"] == "hadskip"
    assert (d / "README.md").read_text() == mine
    assert "README.md" in json.loads(proc.stdout)["not_uploaded"]
    (d / "README.md").unlink()
    hub_readme = hub.files("me/notes")["README.md"]
    proc = _hadskip(env, "push", str(d), "me/notes", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["card"] == "kept (the repo's)", proc.stderr
    assert hub.files("me/notes")["README.md"] == hub_readme


def test_push_refuses_a_model_dir_with_a_changed_file_before_sending_anything(hub, model_dir, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    data = bytearray((d / "gates" / "01.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (d / "gates" / "01.onnx").write_bytes(bytes(data))
    seen = len(hub.requests)
    _one_error(_hadskip(_env(hub, tmp_path / "home"), "push", str(d), "me/changed"),
               r"gates/01\.onnx is corrupted: its sha256 does not match")
    assert hub.requests[seen:] == [] and "me/changed" not in hub.repos


@pytest.mark.parametrize("repo_id", ["me/..", "me/a..b", "../me", "me/b/c", "me", "me/x.git"])
def test_push_refuses_a_bad_repo_id_before_sending_anything(hub, model_dir, tmp_path, repo_id):
    seen = len(hub.requests)
    _one_error(_hadskip(_env(hub, tmp_path / "home"), "push", str(model_dir), repo_id), r"is not a hub repo id")
    assert hub.requests[seen:] == []


def test_a_missing_repo_and_a_repo_without_a_model_dir(hub, tmp_path):
    env = _env(hub, tmp_path / "home")
    _one_error(_hadskip(env, "predict", "nobody/nothing", "-i", _texts(tmp_path)),
               r"hub repo nobody/nothing was not found.*no local folder nobody/nothing")
    hub.repos["me/plain"] = {"private": False, "refs": {"main": "c" * 40},
                             "commits": {"c" * 40: {"config.json": hub.put_blob(b"{}")}}}
    _one_error(_hadskip(env, "predict", "me/plain", "-i", _texts(tmp_path)),
               r"hub repo me/plain holds no manifest\.json: it is not a hadskip model dir")


def test_a_file_changed_on_the_hub_is_refused_when_loaded(hub, model_dir, tmp_path):
    """The downloaded snapshot goes through the manifest's sha256 checks: a file the hub serves changed fails."""
    env = _env(hub, tmp_path / "home")
    assert _hadskip(env, "push", str(model_dir), "me/tampered").returncode == 0
    repo = hub.repos["me/tampered"]
    files = repo["commits"][repo["refs"]["main"]]
    files["head.onnx"] = hub.put_blob(b"\0not the head graph\0")
    _one_error(_hadskip(env, "predict", "me/tampered", "-i", _texts(tmp_path)), r"head\.onnx is corrupted")


# --- the model card -----------------------------------------------------------------------------------------

def _manifest(model_dir, **changes):
    from dataclasses import replace

    from hadskip.runtime.manifest import load_manifest

    return replace(load_manifest(model_dir), **changes)


def test_the_card_has_the_dial_table_and_the_compare_table(model_dir):
    from hadskip.runtime.card import model_card

    points = [{"target": t, "offset": o, "avg_layers": a, "value": v}
              for t, o, a, v in ((1.0, 2.0, 1.004, 0.71), (2.0, 0.5, 1.998, 0.8125), (3.0, -9.0, 3.0, 0.84))]
    dial = {"format": 1, "num_layers": 3, "task": "tiny", "split": "dev", "metric": "accuracy", "examples": 200,
            "trained_budget": 2.0, "points": points, "curve": points}
    compare = {"task": "tiny", "metric": "accuracy", "rows": [
        {"method": "full", "budget": 3, "value": 0.85, "avg_layers": 3.0},
        {"method": "hadskip", "budget": 2, "value": 0.83, "avg_layers": 2.01, "dev_value": 0.82,
         "dev_avg_layers": 1.99}]}
    card = model_card(_manifest(model_dir, dial=dial), "me/tiny-h3", compare)
    assert "| 2 | 1.998 | 0.8125 |" in card  # target -> dev avg layers, dev accuracy
    assert "from 1 to 3" in card and "dev (200 examples)" in card
    assert "| hadskip | 2 | 0.83 | 2.01 | 0.82 | 1.99 |" in card and "| full | 3 | 0.85 | 3 | - | - |" in card


def test_huge_and_hostile_card_inputs_stay_a_small_valid_card(model_dir):
    """Thousands of labels with table breakers, markup and line breaks, a dial of thousands of points and a
    compare.json of junk rows: the card stays under 64 kB, its front matter is the hub's YAML, every table row
    has its columns, and no label's markup or newline gets through."""
    import re

    from hadskip.runtime.card import model_card

    labels = [f"l{i} | <script>alert(1)</script>\n# heading `x` [a](b) " + "y" * 5000 for i in range(5000)]
    n = 3000
    points = [{"target": 3 * i / n, "offset": 1e6 - i, "avg_layers": 3 * i / n, "value": 0.5} for i in range(n + 1)]
    dial = {"format": 1, "num_layers": 3, "task": "t|x", "split": "dev\n# x", "metric": "acc|uracy", "examples": 1,
            "points": points, "curve": points}
    compare = {"task": "<b>t</b>", "metric": "m", "rows": [{"method": "|" * 500, "budget": "x", "value": float("nan")},
                                                           *[{"method": "m", "value": 1e308}] * 5000, "junk", None]}
    m = _manifest(model_dir, labels=labels, task={**_manifest(model_dir).task, "num_labels": 5000, "name": "t\n|"},
                  dial=dial, backbone={**_manifest(model_dir).backbone, "model_type": "bert\n- evil: tag"})
    card = model_card(m, "me/tiny-h3", compare)
    assert len(card.encode()) < 64_000
    assert _front_matter(card)["tags"][-1] == "bert-evil-tag"
    assert "<script>" not in card and "\n# heading" not in card
    body = card[card.index("\n---\n", 4) + 5:]
    for line in body.splitlines():
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line)
            assert len(cells) in (4, 5, 8), line[:200]  # 2, 3 or 6 columns (labels/facts, dial, compare)
    assert "4936 more labels not shown" in card and "more dial points not shown" in card


def test_without_huggingface_hub_a_repo_id_and_push_name_the_extra_and_local_dirs_still_load(model_dir, tmp_path):
    """huggingface_hub made unimportable: a local model dir still predicts; a repo id and push stop in one line
    naming the `hub` extra."""
    from test_cli_errors import _without

    texts = _texts(tmp_path)
    assert _without("huggingface_hub", "predict", str(model_dir), "-i", texts, "--quiet").returncode == 0
    for args in (["predict", "me/tiny-h3", "-i", texts], ["push", str(model_dir), "me/tiny-h3"]):
        proc = _without("huggingface_hub", *args)
        _one_error(proc, r"huggingface_hub is needed .*pip install 'hadskip\[hub\]'")


def test_serve_local_serves_a_repo_id_under_its_name(model_dir, tmp_path):
    """`hadskip serve-local owner/name` from the hub cache (HF_HUB_OFFLINE=1): /info names the repo, /predict
    answers as the model dir does; a repo id that is not cached stops in one line before listening."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from hadskip.runtime import Runtime

    cache = tmp_path / "hf-cache"
    hub_cache_standin(cache, REPO, model_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HADSKIP_API_KEY"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "home"))
    _one_error(_hadskip(env, "serve-local", "someone/not-cached", "--port", "0"),
               r"someone/not-cached is not in the hub cache")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hadskip.cli", "serve-local", REPO, "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                try:
                    if httpx.get(url + "/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            assert httpx.get(url + "/info", timeout=10).json()["model"] == REPO
            got = httpx.post(url + "/predict", json={"inputs": "a good movie"}, timeout=10).json()
        finally:
            proc.terminate()
            proc.wait(60)
    want = Runtime.load(model_dir).predict(["a good movie"])[0]
    (pred,) = got["predictions"]
    assert pred["label"] == want.label and pred["probs"] == pytest.approx(want.probs)


def test_the_card_takes_the_compare_table_of_the_run_it_was_exported_from(tmp_path_factory, tmp_path):
    """push --run RUN: the compare.json of RUN's compare folder (its rows name RUN) reaches the card; a run
    with other weights is refused (the manifest's export.run sha256)."""
    from hadskip.errors import HadSkipError
    from hadskip.runtime.card import model_card
    from hadskip.runtime.manifest import load_manifest
    from hadskip.runtime.push import find_compare

    run, model = cached_model(tmp_path_factory, "bert", 0)
    out = tmp_path / "compare"
    shutil.copytree(run, out / "hadskip-2")
    result = {"task": "tiny", "metric": "accuracy", "rows": [
        {"method": "hadskip", "budget": 2, "value": 0.75, "avg_layers": 2.0, "run": str(out / "hadskip-2")}]}
    (out / "compare.json").write_text(json.dumps(result))
    manifest = load_manifest(model)
    compare, where = find_compare(model, manifest, out / "hadskip-2")
    assert where == str(out / "compare.json")
    assert "| hadskip | 2 | 0.75 | 2 | - | - |" in model_card(manifest, "me/x", compare)
    with pytest.raises(HadSkipError, match="is not the run .* was exported from"):
        find_compare(model, manifest, cached_model(tmp_path_factory, "bert", 1)[0])
