"""The task registry: what a classification task is (columns, labels, metric) and the named ones we know.

Local folders get a TaskSpec built from their files (see sources.py); this module only holds the fixed ones.
GLUE's regression task (stsb) and its tiny wnli are left out: every task here is classification.
"""

from __future__ import annotations

from dataclasses import dataclass

from hadskip.errors import HadSkipError

METRICS = ("accuracy", "f1", "mcc")


@dataclass(frozen=True)
class TaskSpec:
    """A text classification task: which columns hold the inputs and the label, and how it is scored."""

    name: str
    text_col: str
    pair_col: str | None  # second text of a sentence-pair task; None for single-sentence tasks
    label_col: str
    num_labels: int
    metric: str  # "accuracy", "f1" (binary: positive class 1; multiclass: macro) or "mcc"
    label_names: tuple[str, ...] = ()  # label i is label_names[i]; empty when labels are bare integers

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise HadSkipError(
                f"unknown metric {self.metric!r} for task {self.name}; choose one of {', '.join(METRICS)}"
            )
        if self.num_labels < 2:
            raise HadSkipError(f"task {self.name} has {self.num_labels} label(s); a classifier needs at least 2")
        if self.label_names and len(self.label_names) != self.num_labels:
            raise HadSkipError(
                f"task {self.name}: {len(self.label_names)} label names for {self.num_labels} labels"
            )

    @property
    def is_pair(self) -> bool:
        return self.pair_col is not None

    def label_name(self, i: int) -> str:
        """The name of label i (its number as text when the task has no names)."""
        return self.label_names[i] if self.label_names else str(i)


def _glue(name: str, text: str, pair: str | None, labels: tuple[str, ...], metric: str = "accuracy") -> TaskSpec:
    return TaskSpec(f"glue/{name}", text, pair, "label", len(labels), metric, labels)


# Column names and label order as in the hub's nyu-mll/glue (the ClassLabel names of its `label` feature).
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("rotten-tomatoes", "text", None, "category", 2, "accuracy", ("rotten", "fresh")),
        _glue("sst2", "sentence", None, ("negative", "positive")),
        _glue("mrpc", "sentence1", "sentence2", ("not_equivalent", "equivalent"), "f1"),
        _glue("qqp", "question1", "question2", ("not_duplicate", "duplicate"), "f1"),
        _glue("qnli", "question", "sentence", ("entailment", "not_entailment")),
        _glue("rte", "sentence1", "sentence2", ("entailment", "not_entailment")),
        _glue("cola", "sentence", None, ("unacceptable", "acceptable"), "mcc"),
        _glue("mnli", "premise", "hypothesis", ("entailment", "neutral", "contradiction")),
    )
}


def get_task(name: str) -> TaskSpec:
    """The registered task `name`, or a HadSkipError listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise HadSkipError(
            f"unknown task {name!r}; known tasks: {', '.join(TASKS)} (or pass a folder with train/dev/test files)"
        ) from None
