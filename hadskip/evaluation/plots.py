"""The PNG plots of `hadskip eval` (the paper's Fig. 2-5 kinds): per-layer usage probability, the histogram of
layers used per input, and per-layer usage split by gold label."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_layer_usage(gates: np.ndarray, labels: np.ndarray, out: Path, title: str = "") -> list[str]:
    """Write three PNGs; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, L = gates.shape
    files = []
    x = np.arange(1, L + 1)

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(x, gates.mean(axis=0), color="#4477aa")
    ax.set(xlabel="layer", ylabel="P(layer runs)", ylim=(0, 1.05), xticks=x, title=f"Layer usage {title}")
    files.append(_save(fig, out / "layer_usage.png"))

    fig, ax = plt.subplots(figsize=(5, 3))
    used = gates.sum(axis=1).astype(int)
    counts = np.bincount(used, minlength=L + 1)
    ax.bar(np.arange(L + 1), counts / max(1, n), color="#228833")
    ax.axvline(used.mean(), color="k", ls="--", lw=1, label=f"mean {used.mean():.2f}")
    ax.set(xlabel="layers used", ylabel="fraction of inputs", xticks=np.arange(L + 1),
           title=f"Layers used per input {title}")
    ax.legend()
    files.append(_save(fig, out / "layers_hist.png"))

    fig, ax = plt.subplots(figsize=(5, 3))
    classes = np.unique(labels)
    width = 0.8 / max(1, len(classes))
    for j, c in enumerate(classes):
        ax.bar(x - 0.4 + width * (j + 0.5), gates[labels == c].mean(axis=0), width, label=f"label {c}")
    ax.set(xlabel="layer", ylabel="P(layer runs)", ylim=(0, 1.05), xticks=x, title=f"Layer usage by label {title}")
    ax.legend()
    files.append(_save(fig, out / "layer_usage_by_label.png"))
    return files


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
