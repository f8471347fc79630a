"""What every task source returns: `TaskData`, a task's spec and its train/dev/test `Split`s."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hadskip.data.tasks import TaskSpec
from hadskip.errors import HadSkipError

SPLITS = ("train", "dev", "test")
FORMATS = (".csv", ".tsv", ".jsonl")


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
