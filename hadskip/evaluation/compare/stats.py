"""Statistics over the seeds of `hadskip compare --seeds N`: mean and standard error per method and budget, and a
paired bootstrap interval of one route minus another on the same test rows.

The paired bootstrap resamples test rows (the same resample for both routes and every seed), scores each seed's
predictions on it, averages over seeds, and takes the difference; the interval is the 2.5/97.5 percentiles over
`n_boot` resamples. It measures the test-sampling noise of the seed-averaged difference; the seed-to-seed spread
is reported beside it as the standard error of each route's mean.
"""

from __future__ import annotations

import numpy as np

from hadskip.data.metrics import compute_metric


def mean_se(values: list[float]) -> tuple[float, float]:
    """(mean, standard error of the mean); SE 0 for one value."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def _scores(preds: np.ndarray, labels: np.ndarray, idx: np.ndarray, metric: str, num_labels: int) -> np.ndarray:
    """(B,) the metric of predictions (S, N) averaged over seeds S, on each resample idx (B, N)."""
    if metric == "accuracy":  # fast path: a mean of per-row hits
        hits = (preds == labels[None, :]).astype(np.float64)  # (S, N)
        return hits[:, idx].mean(axis=(0, 2))
    return np.array([np.mean([compute_metric(metric, p[i], labels[i], num_labels) for p in preds]) for i in idx])


def paired_bootstrap(a: np.ndarray, b: np.ndarray, labels: np.ndarray, metric: str = "accuracy",
                     num_labels: int = 2, n_boot: int = 2000, seed: int = 0) -> dict:
    """Route a minus route b: predictions (S, N) each (S seeds, rows in the same order), gold labels (N,).
    Returns {"diff": the seed-averaged difference on the whole split, "low", "high": the 95% interval}."""
    a, b, labels = np.atleast_2d(a), np.atleast_2d(b), np.asarray(labels)
    if a.shape[1] != len(labels) or b.shape[1] != len(labels):
        raise ValueError(f"predictions of {a.shape[1]} and {b.shape[1]} rows for {len(labels)} labels")
    n = len(labels)
    whole = np.arange(n)[None, :]
    diff = float(_scores(a, labels, whole, metric, num_labels)[0] - _scores(b, labels, whole, metric, num_labels)[0])
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, n_boot, 250):  # resamples in chunks: (250, N) indices at a time
        idx = rng.integers(0, n, size=(min(250, n_boot - start), n))
        diffs.append(_scores(a, labels, idx, metric, num_labels) - _scores(b, labels, idx, metric, num_labels))
    d = np.concatenate(diffs)
    low, high = np.percentile(d, [2.5, 97.5])
    return {"diff": diff, "low": float(low), "high": float(high), "n_boot": n_boot, "seeds": int(a.shape[0])}
