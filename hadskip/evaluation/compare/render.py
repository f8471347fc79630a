"""compare.json's margins and compare.md's table."""

from __future__ import annotations

import numpy as np

from hadskip.evaluation.compare.plan import BASELINES
from hadskip.evaluation.compare.seeds import deploy_lines
from hadskip.evaluation.compare.seeds import to_markdown as seeds_markdown

def margins(rows: list[dict], budgets: list[float]) -> dict:
    """Per budget: hadskip's test metric minus the best baseline's, and which baseline that is."""
    out = {}
    for k in budgets:
        at = {r["method"]: r for r in rows if r["budget"] == k}
        best = max(BASELINES, key=lambda m: at[m]["value"] if m in at else -np.inf)
        if "hadskip" in at and best in at:
            out[f"{k:g}"] = {"best_baseline": best, "hadskip_minus_best": at["hadskip"]["value"] - at[best]["value"],
                             "dial_minus_best": (at["hadskip-dial"]["value"] - at[best]["value"]
                                                 if "hadskip-dial" in at else None)}
    return out


def to_markdown(result: dict) -> str:
    if "pairs" in result:  # the statistics over seeds
        return seeds_markdown(result)
    full = result["rows"][0]["value"]
    m = result["metric"]
    lines = [f"| method | budget | test {m} | % of full | test avg layers | dev {m} | dev avg layers | "
             "path entropy (bits) | top path share |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        pct = f"{100 * r['value'] / full:.1f}%" if full else "-"
        dev = f"{r['dev_value']:.4f} | {r['dev_avg_layers']:.2f}" if "dev_value" in r else "- | -"
        path = (f" | {r['path_entropy_bits']:.2f} | {r['top_path_share']:.2f}" if "path_entropy_bits" in r
                else " | - | -")
        lines.append(f"| {r['method']} | {r['budget']:g} | {r['value']:.4f} | {pct} | {r['avg_layers']:.2f} | {dev}"
                     f"{path} |")
    notes = [f"- budget {k}: hadskip − best baseline ({v['best_baseline']}) = {100 * v['hadskip_minus_best']:+.2f} "
             f"points" + (f"; dial {100 * v['dial_minus_best']:+.2f}" if v.get("dial_minus_best") is not None else "")
             for k, v in result.get("margins", {}).items()]
    epochs = ", ".join(f"{k}: {v:g}" for k, v in result.get("epochs", {}).items())
    notes.append(f"- training epochs per budget (HadSkip stage III = budgeted exit): {epochs}; early and patience "
                 f"exit: one multi-exit model, {result.get('exit_model_epochs', 0):g} epochs")
    deploy = ["", "Route to deploy per budget (highest dev metric among the routes within the budget that `hadskip "
              "export` ships; one seed: `--seeds 3` for intervals):", "", *deploy_lines(result.get("deploy", {}))]
    return (f"Task {result['task']} (test; dynamic methods calibrated on dev to HadSkip's dev average layers)\n\n"
            + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n" + ("\n".join(deploy) + "\n"
                                                                         if result.get("deploy") else ""))
