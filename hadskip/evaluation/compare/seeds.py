"""The statistics of `hadskip compare --seeds N` (run.compare_seeds runs the comparison once per seed, in
OUT/seed-S): per method and budget the mean and standard error over seeds, paired bootstrap intervals on test
(stats.py), and the route to deploy at each budget, chosen on dev.

Pairs reported at each budget: every route minus budgeted exit (the static baseline), every gated route
(HadSkip, its dial, its variants) minus the best non-gated route (budgeted exit, cascade, early exit: the one
with the highest mean dev metric), and the subset router minus the best fixed subset and budgeted exit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hadskip.errors import HadSkipError
from hadskip.evaluation.compare.records import load_records
from hadskip.evaluation.compare.stats import mean_se, paired_bootstrap
from hadskip.runtime.dial import BUDGET_MARGIN

STATIC = "budgeted-exit"
NON_GATED = ("budgeted-exit", "cascade", "early-exit")
# patience is a randomised mixture between two patiences; best-subset, oracle and subset-router only measure the
# headroom (the any-subset backbone does not export)
NOT_DEPLOYED = ("full", "patience-exit", "best-subset", "oracle", "subset-router")
# routes compared but not yet exported by `hadskip export` (hadskip/export/route.py): never recommended; compare.md
# names them when they are ahead on dev
UNSHIPPED = {"cascade": "a cascade (two model dirs) does not export yet",
             "hadskip-skip-exit": "the exit heads of a gated run do not export yet"}
# the headroom's own pairs: does a route chosen from the input beat the best fixed subset of the same backbone?
HEADROOM_PAIRS = (("subset-router", "best-subset"), ("subset-router", STATIC))


def is_gated(method: str) -> bool:
    return method.startswith("hadskip")


def _candidates(at: dict[str, dict]) -> tuple[list[str], str | None]:
    """(the deployable routes scored on dev, the non-gated one of them with the best dev metric)."""
    candidates = [m for m in at if m not in NOT_DEPLOYED and "dev_value" in at[m]]
    non_gated = [m for m in NON_GATED if m in candidates]
    return candidates, (max(non_gated, key=lambda m: at[m]["dev_value"]) if non_gated else None)


def route_to_deploy(at: dict[str, dict], k: float) -> dict | None:
    """The route to deploy at budget k from the rows there ({method: row with dev_value, dev_avg_layers, value,
    avg_layers}; one seed's or the means over seeds): the best dev metric among the routes that ship and stay
    within the budget on dev (the matched average, HadSkip's, plus the margin a budget is held to: budgeted exit
    rounds K, and at 2.5 it runs 3 layers). Routes over the budget and unshipped routes ahead on dev are named."""
    candidates, best_other = _candidates(at)
    limit = at["hadskip"]["dev_avg_layers"] + BUDGET_MARGIN if "hadskip" in at else float(k) + BUDGET_MARGIN
    within = [m for m in candidates if at[m].get("dev_avg_layers", float("inf")) <= limit]
    ships = [m for m in within if m not in UNSHIPPED]
    if not ships:
        return None
    pick = max(ships, key=lambda m: at[m]["dev_value"])
    ahead = sorted((m for m in within if m in UNSHIPPED and at[m]["dev_value"] > at[pick]["dev_value"]),
                   key=lambda m: -at[m]["dev_value"])
    return {"route": pick, "dev_value": at[pick]["dev_value"], "value": at[pick]["value"],
            "avg_layers": at[pick]["avg_layers"], "best_non_gated": best_other,
            "over_budget": sorted(set(candidates) - set(within)),
            "ahead_unshipped": [{"route": m, "dev_value": at[m]["dev_value"], "why": UNSHIPPED[m]} for m in ahead]}


def deploy_lines(deploy: dict) -> list[str]:
    """compare.md's recommendation, one line per budget."""
    lines = []
    for k, d in deploy.items():
        over = f"; over the budget on dev: {', '.join(d['over_budget'])}" if d.get("over_budget") else ""
        ahead = "".join(f"; ahead on dev but not shipped: {a['route']} (dev {a['dev_value']:.4f}; {a['why']})"
                        for a in d.get("ahead_unshipped", []))
        lines.append(f"- budget {k}: **{d['route']}** (dev {d['dev_value']:.4f}, test {d['value']:.4f} at "
                     f"{d['avg_layers']:.2f} layers; best non-gated route: {d['best_non_gated']}{over}{ahead})")
    return lines


def aggregate(per_seed: list[dict], dirs: list[Path], n_boot: int = 2000) -> dict:
    """The statistics over seeds of per-seed compare.json dicts, with their OUT/seed-S dirs (rows.npz)."""
    first = per_seed[0]
    metric, num_labels = first["metric"], _num_labels(first)
    loaded = [load_records(d) for d in dirs]
    labels = loaded[0][0]
    if any(len(lab) != len(labels) or not np.array_equal(lab, labels) for lab, _ in loaded):
        raise HadSkipError("the seeds were scored on different test rows: compare them only on one task and split")
    keys = sorted({(r["method"], r["budget"]) for r in first["rows"]}, key=lambda x: (x[1], x[0]))
    rows = []
    for method, budget in keys:
        found = [next((r for r in res["rows"] if r["method"] == method and r["budget"] == budget), None)
                 for res in per_seed]
        if any(r is None for r in found):
            continue
        row = {"method": method, "budget": budget, "seeds": len(found)}
        for key in ("value", "avg_layers", "dev_value", "dev_avg_layers", "path_entropy_bits", "top_path_share"):
            vals = [r[key] for r in found if r.get(key) is not None]
            if len(vals) == len(found):
                row[key], row[f"{key}_se"] = mean_se(vals)
        rows.append(row)
    budgets = sorted({b for m, b in keys if m != "full"})
    pairs, deploy = [], {}
    for k in budgets:
        at = {r["method"]: r for r in rows if r["budget"] == k}

        def preds(method: str, k: float = k) -> np.ndarray | None:
            recs = [rec.get((method, k)) for _, rec in loaded]
            return None if any(r is None for r in recs) else np.stack([r["preds"] for r in recs])

        candidates, best_other = _candidates(at)
        for m in candidates:
            against = [STATIC] if m != STATIC else []
            if is_gated(m) and best_other and best_other != STATIC:
                against.append(best_other)
            for b in against:
                pa, pb = preds(m), preds(b)
                if pa is None or pb is None:
                    continue
                ci = paired_bootstrap(pa, pb, labels, metric, num_labels, n_boot)
                pairs.append({"budget": k, "route": m, "minus": b, **ci,
                              "layers": at[m]["avg_layers"], "minus_layers": at[b]["avg_layers"]})
        for m, b in HEADROOM_PAIRS:
            pa, pb = preds(m), preds(b)
            if m in at and b in at and pa is not None and pb is not None:
                ci = paired_bootstrap(pa, pb, labels, metric, num_labels, n_boot)
                pairs.append({"budget": k, "route": m, "minus": b, **ci,
                              "layers": at[m]["avg_layers"], "minus_layers": at[b]["avg_layers"]})
        choice = route_to_deploy(at, k)
        if choice is not None:
            deploy[f"{k:g}"] = choice
    curves = {m: sorted([r["avg_layers"], r["value"]] for r in rows if r["method"] == m)
              for m in {r["method"] for r in rows}}
    return {"task": first["task"], "metric": metric, "split": "test", "num_layers": first["num_layers"],
            "seeds": [res.get("seed") for res in per_seed], "rows": rows, "pairs": pairs, "deploy": deploy,
            "curves": curves, "variants": first.get("variants", []), "train_examples": first.get("train_examples"),
            "epochs": first.get("epochs"), "exit_model_epochs": first.get("exit_model_epochs"), "kd": first.get("kd"),
            "runs": {"seeds": [str(d) for d in dirs]}, "n_boot": n_boot}


def _num_labels(result: dict) -> int:
    return int(result.get("num_labels") or 2)


def to_markdown(result: dict) -> str:
    m, n = result["metric"], len(result["seeds"])
    lines = [f"Task {result['task']}, seeds {', '.join(map(str, result['seeds']))}: test {m}, mean ± standard error "
             f"over {n} seeds (every dynamic rule calibrated on dev to HadSkip's dev average layers)", "",
             f"| method | budget | test {m} | test avg layers | dev {m} | path entropy (bits) | top path share |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ent = f"{r['path_entropy_bits']:.2f}" if "path_entropy_bits" in r else "-"
        top = f"{r['top_path_share']:.2f}" if "top_path_share" in r else "-"
        dev = f"{r['dev_value']:.4f}" if "dev_value" in r else "-"
        lines.append(f"| {r['method']} | {r['budget']:g} | {r['value']:.4f} ± {r['value_se']:.4f} | "
                     f"{r['avg_layers']:.2f} | {dev} | {ent} | {top} |")
    lines += ["", f"Paired differences on test (points; 95% bootstrap interval over test rows, {result['n_boot']} "
                  "resamples, seed-averaged):", "", "| budget | route | minus | difference | interval |",
              "|---|---|---|---|---|"]
    for p in result["pairs"]:
        lines.append(f"| {p['budget']:g} | {p['route']} | {p['minus']} | {100 * p['diff']:+.2f} | "
                     f"[{100 * p['low']:+.2f}, {100 * p['high']:+.2f}] |")
    lines += ["", "Route to deploy per budget (highest mean dev metric among the routes within the budget that "
                  "`hadskip export` ships):", ""]
    lines += deploy_lines(result["deploy"])
    return "\n".join(lines) + "\n"
