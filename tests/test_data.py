"""Data layer: registry, the three sources (real rotten-tomatoes asset, GLUE through a local hub clone, folders),
every user error, and `hadskip data show`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hadskip import assets
from hadskip.data import TASKS, Split, TaskSpec, describe, load_task, split_by_group
from hadskip.data.sources import GLUE_DIR_ENV
from hadskip.errors import HadSkipError

# --- registry ---------------------------------------------------------------------------------------------


def test_taskspec_checks():
    with pytest.raises(HadSkipError, match="unknown metric 'auc'"):
        TaskSpec("t", "text", None, "label", 2, "auc")
    with pytest.raises(HadSkipError, match="at least 2"):
        TaskSpec("t", "text", None, "label", 1, "accuracy")
    with pytest.raises(HadSkipError, match="2 label names for 3 labels"):
        TaskSpec("t", "text", None, "label", 3, "accuracy", ("a", "b"))
    spec = TaskSpec("t", "text", "text_pair", "label", 2, "f1")
    assert spec.is_pair and spec.label_name(1) == "1"
    with pytest.raises(AttributeError):
        spec.metric = "mcc"  # frozen


def test_registry():
    assert set(TASKS) == {"rotten-tomatoes", *(f"glue/{n}" for n in "sst2 mrpc qqp qnli rte cola mnli".split())}
    assert TASKS["rotten-tomatoes"].label_names == ("rotten", "fresh")
    assert (TASKS["glue/mrpc"].pair_col, TASKS["glue/mrpc"].metric) == ("sentence2", "f1")
    assert (TASKS["glue/qqp"].text_col, TASKS["glue/qqp"].metric) == ("question1", "f1")
    assert TASKS["glue/cola"].metric == "mcc" and not TASKS["glue/cola"].is_pair
    assert TASKS["glue/mnli"].num_labels == 3 and TASKS["glue/mnli"].pair_col == "hypothesis"


# --- rotten-tomatoes: the real asset ------------------------------------------------------------------------


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty hadskip cache that shares the real downloaded wheels (fetched once if missing)."""
    wheels = assets.wheel_path(assets.ROTTEN_TOMATOES).parent
    (tmp_path / "wheels").symlink_to(wheels, target_is_directory=True)
    monkeypatch.setenv("HADSKIP_CACHE", str(tmp_path))
    return tmp_path


def test_rotten_tomatoes_split_by_movie(fresh_cache):
    data = load_task("rotten-tomatoes")
    parts = [data.train, data.dev, data.test]
    assert sum(map(len, parts)) == 12808  # 7403 fresh + 5405 rotten; the 1097 plot rows are dropped
    assert sorted(len(set(p.groups)) for p in parts) == [51, 51, 406]  # 508 movies cut 80/10/10
    movies = [set(p.groups) for p in parts]
    assert not (movies[0] & movies[1] or movies[0] & movies[2] or movies[1] & movies[2])
    assert all(set(np.unique(p.labels)) == {0, 1} for p in parts)
    assert sum(int(p.labels.sum()) for p in parts) == 7403  # fresh = 1
    assert data.train.pairs is None and data.spec.metric == "accuracy"

    cached = list((fresh_cache / "data").glob("rotten-tomatoes-*-seed0.json"))
    assert len(cached) == 1
    again = load_task("rotten-tomatoes")  # from the cache file
    cached[0].unlink()
    rebuilt = load_task("rotten-tomatoes")  # parsed from the wheel again
    for a, b, c in zip(parts, [again.train, again.dev, again.test], [rebuilt.train, rebuilt.dev, rebuilt.test],
                       strict=True):
        assert a.texts == b.texts == c.texts and a.groups == b.groups == c.groups
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.labels, c.labels)
    other = load_task("rotten-tomatoes", split_seed=1, max_examples=50, metric="f1")
    assert set(other.test.groups) != set(data.test.groups) and len(other.train) == 50
    subsample = load_task("rotten-tomatoes", seed=5, max_examples=50)  # the training seed leaves the split alone
    assert set(subsample.test.groups) <= set(data.test.groups)
    assert other.spec.metric == "f1"

    cached[0].parent.joinpath(cached[0].name).write_text("{damaged")  # a broken cache is rebuilt
    assert load_task("rotten-tomatoes").test.texts == data.test.texts


