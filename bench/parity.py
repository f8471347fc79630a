"""Parity of an exported model dir with its PyTorch run on a real split: gate decisions and logits.

    python bench/parity.py runs/h3 models/h3 --split test [--batch-size 32] [--json]

Both sides get the same token ids (the runtime's tokenizer.json encoding, padded per batch), the PyTorch side
runs `GatedEncoder(..., gates="route")` and the runtime its backend's router. The threshold follows the model
dir's precision (manifest "precision"; the export's tolerances, hadskip.export.spec.TOLERANCES):
    logits    |runtime - torch| <= atol + rtol * |torch| on every row whose gates agree
              (fp32: 1e-4 + 1e-5 |torch|; fp16: 2e-2 + 5e-3 |torch|)
    gates     a row may take another path only where PyTorch's first differing gate is within the tie margin
              atol + rtol * (|l0| + |l1|) (the runtime's hidden state differs by float noise: fp16 graphs feed
              the fp32 gates slightly different inputs, so a decision that close to the tie may go either way)
Prints the max abs logit difference, the rows whose gate decisions differ (and how many of them are outside the
tie margin), and the closest first-flip margin. Exit 0 when both rules hold ("PARITY OK"), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _first_flip_margins(pt_gates: np.ndarray, rt_gates: np.ndarray, gate_logits: np.ndarray, atol: float,
                        rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """(|margin|, tie margin) of PyTorch's gate at the first layer where each row's decisions differ.
    pt_gates, rt_gates: (n, L) bool for rows that differ somewhere; gate_logits: (n, L, 2) PyTorch's."""
    first = np.argmax(pt_gates != rt_gates, axis=1)  # (n,)
    logits = gate_logits[np.arange(len(first)), first]  # (n, 2)
    margin = np.abs(logits[:, 1] - logits[:, 0])
    return margin, atol + rtol * np.abs(logits).sum(axis=1)


def parity(run_dir: str, model_dir: str, split: str = "test", batch_size: int = 32, backend: str = "ort-cpu") -> dict:
    import torch

    from hadskip.modeling.checkpoint import load_run, load_run_task
    from hadskip.export.spec import TOLERANCES
    from hadskip.runtime import Runtime

    model, _, info = load_run(run_dir)
    rt = Runtime.load(model_dir, backend=backend)
    precision = rt.info.manifest.precision if rt.info.manifest is not None else "fp32"
    atol, rtol = TOLERANCES[precision]
    data = load_run_task(info.task).split(split)
    inputs = list(zip(data.texts, data.pairs, strict=True)) if data.pairs is not None else list(data.texts)
    enc = rt.encode(inputs)
    order = np.argsort(enc.lengths, kind="stable")
    pad = rt.info.pad_token_id or 0
    max_diff, worst_ratio, disagree, outside, n, margins = 0.0, 0.0, 0, 0, len(inputs), []
    rt_labels = np.zeros(n, dtype=np.int64)
    pt_labels = np.zeros(n, dtype=np.int64)
    for s in range(0, n, batch_size):
        idx = order[s:s + batch_size]
        t = int(enc.lengths[idx].max())
        ids = np.full((len(idx), t), pad, dtype=np.int64)
        tt = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for j, i in enumerate(idx):
            k = len(enc.ids[i])
            ids[j, :k], tt[j, :k], mask[j, :k] = enc.ids[i], enc.type_ids[i], 1
        res = rt.run_batch(ids, mask, tt)
        with torch.no_grad():
            out = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(tt), gates="route")
        pt_gates = out.gates.numpy().astype(bool)
        diff_rows = (pt_gates != res.gates).any(axis=1)
        disagree += int(diff_rows.sum())
        if diff_rows.any():
            margin, tie = _first_flip_margins(pt_gates[diff_rows], res.gates[diff_rows],
                                              out.gate_logits.numpy()[diff_rows], atol, rtol)
            outside += int((margin > tie).sum())
            margins.append(float(margin.min()))
        same = ~diff_rows
        if same.any():
            ref = out.logits.numpy()[same]
            err = np.abs(ref - res.logits[same])
            max_diff = max(max_diff, float(err.max()))
            worst_ratio = max(worst_ratio, float((err / (atol + rtol * np.abs(ref))).max()))
        rt_labels[idx] = res.logits.argmax(1)
        pt_labels[idx] = out.logits.numpy().argmax(1)
    return {"run": run_dir, "model": model_dir, "split": split, "examples": n, "backend": backend,
            "precision": precision, "atol": atol, "rtol": rtol,
            "max_abs_logit_diff": max_diff, "worst_logit_diff_over_tolerance": worst_ratio,
            "gate_disagreements": disagree, "gate_disagreements_outside_tie": outside,
            "closest_margin_in_disagreeing_rows": min(margins) if margins else None,
            "label_disagreements": int((rt_labels != pt_labels).sum()),
            "ok": bool(worst_ratio <= 1.0 and outside == 0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("model_dir")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = parity(a.run_dir, a.model_dir, a.split, a.batch_size, a.backend)
    if a.json:
        print(json.dumps(r))
    else:
        for k, v in r.items():
            print(f"{k:38s} {v}")
    print("PARITY OK" if r["ok"] else "PARITY MISMATCH", file=sys.stderr)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
