"""A task from a local folder: its train, dev (or validation) and test files (.csv, .tsv, .jsonl), read as they
are; labels must be integers or class names (regression and multi-label tasks are refused, naming the rows)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path


from hadskip.data.split import FORMATS, Split, TaskData
from hadskip.data.tasks import TaskSpec
from hadskip.errors import HadSkipError


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


def load_folder(folder: Path, text_col, pair_col, label_col, metric: str) -> TaskData:
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
