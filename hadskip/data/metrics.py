"""Task metrics on integer predictions, numpy only: accuracy, F1 and Matthews correlation.

Conventions follow scikit-learn's defaults so numbers compare with papers: binary F1 scores class 1; multiclass
F1 is the macro mean over the classes present in labels or predictions; a 0/0 F1 or MCC is 0.0. No probabilistic
metrics (AUC, log-loss) and no regression (GLUE's stsb is not a task here).
"""

from __future__ import annotations

import numpy as np

from hadskip.errors import HadSkipError


def _check(preds, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(preds), np.asarray(labels)
    if p.ndim != 1 or y.ndim != 1 or p.shape != y.shape:
        raise HadSkipError(f"predictions {p.shape} and labels {y.shape} must be 1-D arrays of the same length")
    if p.size == 0:
        raise HadSkipError("cannot score an empty set of predictions")
    return p.astype(np.int64), y.astype(np.int64)


def confusion_matrix(preds, labels, num_labels: int | None = None) -> np.ndarray:
    """(C, C) counts, rows = true label, columns = prediction."""
    p, y = _check(preds, labels)
    if min(p.min(), y.min()) < 0:
        raise HadSkipError("labels and predictions must be non-negative class indices")
    seen = max(int(p.max()), int(y.max())) + 1
    c = seen if num_labels is None else num_labels
    if seen > c:
        raise HadSkipError(f"class index {seen - 1} is outside [0, {c}) for a {c}-label task")
    return np.bincount(y * c + p, minlength=c * c).reshape(c, c)


def accuracy(preds, labels) -> float:
    p, y = _check(preds, labels)
    return float(np.mean(p == y))


def _f1_from(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.divide(2.0 * tp, denom, out=np.zeros(tp.shape, dtype=np.float64), where=denom > 0)


def f1(preds, labels, num_labels: int | None = None) -> float:
    """Binary F1 of class 1 when num_labels (default: inferred, at least 2) is 2, else macro F1."""
    cm = confusion_matrix(preds, labels, None if num_labels is None else max(num_labels, 2))
    if cm.shape[0] < 2:  # only class 0 seen and num_labels not given: still a binary task
        cm = np.pad(cm, ((0, 1), (0, 1)))
    tp = np.diag(cm)
    fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp
    if cm.shape[0] == 2:
        return float(_f1_from(tp[1:], fp[1:], fn[1:])[0])
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(_f1_from(tp, fp, fn)[present].mean())


def mcc(preds, labels) -> float:
    """Matthews correlation; for C > 2 classes Gorodkin's R_K (what sklearn's matthews_corrcoef computes)."""
    cm = confusion_matrix(preds, labels).astype(np.float64)
    t, p = cm.sum(axis=1), cm.sum(axis=0)  # true and predicted counts per class
    s, c = cm.sum(), np.trace(cm)
    denom = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return 0.0 if denom == 0 else float((c * s - t @ p) / denom)


def compute_metric(name: str, preds, labels, num_labels: int | None = None) -> float:
    """The metric `name` ("accuracy", "f1" or "mcc") of integer predictions against labels."""
    if name == "accuracy":
        return accuracy(preds, labels)
    if name == "f1":
        return f1(preds, labels, num_labels)
    if name == "mcc":
        return mcc(preds, labels)
    raise HadSkipError(f"unknown metric {name!r}; choose one of accuracy, f1, mcc")
