"""scripts/make_pair_task.py on a small stand-in for the bigbench sdist (no download)."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from hadskip.data import load_task
from hadskip.errors import HadSkipError

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_pair_task.py"
_spec = importlib.util.spec_from_file_location("make_pair_task", _SCRIPT)
mpt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mpt)

_TARGETS = ["True", "False", "Neither"]


def _example(page: int, k: int, target: str) -> dict:
    scores = dict.fromkeys(_TARGETS, 0)
    scores[target] = 1
    return {"input": f"Page -LRB-{page}-RRB-: Evidence {k} about {page}\ufffdhere .\nClaim: Claim {k} .",
            "target_scores": scores}


def _archive(tmp_path: Path, examples) -> Path:
    path = tmp_path / mpt.SDIST
    data = json.dumps({"name": "vitaminc", "examples": examples}).encode()
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo(mpt.MEMBER)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return path


def _rows(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_builds_a_page_disjoint_three_class_pair_task(tmp_path):
    # 60 pages x 10 examples, labels 5:3:2 per page
    examples = [_example(p, k, _TARGETS[0 if k < 5 else 1 if k < 8 else 2]) for p in range(60) for k in range(10)]
    out = tmp_path / "task"
    counts = mpt.build(out, tmp_path / "cache", _archive(tmp_path, examples), 0,
                       {"train": 100, "dev": 1000, "test": 1000}, False)
    data = load_task(str(out))
    assert data.spec.is_pair and data.spec.label_names == ("contradiction", "entailment", "neutral")
    assert counts["train"] == {"contradiction": 30, "entailment": 50, "neutral": 20}  # capped, shares kept
    pages = {s: {r["text"].split(": ", 1)[0] for r in _rows(out, s)} for s in mpt.SPLITS}
    assert not (pages["train"] & pages["dev"] or pages["train"] & pages["test"] or pages["dev"] & pages["test"])
    assert len(pages["dev"]) == len(pages["test"]) == 6  # 10% of the 60 pages each
    assert len(data.dev) == len(data.test) == 60  # whole pages, uncapped here
    row = _rows(out, "dev")[0]
    assert row["text"].startswith("Page (") and "\ufffd" not in row["text"] and row["text_pair"].startswith("Claim")
    # the True/False/Neither -> entailment/contradiction/neutral mapping, checked on one known example
    first = next(r for r in _rows(out, "train") + _rows(out, "dev") + _rows(out, "test")
                 if r["text_pair"] == "Claim 9 .")
    assert first["label"] == "neutral"


def test_same_seed_same_files_other_seed_other_split(tmp_path):
    examples = [_example(p, k, _TARGETS[k % 3]) for p in range(40) for k in range(6)]
    archive = _archive(tmp_path, examples)
    caps = {"train": 50, "dev": 50, "test": 50}
    outs = [tmp_path / name for name in ("a", "b", "c")]
    for out, seed in zip(outs, (0, 0, 1), strict=True):
        mpt.build(out, tmp_path, archive, seed, caps, False)
    assert (outs[0] / "test.jsonl").read_bytes() == (outs[1] / "test.jsonl").read_bytes()
    assert (outs[0] / "test.jsonl").read_bytes() != (outs[2] / "test.jsonl").read_bytes()


def test_stratified_cap_keeps_shares_and_size():
    import numpy as np

    labels = ["a"] * 70 + ["b"] * 20 + ["c"] * 10
    keep = mpt.stratified_cap(labels, 11, np.random.default_rng(0))
    assert len(set(keep.tolist())) == 11
    assert Counter(labels[i] for i in keep) == {"a": 8, "b": 2, "c": 1}  # 7.7, 2.2, 1.1 by largest remainder


@pytest.mark.parametrize("bad", [
    {"input": "Page: evidence without a claim", "target_scores": {"True": 1, "False": 0, "Neither": 0}},
    {"input": "Page: e\nClaim: c", "target_scores": {"True": 1, "False": 1, "Neither": 0}},
    {"input": "Page: e\nClaim: c", "target_scores": {"Maybe": 1}},
    {"input": "Page: e\nClaim:  ", "target_scores": {"True": 1, "False": 0, "Neither": 0}},
    "not an object",
])
def test_malformed_examples_are_one_line_errors(tmp_path, bad):
    examples = [_example(p, 0, "True") for p in range(5)] + [bad]
    with pytest.raises(HadSkipError, match="example 5"):
        mpt.build(tmp_path / "out", tmp_path, _archive(tmp_path, examples), 0, {s: 10 for s in mpt.SPLITS}, False)


def test_refuses_damaged_archives_and_non_empty_output(tmp_path):
    archive = _archive(tmp_path, [_example(p, 0, "True") for p in range(5)])
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(archive.read_bytes()[:40])
    caps = {s: 10 for s in mpt.SPLITS}
    with pytest.raises(HadSkipError, match="cannot read"):
        mpt.build(tmp_path / "o1", tmp_path, damaged, 0, caps, False)
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "keep.txt").write_text("x")
    with pytest.raises(HadSkipError, match="not empty"):
        mpt.build(tmp_path / "o2", tmp_path, archive, 0, caps, False)
    (tmp_path / "o2" / "train.csv").write_text("text,label\n")
    with pytest.raises(HadSkipError, match="train.csv"):
        mpt.build(tmp_path / "o2", tmp_path, archive, 0, caps, True)
    assert mpt.main([str(tmp_path / "o3"), "--archive", str(damaged)]) == 2