def test_split_by_group():
    groups = [f"m{i % 20}" for i in range(200)]
    tr, dv, te = split_by_group(groups, seed=3)
    assert (len(tr), len(dv), len(te)) == (160, 20, 20)
    assert sorted(np.concatenate([tr, dv, te]).tolist()) == list(range(200))
    sets = [{groups[i] for i in idx} for idx in (tr, dv, te)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert all(np.array_equal(a, b) for a, b in zip((tr, dv, te), split_by_group(groups, seed=3), strict=True))


# --- GLUE: the real datasets.load_dataset call, on a local clone laid out like the hub repo -----------------


def _glue_clone(root: Path, config: str, columns: dict, splits: tuple[str, ...], n: int = 40) -> Path:
    import datasets

    lines = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split in splits:
        rows = {c: [f"{c} {split} {i}" for i in range(n)] for c in columns["text"]}
        rows["label"] = [i % columns["num_labels"] for i in range(n)]
        rows["idx"] = list(range(n))
        (root / config).mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(rows).to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))
        lines += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    (root / "README.md").write_text("\n".join(lines + ["---", ""]))
    return root


@pytest.fixture
def glue_env(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    datasets.disable_progress_bars()
    monkeypatch.setenv(GLUE_DIR_ENV, str(tmp_path / "glue"))
    return tmp_path / "glue"


def test_glue_sst2_and_mnli(glue_env):
    _glue_clone(glue_env, "sst2", {"text": ["sentence"], "num_labels": 2}, ("train", "validation", "test"))
    data = load_task("glue/sst2", split_seed=7)
    assert (len(data.train), len(data.dev), len(data.test)) == (36, 4, 40)  # dev = 10% of train
    assert not set(data.train.texts) & set(data.dev.texts)
    assert all(t.startswith("sentence validation") for t in data.test.texts)  # test = GLUE validation
    assert data.train.pairs is None and data.spec.metric == "accuracy"
    assert load_task("glue/sst2", split_seed=7).dev.texts == data.dev.texts
    assert load_task("glue/sst2", split_seed=8).dev.texts != data.dev.texts
    info = describe("glue/sst2", max_examples=10)
    assert info["source"] == str(glue_env) and info["splits"]["test"]["examples"] == 10

    mnli = {"text": ["premise", "hypothesis"], "num_labels": 3}
    _glue_clone(glue_env, "mnli", mnli, ("train", "validation_matched", "validation_mismatched"))
    data = load_task("glue/mnli")
    assert data.test.texts[0] == "premise validation_matched 0" and data.test.pairs[0].startswith("hypothesis")
    assert set(data.train.labels.tolist()) == {0, 1, 2}


def test_glue_errors(glue_env, monkeypatch):
    _glue_clone(glue_env, "rte", {"text": ["sentence1"], "num_labels": 2}, ("train", "validation"))
    with pytest.raises(HadSkipError, match=r"has no column 'sentence2' \(its columns: sentence1, label, idx\)"):
        load_task("glue/rte")
    with pytest.raises(HadSkipError, match=f"could not load glue/cola from {glue_env}"):
        load_task("glue/cola")  # not in the clone
    monkeypatch.setenv(GLUE_DIR_ENV, str(glue_env / "nowhere"))
    with pytest.raises(HadSkipError, match="is not a folder"):
        load_task("glue/rte")


def test_glue_hub_call(monkeypatch):
    """Without a local clone the hub id is what load_dataset is asked for; a network failure reads as one line."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)
    calls = []

    def offline(path, name, **kwargs):
        calls.append((path, name))
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(HadSkipError, match=f"Couldn't reach .*set {GLUE_DIR_ENV}") as err:
        load_task("glue/qnli")
    assert calls == [("nyu-mll/glue", "qnli")] and "\n" not in str(err.value)


# --- local folders --------------------------------------------------------------------------------------------


def write_task(folder: Path, fmt: str, splits: dict[str, list[dict]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        path = folder / f"{name}.{fmt}"
        if fmt == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            continue
        cols = list(rows[0]) if rows else ["text", "label"]
        with path.open("w", newline="") as f:
            if fmt == "tsv":
                f.write("\t".join(cols) + "\n" + "".join("\t".join(str(r[c]) for c in cols) + "\n" for r in rows))
            else:
                w = csv.DictWriter(f, cols)
                w.writeheader()
                w.writerows(rows)
    return folder


def rows(labels, pair=False, **extra):
    out = []
    for i, y in enumerate(labels):
        r = {"text": f'say "hi", {i}', "label": y, **extra}
        if pair:
            r["text_pair"] = f"second {i}"
        out.append(r)
    return out


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_folder_int_labels(tmp_path, fmt):
    folder = write_task(tmp_path / "t", fmt, {"train": rows([0, 1, 2, 1]), "dev": rows([1, 0]), "test": rows([2])})
    data = load_task(str(folder))
    assert data.spec.num_labels == 3 and data.spec.metric == "accuracy" and data.spec.label_names == ()
    assert data.train.texts[0] == 'say "hi", 0' and data.train.pairs is None
    assert data.train.labels.dtype == np.int64 and data.dev.labels.tolist() == [1, 0]
    assert len(data.split("validation")) == 2 and len(data.split("test")) == 1


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_folder_string_labels_and_pairs(tmp_path, fmt):
    splits = {"train": rows(["pos", "neg", "pos"], pair=True), "validation": rows(["neg"], pair=True),
              "test": rows(["pos"], pair=True)}
    data = load_task(str(write_task(tmp_path / "t", fmt, splits)), metric="f1")
    assert data.spec.label_names == ("neg", "pos") and data.train.labels.tolist() == [1, 0, 1]
    assert data.spec.pair_col == "text_pair" and data.dev.pairs == ["second 0"] and data.spec.metric == "f1"


def test_folder_column_overrides(tmp_path):
    def r(labels):
        return [{"review": f"r{i}", "other": f"o{i}", "stars": y} for i, y in enumerate(labels)]

    folder = write_task(tmp_path / "t", "jsonl", {"train": r([0, 1]), "dev": r([1]), "test": r([0])})
    data = load_task(str(folder), text_col="review", pair_col="other", label_col="stars")
    assert data.train.texts == ["r0", "r1"] and data.train.pairs == ["o0", "o1"]
    assert (data.spec.text_col, data.spec.pair_col, data.spec.label_col) == ("review", "other", "stars")


def test_max_examples_and_split_names(tmp_path):
    folder = write_task(tmp_path / "t", "csv", {"train": rows([0, 1] * 10), "dev": rows([0, 1]), "test": rows([1])})
    data = load_task(str(folder), max_examples=5, seed=2)
    assert len(data.train) == 5 and len(data.dev) == 2
    idx = [int(t.split(", ")[1]) for t in data.train.texts]
    assert idx == sorted(idx)  # a subset in file order
    assert load_task(str(folder), max_examples=5, seed=2).train.texts == data.train.texts
    with pytest.raises(HadSkipError, match="unknown split 'eval'"):
        data.split("eval")
    assert len(Split(["a", "b"], None, [0, 1]).subset([1])) == 1


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_folder_integral_float_labels_are_integers(tmp_path, fmt):
    # 1.0 (a JSON number, or text in csv/tsv) is the integer label 1, not a class named "1.0"
    labels = ["0.0", "1.0", "2.0", "1"] if fmt != "jsonl" else [0.0, 1.0, 2.0, 1]
    folder = write_task(tmp_path / "t", fmt, {"train": rows(labels), "dev": rows([1.0]), "test": rows(["2"])})
    data = load_task(str(folder))
    assert data.spec.label_names == () and data.spec.num_labels == 3
    assert data.train.labels.tolist() == [0, 1, 2, 1] and data.dev.labels.tolist() == [1]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
@pytest.mark.parametrize("labels", [[0, 0.5, 1, 2.5], [0.1 * i for i in range(96)], ["1e-3", "2"], [1, float("nan")]])
def test_folder_real_valued_labels_are_refused_in_one_line(tmp_path, fmt, labels):
    if fmt == "jsonl" and any(isinstance(v, float) and v != v for v in labels):
        labels = [1, "nan"]  # JSON has no NaN number; the text form is still a number
    folder = write_task(tmp_path / "t", fmt, {"train": rows(labels), "dev": rows([0]), "test": rows([0])})
    with pytest.raises(HadSkipError, match=r"train\.\w+ line \d+: label .* is a real number; .* regression is "
                                           r"not supported") as err:
        load_task(str(folder))
    assert "\n" not in str(err.value) and str(err.value).count(",") <= 1  # no list of 96 "labels"


def _good(tmp_path, fmt="csv"):
    return write_task(tmp_path / "t", fmt, {"train": rows([0, 1]), "dev": rows([1]), "test": rows([0])})


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (lambda p: "rotten-tomatos", {}, r"unknown task 'rotten-tomatos'; known tasks: rotten-tomatoes, glue/sst2"),
        (lambda p: "glue/wnli", {}, r"unknown task 'glue/wnli'"),
        (lambda p: str(p / "missing"), {}, r"task folder not found: .*missing"),
        (lambda p: str(_good(p) / "train.csv"), {}, r"is not a folder"),
        (lambda p: (_good(p) / "test.csv").unlink() or str(p / "t"), {}, r"t has no test file"),
        (lambda p: write_task(_good(p), "jsonl", {"dev": rows([0])}) and str(p / "t"), {}, r"several dev files"),
        (lambda p: (_good(p) / "test.csv").rename(p / "t" / "test.tsv") and str(p / "t"), {}, r"mixes file formats"),
        (lambda p: str(_good(p)), {"text_col": "review"},
         r"train.csv has no column 'review' \(its columns: text, label\)"),
        (lambda p: str(_good(p)), {"pair_col": "second"}, r"train.csv has no column 'second'"),
        (lambda p: str(write_task(p / "t", "csv", {"train": rows([0, 1]), "dev": rows([2]), "test": rows([0])})), {},
         r"dev.csv line 2: label 2 is outside \[0, 2\) \(num_labels inferred from train.csv\)"),
        (lambda p: str(write_task(p / "t", "csv", {"train": rows([0, 1]), "dev": rows(["x"]), "test": rows([0])})),
         {}, r"dev.csv line 2: label 'x' is not an integer"),
        (lambda p: str(write_task(p / "t", "csv", {"train": rows([-1, 1]), "dev": rows([1]), "test": rows([1])})),
         {}, r"train.csv line 2: label -1 is outside"),
        (lambda p: str(write_task(p / "t", "jsonl", {"train": rows(["a", "b"]), "dev": rows(["c"]),
                                                      "test": rows(["a"])})), {},
         r"dev.jsonl line 1: label 'c' does not occur in train.jsonl \(its labels: a, b\)"),
        (lambda p: str(write_task(p / "t", "csv", {"train": rows([0, 0]), "dev": rows([0]), "test": rows([0])})),
         {}, r"train.csv has a single label value"),
        (lambda p: str(write_task(p / "t", "csv", {"train": rows([0, 1]), "dev": [], "test": rows([0])})), {},
         r"dev.csv has no examples \(the dev split is empty\)"),
        (lambda p: [(_good(p) / "test.csv").write_bytes(b"text,label\n\xff\xfe,1\n"), str(p / "t")][1], {},
         r"cannot read .*test.csv: 'utf-8' codec"),
        (lambda p: [(_good(p, "jsonl") / "dev.jsonl").write_text('{"text": "a", "label": 1}\n{oops\n'),
                   str(p / "t")][1], {}, r"cannot read .*dev.jsonl: line 2 is not valid JSON"),
        (lambda p: [(_good(p) / "dev.csv").write_text("text,label\nonly text\n"), str(p / "t")][1], {},
         r"dev.csv line 2: no value for column 'label'"),
        (lambda p: str(_good(p)), {"metric": "auc"}, r"unknown metric 'auc'"),
        (lambda p: str(_good(p)), {"max_examples": 0}, r"max_examples must be at least 1"),
        (lambda p: "rotten-tomatoes", {"label_col": "stars"}, r"label_col only apply to a folder task"),
    ],
)
def test_errors(tmp_path, make, kwargs, message):
    task = make(tmp_path)
    with pytest.raises(HadSkipError, match=message) as err:
        load_task(task, **kwargs)
    assert "\n" not in str(err.value)


def test_import_is_light():
    code = ("import sys, hadskip.data, hadskip.cli.data; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- CLI ----------------------------------------------------------------------------------------------------


def test_cli_show(tmp_path):
    from hadskip.cli.main import app

    splits = {"train": rows(["[bold]neg", "pos", "pos"], pair=True), "dev": rows(["pos"], pair=True),
              "test": rows(["[bold]neg"], pair=True)}
    folder = write_task(tmp_path / "t", "jsonl", splits)
    result = CliRunner().invoke(app, ["data", "show", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["splits"]["train"] == {"examples": 3, "label_counts": {"[bold]neg": 1, "pos": 2}}
    assert info["label_names"] == ["[bold]neg", "pos"] and len(info["examples"]) == 3
    assert info["examples"][0] == {"split": "train", "text": 'say "hi", 0', "pair": "second 0", "label": "[bold]neg"}

    result = CliRunner().invoke(app, ["data", "show", str(folder)])
    assert result.exit_code == 0, result.output
    assert "[bold]neg" in result.stdout and "train" in result.stdout and "second 0" in result.stdout


def test_cli_errors(tmp_path, capsys):
    from hadskip.cli.main import app, main

    result = CliRunner().invoke(app, ["data", "show", "nope"])
    assert result.exit_code != 0 and isinstance(result.exception, HadSkipError)

    assert main(["data", "show", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: task folder not found:") and err.count("\n") == 1
