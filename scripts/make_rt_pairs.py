#!/usr/bin/env python3
"""A 3-class sentence-pair folder task built from Rotten Tomatoes review sentences (synthetic labels).

Each example pairs two review sentences of the same split of the `rotten-tomatoes` task; its label says whether
both are fresh, both rotten, or mixed. The sentences are real, the pairing is not: a stand-in for a pair task
when no real one can be learnt offline (VitaminC, scripts/make_pair_task.py, stayed at chance with MiniLM-L6 on
4,000 training pairs). It exercises the pair path (token types, longest-first truncation) and gives inputs of
uneven difficulty (one clear and one subtle sentence), which is what layer skipping feeds on.

    python scripts/make_rt_pairs.py OUT [--train 6000 --dev 1000 --test 1000 --seed 0]
writes OUT/{train,dev,test}.jsonl with fields text, text_pair, label (both-fresh | both-rotten | mixed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

LABELS = {(1, 1): "both-fresh", (0, 0): "both-rotten", (0, 1): "mixed", (1, 0): "mixed"}


def pairs(texts: list[str], labels: np.ndarray, n: int, rng: np.random.Generator) -> list[dict]:
    """n pairs of two different sentences of one split (the rotten-tomatoes labels: 0 rotten, 1 fresh)."""
    if len(texts) < 2:
        raise SystemExit("error: a split needs at least 2 sentences to pair")
    a = rng.integers(0, len(texts), n)
    b = (a + rng.integers(1, len(texts), n)) % len(texts)  # never the same sentence twice
    return [{"text": texts[i], "text_pair": texts[j], "label": LABELS[(int(labels[i]), int(labels[j]))]}
            for i, j in zip(a, b, strict=True)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder to write (must be missing or empty)")
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--dev", type=int, default=1000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if min(args.train, args.dev, args.test) < 1:
        print("error: --train, --dev and --test must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"error: {out} exists and is not an empty folder", file=sys.stderr)
        return 2
    from hadskip.data import load_task

    data = load_task("rotten-tomatoes")
    rng = np.random.default_rng(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", args.train), ("dev", args.dev), ("test", args.test)):
        s = data.split(split)
        rows = pairs(list(s.texts), np.asarray(s.labels), n, rng)
        with open(out / f"{split}.jsonl", "w") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
        counts = {k: sum(r["label"] == k for r in rows) for k in sorted(set(LABELS.values()))}
        print(f"{split}: {len(rows)} {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
