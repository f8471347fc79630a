"""frontier.png: the task metric against the average layers used (test), one series per method of a
`hadskip compare` result (its "curves"), with the compared budgets marked."""

from __future__ import annotations

from pathlib import Path

STYLE = {  # method -> (label, matplotlib format)
    "full": ("full model", "k*"),
    "budgeted-exit": ("budgeted exit (first K layers)", "s--"),
    "early-exit": ("early exit, entropy (joint exits)", "-"),
    "patience-exit": ("patience exit (PABEE)", "^:"),
    "hadskip-dial": ("HadSkip dial (one model)", "-"),
    "hadskip": ("HadSkip (a model per budget)", "o"),
    "cascade": ("cascade (K-layer model, then the full model)", "d-."),
}


def _axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5))


def _save(fig, ax, path: str | Path, xlabel: str, ylabel: str, title: str, legend_size: int, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def plot_frontier(result: dict, path: str | Path) -> Path:
    fig, ax = _axes()
    others = {m: (m, "v-") for m in result["curves"] if m not in STYLE}  # HadSkip variants
    for method, (label, fmt) in {**STYLE, **others}.items():
        pts = result["curves"].get(method) or []
        if not pts:
            continue
        xs, ys = zip(*sorted(pts), strict=True)
        ax.plot(xs, ys, fmt, label=label, markersize=8 if method in ("hadskip", "full") else 4, linewidth=1.5)
    for k in {r["budget"] for r in result["rows"] if r["method"] != "full"}:
        ax.axvline(k, color="0.85", linewidth=0.8, zorder=0)
    return _save(fig, ax, path, "average layers used (test)", f"{result['metric']} (test)",
                 f"{result['task']}: accuracy-compute frontier ({result['num_layers']} layers)", 8, 120)


def plot_dev_curves(curves: dict, path: str | Path) -> Path:
    """dev_curves.png: the dev metric of every run of one comparison over its training epochs (HadSkip: stage III
    epochs; the multi-exit model: each exit), to show whether each method had converged."""
    fig, ax = _axes()
    for name, pts in sorted(curves.items()):
        if not pts:
            continue
        xs = [p[0] for p in pts]
        if isinstance(pts[0][1], list):  # the multi-exit model: one line per exit
            for i in range(len(pts[0][1])):
                ax.plot(xs, [p[1][i] for p in pts], ":", linewidth=1, label=f"{name} exit {i + 1}")
        else:
            ax.plot(xs, [p[-2] if len(p) == 4 else p[1] for p in pts], "o-", markersize=3, label=name)
    return _save(fig, ax, path, "training epochs (HadSkip: stage III)", "dev metric", "dev curves", 6, 110)
