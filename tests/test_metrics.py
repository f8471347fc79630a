"""Metrics: hand-computed cases, then every metric x random inputs against plain-Python reference formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hadskip.data.metrics import accuracy, compute_metric, confusion_matrix, f1, mcc
from hadskip.errors import HadSkipError

# Binary: TP=3 (0,2,6), FN=1 (1), FP=1 (3), TN=3 (4,5,7).
BIN_Y = [1, 1, 1, 0, 0, 0, 1, 0]
BIN_P = [1, 0, 1, 1, 0, 0, 1, 0]
# Three classes; confusion rows (true) = [1,1,0], [0,2,0], [1,0,1].
MC_Y = [0, 0, 1, 1, 2, 2]
MC_P = [0, 1, 1, 1, 2, 0]


def test_binary_by_hand():
    assert accuracy(BIN_P, BIN_Y) == 6 / 8
    assert f1(BIN_P, BIN_Y) == 2 * 3 / (2 * 3 + 1 + 1)
    assert mcc(BIN_P, BIN_Y) == (3 * 3 - 1 * 1) / math.sqrt(4 * 4 * 4 * 4)


def test_multiclass_by_hand():
    assert confusion_matrix(MC_P, MC_Y).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert accuracy(MC_P, MC_Y) == 4 / 6
    # per-class F1 = 2TP / (2TP + FP + FN): class 0 -> 2/4, class 1 -> 4/5, class 2 -> 2/3
    assert f1(MC_P, MC_Y) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3, abs=1e-15)
    # Gorodkin: (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)), t = [2,2,2], p = [2,3,1], c = 4, s = 6
    assert mcc(MC_P, MC_Y) == pytest.approx((4 * 6 - 12) / math.sqrt((36 - 14) * (36 - 12)), abs=1e-15)


def test_degenerate_cases():
    assert mcc([1, 1, 1], [0, 1, 1]) == 0.0  # constant prediction: 0/0 -> 0
    assert mcc([0, 1, 0, 1], [1, 0, 1, 0]) == -1.0
    assert mcc([0, 1, 2], [0, 1, 2]) == 1.0
    assert f1([0, 0], [0, 0]) == 0.0  # no positive anywhere: 0/0 -> 0
    assert f1([0, 0], [0, 0], num_labels=2) == 0.0
    # num_labels decides binary vs macro: binary scores class 1 only (2/3), macro averages 4/5 and 2/3
    assert f1([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(2 / 3)
    assert f1([0, 0, 0, 1], [0, 0, 1, 1], num_labels=3) == pytest.approx((4 / 5 + 2 / 3) / 2)


def _ref(name: str, p: list[int], y: list[int], k: int) -> float:
    """sklearn's definitions written out with loops."""
    if name == "accuracy":
        return sum(a == b for a, b in zip(p, y, strict=True)) / len(y)
    cm = [[sum(1 for a, b in zip(p, y, strict=True) if b == i and a == j) for j in range(k)] for i in range(k)]
    if name == "f1":
        scores = []
        for c in range(k) if k > 2 else [1]:
            tp = cm[c][c]
            fp = sum(cm[i][c] for i in range(k)) - tp
            fn = sum(cm[c]) - tp
            if k > 2 and tp + fp + fn == 0:
                continue  # class absent from labels and predictions: not averaged
            scores.append(0.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
        return sum(scores) / len(scores)
    t = [sum(cm[i]) for i in range(k)]
    q = [sum(cm[i][j] for i in range(k)) for j in range(k)]
    s, c = len(y), sum(cm[i][i] for i in range(k))
    den = math.sqrt((s * s - sum(x * x for x in q)) * (s * s - sum(x * x for x in t)))
    return 0.0 if den == 0 else (c * s - sum(a * b for a, b in zip(t, q, strict=True))) / den


@pytest.mark.parametrize("name", ["accuracy", "f1", "mcc"])
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("seed", range(5))
def test_against_reference(name, k, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    y = rng.integers(0, k, n)
    p = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))  # mostly right, like a model
    got = compute_metric(name, p, y, num_labels=k)
    assert got == pytest.approx(_ref(name, p.tolist(), y.tolist(), k), abs=1e-12)


def test_errors():
    with pytest.raises(HadSkipError, match="unknown metric"):
        compute_metric("auc", [0], [0])
    with pytest.raises(HadSkipError, match="same length"):
        accuracy([0, 1], [0])
    with pytest.raises(HadSkipError, match="empty"):
        mcc([], [])
    with pytest.raises(HadSkipError, match="outside"):
        f1([0, 2], [0, 1], num_labels=2)
    with pytest.raises(HadSkipError, match="non-negative"):
        mcc([0, -1], [0, 1])
