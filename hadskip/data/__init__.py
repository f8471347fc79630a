"""Task data for hadskip: a registry of tasks, three sources that load them alike, and the task metrics.

    from hadskip.data import load_task, compute_metric
    data = load_task("rotten-tomatoes")            # offline default; or "glue/sst2", or a folder path
    data.train.texts, data.train.pairs, data.train.labels

Importing this package imports numpy only: `datasets` is imported when a GLUE task is loaded.
"""

from hadskip.data.metrics import accuracy, compute_metric, confusion_matrix, f1, mcc
from hadskip.data.sources import Split, TaskData, describe, load_task, split_by_group
from hadskip.data.tasks import METRICS, TASKS, TaskSpec, get_task

__all__ = [
    "METRICS",
    "TASKS",
    "Split",
    "TaskData",
    "TaskSpec",
    "accuracy",
    "compute_metric",
    "confusion_matrix",
    "describe",
    "f1",
    "get_task",
    "load_task",
    "mcc",
    "split_by_group",
]
