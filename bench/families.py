"""Each supported encoder family end to end: tiny-config parity, export time, and forced K = L/2 speed vs ideal.

    python bench/families.py [--families bert,roberta,electra,distilbert,deberta-v2,modernbert] [--repeats 30] [--json]

Per family (random weights, the offline tiny tokenizer of hadskip.testing):
  tiny     TINY_SHAPES[family] at max_len = the position limit: export (validated), then the runtime (ort-cpu)
           against the PyTorch reference (`GatedEncoder(gates="route")`) on a padded batch of texts and pairs,
           full-length rows included: max |delta logit| and gate disagreements
  small    hidden 256, 4 heads, 8 layers, intermediate 1024 (ELECTRA: embedding size 128; ModernBERT: the tiny
           config's local window of 8 on every 2nd layer): export seconds, and
           hadskip.runtime.bench at batch 8, seq 128 with K = L/2 forced: measured ratio to all-gates-open,
           the ideal (emb + K layer + head) / (emb + L layer + head), and measured / ideal
Timings come from one process with engines interleaved (runtime/bench.py); the machine may be shared: treat
them as rough. Needs the train and export extras.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SMALL = (256, 4, 8, 1024)


def _parity(arch: str, root: Path) -> dict:
    import torch

    from hadskip.modeling.backbone import max_tokens
    from hadskip.modeling.checkpoint import load_run
    from hadskip.export import export_model
    from hadskip.runtime import Runtime
    from hadskip.testing import tiny_model, tiny_run, tiny_sentences

    limit = max_tokens(tiny_model(arch)[0].config.hf_config)
    run = tiny_run(root / f"{arch}-tiny-run", arch, max_len=limit)
    t0 = time.perf_counter()
    export_model(run, root / f"{arch}-tiny", max_batch=8, progress=False)
    seconds = time.perf_counter() - t0
    rt = Runtime.load(root / f"{arch}-tiny")
    texts = tiny_sentences(12, 3, max_words=40)
    inputs = texts[:6] + list(zip(texts[6:], texts[:6], strict=True)) + ["good " * 400, ("fun " * 300, "bad " * 300)]
    enc = rt.encode(inputs)
    ids, mask, tt = rt.encoder.pad_batch(enc, list(range(len(inputs))))
    got = rt.run_batch(ids, mask, tt)
    model = load_run(run)[0]
    with torch.no_grad():
        ref = model(*(torch.from_numpy(a) for a in (ids, mask, tt)), gates="route")
    rt.close()
    return {"max_len": limit, "max_abs_dlogit": float(np.abs(got.logits - ref.logits.numpy()).max()),
            "gate_disagreements": int((got.gates != ref.gates.numpy().astype(bool)).sum()),
            "gates_checked": int(got.gates.size), "tiny_export_s": round(seconds, 2)}


def _speed(arch: str, root: Path, repeats: int) -> dict:
    from hadskip.export import export_model
    from hadskip.runtime.bench import run_bench
    from hadskip.testing import tiny_run

    run = tiny_run(root / f"{arch}-small-run", arch, max_len=128, shape=SMALL, positions=514)
    t0 = time.perf_counter()
    export_model(run, root / f"{arch}-small", max_batch=8, progress=False)
    seconds = time.perf_counter() - t0
    k = SMALL[2] // 2
    report = run_bench(root / f"{arch}-small", batches=(8,), seqs=(128,), repeats=repeats, ks=[k])
    row = next(r for r in report.rows if r.engine == "forced" and r.k == k)
    return {"small_export_s": round(seconds, 2), "k": k, "num_layers": SMALL[2], "ratio_to_full": row.ratio_to_full,
            "ideal_ratio": row.ideal_ratio, "measured_over_ideal": round(row.ratio_to_full / row.ideal_ratio, 3),
            "full_source": report.full_source}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="bert,roberta,electra,distilbert")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.families.split(","):
            print(f"{arch} ...", file=sys.stderr)
            rows.append({"family": arch, **_parity(arch, Path(tmp)), **_speed(arch, Path(tmp), a.repeats)})
    if a.json:
        print(json.dumps({"rows": rows}))
        return 0
    print("| family | tiny max_len | max abs dlogit | gate disagreements | export s (tiny / small) | "
          "K=L/2 ratio to all-open | ideal | measured / ideal |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['max_len']} | {r['max_abs_dlogit']:.2e} | {r['gate_disagreements']} of "
              f"{r['gates_checked']} | {r['tiny_export_s']} / {r['small_export_s']} | {r['ratio_to_full']:.3f} | "
              f"{r['ideal_ratio']:.3f} | {r['measured_over_ideal']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
