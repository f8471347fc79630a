"""The int8 model dir against its fp32 graphs on the run's dev split: metric, gate agreement, max |dprob|, and
each row alone vs in batches (a row's answer must not depend on the rows that share its batch)."""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

from hadskip.export.calibration import load_split
from hadskip.export.int8_config import Int8Config, QuantizationWarning
from hadskip.export.spec import ExportError


def check_on_dev(int8_dir: Path, fp32_dir: Path, manifest, config: Int8Config, batch_size: int = 64) -> dict:
    """Run the int8 model dir and the same units with the fp32 layers (fp32_dir, from quantize_units) on the
    run's dev split: metric fp32 vs int8, share of rows whose gate decisions changed, max |delta prob|; and
    each row of the int8 model alone vs in its batch ("alone_vs_batched": an answer must not depend on the rows
    it shares a batch with). Warns (QuantizationWarning) past the config's tolerances, on any difference
    between alone and batched, or when no dev split could be loaded."""
    import numpy as np

    from hadskip.data.metrics import compute_metric
    from hadskip.runtime import Runtime
    from hadskip.runtime.manifest import write_manifest

    try:
        inputs, labels, of = load_split(manifest.task, config.split, config.max_examples, "the int8 check")
    except ExportError as exc:
        note = f"int8 not checked on a {config.split} split: {exc}"
        warnings.warn(note, QuantizationWarning, stacklevel=2)
        return {"split": None, "note": note}
    _link_shared_units(int8_dir, fp32_dir, manifest)
    write_manifest(fp32_dir, replace(manifest, precision="fp32", files={}, quantization={},
                                     units={**manifest.units, "baseline": None, "gate_form": "separate"}))
    out, full = {}, {}
    for name, d in (("fp32", fp32_dir), ("int8", int8_dir)):
        with Runtime.load(d, verify=False) as rt:
            out[name] = rt.predict(inputs, batch_size=batch_size, allow_empty=True)
            if name == "int8":
                alone = [rt.predict([x], batch_size=1, allow_empty=True) for x in inputs]
            rel = manifest.units["baseline"] if name == "int8" else "baseline/model.onnx"
            if manifest.units.get("baseline") and (d / rel).is_file():  # the full teacher (fp32: moved aside
                full[name] = _baseline_labels(rt, d / rel, inputs, batch_size)  # by quantize_units)
    a, b = out["fp32"], out["int8"]
    metric = manifest.task.get("metric", "accuracy")
    n_labels = len(manifest.labels)
    m32 = compute_metric(metric, a.label_ids, labels, n_labels)
    m8 = compute_metric(metric, b.label_ids, labels, n_labels)
    rows_changed = float((a.gates != b.gates).any(axis=1).mean())
    one = {k: np.concatenate([getattr(p, k) for p in alone]) for k in ("probabilities", "label_ids", "gates")}
    report = {
        "split": config.split, "examples": len(inputs), "of": of, "metric": metric,
        "fp32": round(float(m32), 6), "int8": round(float(m8), 6), "delta": round(float(m8 - m32), 6),
        "gate_rows_changed": round(rows_changed, 6),
        "gate_decisions_changed": round(float((a.gates != b.gates).mean()), 6),
        "predictions_changed": round(float((a.label_ids != b.label_ids).mean()), 6),
        "max_abs_dprob": float(np.abs(a.probabilities - b.probabilities).max()),
        "avg_layers": {"fp32": round(a.avg_layers, 4), "int8": round(b.avg_layers, 4)},
        "alone_vs_batched": {"batch_size": batch_size,
                             "max_abs_dprob": float(np.abs(one["probabilities"] - b.probabilities).max()),
                             "labels_changed": int((one["label_ids"] != b.label_ids).sum()),
                             "gate_rows_changed": int((one["gates"] != b.gates).any(axis=1).sum())},
    }
    if full:  # the baseline quantized alike: what int8 costs the model a user would deploy instead
        report["full"] = {k: round(float(compute_metric(metric, v, labels, n_labels)), 6) for k, v in full.items()}
    report["warnings"] = _judge(report, config)
    for w in report["warnings"]:
        warnings.warn(w, QuantizationWarning, stacklevel=2)
    return report


def _baseline_labels(rt, path: Path, inputs, batch_size: int):
    """Predicted label ids of the baseline graph at `path` on `inputs`, tokenized by the runtime's encoder."""
    import numpy as np

    from hadskip.runtime.backends.ort import open_session, session_options

    sess = open_session(path, session_options(), ["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    enc = rt.encode(inputs)
    preds = np.zeros(len(inputs), dtype=np.int64)
    for start in range(0, len(inputs), batch_size):
        rows = list(range(start, min(start + batch_size, len(inputs))))
        ids, mask, tt = rt.encoder.pad_batch(enc, rows)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}
        preds[rows] = sess.run(None, {k: v for k, v in feed.items() if k in names})[0].argmax(axis=1)
    return preds


def _judge(r: dict, config: Int8Config) -> list[str]:
    out = []
    if -r["delta"] > config.metric_tolerance:
        out.append(f"int8 loses {-r['delta'] * 100:.2f} points of {r['metric']} on {r['split']} "
                   f"({r['int8']:.4f} vs fp32 {r['fp32']:.4f}; tolerance {config.metric_tolerance * 100:.2f})")
    if r["gate_rows_changed"] > config.gate_tolerance:
        out.append(f"int8 changes the gate decisions of {r['gate_rows_changed']:.1%} of {r['split']} rows "
                   f"(tolerance {config.gate_tolerance:.1%}; avg layers {r['avg_layers']['fp32']:.2f} fp32 -> "
                   f"{r['avg_layers']['int8']:.2f} int8)")
    ab = r.get("alone_vs_batched")
    if ab and ab["max_abs_dprob"] > 0:
        out.append(f"int8 answers depend on the batch: {r['split']} rows alone vs in batches of {ab['batch_size']} "
                   f"differ by up to {ab['max_abs_dprob']:.3g} in probability ({ab['labels_changed']} labels, "
                   f"{ab['gate_rows_changed']} gate rows changed)")
    return out


def _link_shared_units(int8_dir: Path, fp32_dir: Path, manifest) -> None:
    """fp32_dir holds the fp32 layers; the units int8 and fp32 share (embeddings, gates, head, tokenizer) are
    hard links (or copies) of the int8 dir's files."""
    u = manifest.units
    for rel in [u["embeddings"], u["head"], u["tokenizer"], *u["gates"]]:
        dst = fp32_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        link_file(int8_dir / rel, dst)


def link_file(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
