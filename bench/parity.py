"""Parity of an exported model dir with its PyTorch run on a real split: gate decisions and logits.

    python bench/parity.py runs/h3 models/h3 --split test [--batch-size 32] [--json]

Both sides get the same token ids (the runtime's tokenizer.json encoding, padded per batch), the PyTorch side
runs `GatedEncoder(..., gates="route")` and the runtime its backend's router. Prints the max abs logit
difference, the number of rows whose gate decisions differ, and the closest gate margin among those rows
(disagreements can only come from gates whose two logits are within float noise of each other).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def parity(run_dir: str, model_dir: str, split: str = "test", batch_size: int = 32, backend: str = "ort-cpu") -> dict:
    import torch

    from hadskip.checkpoint import load_run, load_run_task
    from hadskip.runtime import Runtime

    model, _, info = load_run(run_dir)
    rt = Runtime.load(model_dir, backend=backend)
    data = load_run_task(info.task).split(split)
    inputs = list(zip(data.texts, data.pairs, strict=True)) if data.pairs is not None else list(data.texts)
    enc = rt.encode(inputs)
    order = np.argsort(enc.lengths, kind="stable")
    pad = rt.info.pad_token_id or 0
    max_diff, disagree, n, margins = 0.0, 0, len(inputs), []
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
            gl = out.gate_logits.numpy()[diff_rows]
            margins.append(float(np.abs(gl[..., 1] - gl[..., 0]).min()))
        same = ~diff_rows
        if same.any():
            max_diff = max(max_diff, float(np.abs(out.logits.numpy()[same] - res.logits[same]).max()))
        rt_labels[idx] = res.logits.argmax(1)
        pt_labels[idx] = out.logits.numpy().argmax(1)
    return {"run": run_dir, "model": model_dir, "split": split, "examples": n, "backend": backend,
            "max_abs_logit_diff": max_diff, "gate_disagreements": disagree,
            "closest_margin_in_disagreeing_rows": min(margins) if margins else None,
            "label_disagreements": int((rt_labels != pt_labels).sum())}


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
    ok = r["max_abs_logit_diff"] <= 1e-4 and r["gate_disagreements"] == 0
    print("PARITY OK" if ok else "PARITY MISMATCH", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
