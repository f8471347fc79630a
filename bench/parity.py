"""Parity of an exported model dir with its PyTorch run on a real split: decisions and logits, for every route.

    python bench/parity.py runs/h3 models/h3 --split test [--batch-size 32] [--all-settings] [--json]

Routes (runtime/routes.py): gated (decisions = gates), static (a budgeted-exit export: every row runs every layer),
early-exit (decisions = the layers a row ran before it exited; PyTorch side: the run's MultiExit and the runtime's
own entropy rule). --all-settings checks every point of the model dir's dial too (gate offsets, exit thresholds).

Both sides get the same token ids (the runtime's tokenizer.json encoding, padded per batch), the PyTorch side
runs `GatedEncoder(..., gates="route")` and the runtime its backend's router. The threshold follows the model
dir's precision (manifest "precision"; the export's tolerances, hadskip.export.spec.TOLERANCES):
    logits    |runtime - torch| <= atol + rtol * |torch| on every row whose gates agree
              (fp32: 1e-4 + 1e-5 |torch|; fp16: 2e-2 + 5e-3 |torch|)
    decisions a row may take another path only where PyTorch's first differing decision was within atol of
              flipping (gate margin + offset; exit entropy - threshold): the runtime's hidden state differs by
              float noise (fp16 graphs feed the fp32 gates slightly different inputs), so a decision that close
              to the tie may go either way
Prints the max abs logit difference, the rows whose gate decisions differ (and how many of them are outside the
tie margin), and the closest first-flip margin. Exit 0 when both rules hold ("PARITY OK"), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _torch_side(run_dir: str, route: str, atol: float, rtol: float):
    """(run info, step, layers) for the model dir's route: step(ids, mask, tt, knob) -> (decisions (B, L) bool,
    logits (B, C), tie (B, L): how far each decision was from flipping over the tolerance, atol + rtol * scale:
    above 1 it is outside the tie margin).
        gated       GatedEncoder route, knob = gate offset; |gate margin - offset|, scale |l0| + |l1|
        static      every layer (gates off), knob unused; inf (nothing to decide)
        early-exit  MultiExit's every exit, the runtime's entropy rule at threshold knob; decisions = the
                    layers run, so column j's tie is |entropy - knob| of the exit after layer j-1 (the one that
                    decides whether layer j runs), scale |knob|"""
    import torch

    from hadskip.runtime.exits import entropy, exit_layers, softmax

    if route == "early-exit":
        from hadskip.evaluation.baselines.exits import load_exit_model

        model, _, info = load_exit_model(run_dir, device="cpu")

        def step(ids, mask, tt, knob):
            with torch.no_grad():
                z, _ = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(tt))
            z = z.numpy()  # (B, L, C)
            ent = entropy(softmax(z))
            at = exit_layers(ent, knob)
            L = z.shape[1]
            tie = np.abs(ent - knob) / (atol + rtol * abs(knob))
            # layer j runs iff the row did not exit after layer j-1: that exit's tie decides column j (layer 0
            # always runs)
            tie = np.concatenate([np.full((len(at), 1), np.inf), tie[:, :-1]], axis=1)
            return (np.arange(L)[None, :] <= at[:, None]), z[np.arange(len(at)), at], tie
        return info, step, model.num_layers
    from hadskip.modeling.checkpoint import load_run

    model, _, info = load_run(run_dir)

    def step(ids, mask, tt, knob):
        with torch.no_grad():
            out = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(tt),
                        gates="off" if route == "static" else "route", gate_offset=knob)
        if route == "static":
            b, L = ids.shape[0], model.num_layers
            return np.ones((b, L), dtype=bool), out.logits.numpy(), np.full((b, L), np.inf)
        gl = out.gate_logits.numpy()
        tie = np.abs(gl[..., 1] - gl[..., 0] - knob) / (atol + rtol * np.abs(gl).sum(-1))
        return out.gates.numpy().astype(bool), out.logits.numpy(), tie
    return info, step, model.num_layers


def _knobs(rt, route: str, all_settings: bool) -> list[tuple[str, float]]:
    """(name, knob) of the settings checked: the trained rule, and with `all_settings` every point of the dial."""
    base = [("trained", 0.0)] if route != "early-exit" else [("threshold 0", 0.0)]
    dial = rt.info.dial
    if not all_settings or dial is None:
        return base
    return base + [(f"budget {p.target:g}", float(p.offset)) for p in dial.points]


def parity(run_dir: str, model_dir: str, split: str = "test", batch_size: int = 32, backend: str = "ort-cpu",
           all_settings: bool = False) -> dict:
    """Parity of the model dir with its run at the trained rule (and with all_settings at every dial point)."""
    from hadskip.export.spec import TOLERANCES
    from hadskip.modeling.checkpoint import load_run_task
    from hadskip.runtime import Runtime

    rt = Runtime.load(model_dir, backend=backend)
    route = rt.route
    precision = rt.info.manifest.precision if rt.info.manifest is not None else "fp32"
    atol, rtol = TOLERANCES[precision]
    info, torch_step, num_layers = _torch_side(run_dir, route, atol, rtol)
    if num_layers != rt.num_layers:
        return {"run": run_dir, "model": model_dir, "route": route, "ok": False, "settings": [],
                "mismatch": f"the run has {num_layers} layers, the model dir {rt.num_layers}: not its export"}
    data = load_run_task(info.task).split(split)
    inputs = list(zip(data.texts, data.pairs, strict=True)) if data.pairs is not None else list(data.texts)
    enc = rt.encode(inputs)
    order = np.argsort(enc.lengths, kind="stable")
    pad = rt.info.pad_token_id or 0
    n = len(inputs)
    batches = []
    for s in range(0, n, batch_size):
        idx = order[s:s + batch_size]
        t = int(enc.lengths[idx].max())
        ids = np.full((len(idx), t), pad, dtype=np.int64)
        tt = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for j, i in enumerate(idx):
            k = len(enc.ids[i])
            ids[j, :k], tt[j, :k], mask[j, :k] = enc.ids[i], enc.type_ids[i], 1
        batches.append((idx, ids, mask, tt))
    settings = []
    for name, knob in _knobs(rt, route, all_settings):
        kw = {"early-exit": {"exit_threshold": knob}, "gated": {"gate_offset": knob}}.get(route, {})
        max_diff, worst_ratio, disagree, outside, margins = 0.0, 0.0, 0, 0, []
        rt_labels, pt_labels = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        layers = 0.0
        for idx, ids, mask, tt in batches:
            res = rt.run_batch(ids, mask, tt, **kw)
            pt_dec, pt_logits, tie = torch_step(ids, mask, tt, knob)
            diff_rows = (pt_dec != res.gates).any(axis=1)
            disagree += int(diff_rows.sum())
            if diff_rows.any():  # how close PyTorch's decision was at the first layer where the two differ
                first = np.argmax(pt_dec[diff_rows] != res.gates[diff_rows], axis=1)
                margin = tie[diff_rows][np.arange(len(first)), first]
                outside += int((margin > 1.0).sum())
                margins.append(float(margin.min()))
            same = ~diff_rows
            if same.any():
                ref = pt_logits[same]
                err = np.abs(ref - res.logits[same])
                max_diff = max(max_diff, float(err.max()))
                worst_ratio = max(worst_ratio, float((err / (atol + rtol * np.abs(ref))).max()))
            rt_labels[idx] = res.logits.argmax(1)
            pt_labels[idx] = pt_logits.argmax(1)
            layers += float(res.gates.sum())
        settings.append({"setting": name, "knob": knob, "avg_layers": round(layers / max(n, 1), 4),
                         "max_abs_logit_diff": max_diff, "worst_logit_diff_over_tolerance": worst_ratio,
                         "decision_disagreements": disagree, "decision_disagreements_outside_tie": outside,
                         "closest_flip_over_tolerance": min(margins) if margins else None,
                         "label_disagreements": int((rt_labels != pt_labels).sum()),
                         "ok": bool(worst_ratio <= 1.0 and outside == 0)})
    first = settings[0]
    return {"run": run_dir, "model": model_dir, "route": route, "split": split, "examples": n, "backend": backend,
            "precision": precision, "atol": atol, "rtol": rtol,
            **{k: v for k, v in first.items() if k not in ("setting", "knob")},
            "gate_disagreements": first["decision_disagreements"],  # the name of earlier reports
            "gate_disagreements_outside_tie": first["decision_disagreements_outside_tie"],
            "settings": settings, "ok": all(x["ok"] for x in settings)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("model_dir")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--all-settings", action="store_true",
                    help="also every point of the model dir's dial (gate offsets / exit thresholds)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = parity(a.run_dir, a.model_dir, a.split, a.batch_size, a.backend, a.all_settings)
    if a.json:
        print(json.dumps(r))
    else:
        for k, v in r.items():
            if k != "settings":
                print(f"{k:38s} {v}")
        for x in r["settings"]:
            print(f"  {x['setting']:>14s}: {x['avg_layers']:.2f} layers, {x['decision_disagreements']} decision "
                  f"disagreements ({x['decision_disagreements_outside_tie']} outside the tie margin), "
                  f"{x['label_disagreements']} label disagreements, max |dlogit| {x['max_abs_logit_diff']:.2e}")
    print("PARITY OK" if r["ok"] else "PARITY MISMATCH", file=sys.stderr)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
