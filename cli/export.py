"""`hadskip export RUN --out DIR`: a trained run dir -> a model dir for the runtime (hadskip.export.export_model)."""

from __future__ import annotations

import json
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from hadskip.errors import HadSkipError


class Engine(str, Enum):
    onnx = "onnx"
    trt = "trt"


class Quantize(str, Enum):
    int8 = "int8"


def export(
    run: Annotated[Path, typer.Argument(help="Run dir written by `hadskip train` (model.safetensors, run.json).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model dir to write (replaced if it is one already).")],
    engine: Annotated[Engine, typer.Option(help="onnx: graphs only; trt: also a TensorRT plan per unit (GPU).")
                      ] = Engine.onnx,
    optimize: Annotated[bool, typer.Option("--optimize", help="Fuse the layer graphs with onnxruntime's BERT "
                                           "fusions (Attention, SkipLayerNorm, BiasGelu).")] = False,
    with_baseline: Annotated[bool, typer.Option("--with-baseline", help="Also export the full teacher through "
                                                "optimum-onnx into DIR/baseline/ (for benchmarks).")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="fp16 graphs / plans; gates, LayerNorm and softmax stay "
                                       "fp32.")] = False,
    fuse_gates: Annotated[bool, typer.Option("--fuse-gates", help="Also compute the gates inside the graph "
                                             "before them (one call per layer run, none per gate, on ort-cpu); "
                                             "the separate gate graphs stay for the other backends.")] = False,
    quantize: Annotated[Optional[Quantize], typer.Option(help="int8: int8 layer graphs (and baseline) for CPUs, "
                         "static scales calibrated on the run's train texts; gates, LayerNorm, embeddings and head "
                         "stay fp32. Checked on the run's dev split against fp32 and each row alone vs batched (a "
                         "warning line past 0.5 point, 1% of rows with changed gates, or any batch dependence).")
                         ] = None,
    int8_all: Annotated[bool, typer.Option("--int8-all", help="With --quantize int8: also quantize each FFN output "
                                           "projection (kept fp32 by default: faster, and less accurate; "
                                           "docs/cpu.md).")] = False,
    label_names: Annotated[Optional[str], typer.Option(
        "--label-names", help="Names of the labels, label 0 first, comma-separated (e.g. negative,positive): one "
        "per label, unique, non-empty. Default: the task's names, else a fine-tuned classifier's id2label, else "
        "0, 1, ...")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17: LayerNorm as one op).")] = 17,
    max_batch: Annotated[int, typer.Option(help="Largest batch of the TensorRT profile and of validation.")] = 64,
    no_validate: Annotated[bool, typer.Option("--no-validate", help="Skip the check of every unit against "
                                              "PyTorch (not recommended).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (out dir, seconds, bytes, "
                                          "per-unit max abs diff, fused ops).")] = False,
) -> None:
    """Export every unit (embeddings, gates, layers, head) as its own graph, validated against PyTorch."""
    from hadskip.export import export_model
    from hadskip.export.install import CleanupNote
    from hadskip.export.quantize import Int8Config, QuantizationWarning, layer_summary

    if int8_all and quantize is None:
        raise HadSkipError("--int8-all goes with --quantize int8")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QuantizationWarning)
        warnings.simplefilter("always", CleanupNote)
        report = export_model(run, out, engine=engine.value, opset=opset, optimize=optimize,
                              with_baseline=with_baseline, fp16=fp16, max_batch=max_batch,
                              validate=not no_validate, progress=True,
                              quantize=quantize.value if quantize else None, fuse_gates=fuse_gates,
                              int8=Int8Config(keep_fp32=()) if int8_all else None, label_names=label_names)
    for w in caught:  # int8 accuracy notes as one `warning:` line each; anything else as Python shows it
        if issubclass(w.category, QuantizationWarning):
            typer.echo(f"warning: {w.message}", err=True)
        elif issubclass(w.category, CleanupNote):
            typer.echo(f"note: {w.message}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    diffs = [d for d in report.validation.values() if d is not None]
    worst = f"max abs diff vs PyTorch {max(diffs):.2g}" if diffs else "not validated"
    fused: dict[str, int] = {}
    for u in report.units:
        for op, n in u.fused_ops.items():
            fused[op] = fused.get(op, 0) + n
    fused_text = ", fused " + ", ".join(f"{op} x{n}" for op, n in sorted(fused.items())) if fused else ""
    typer.echo(f"exported {run} -> {report.out_dir} ({report.engine}, {report.precision}, "
               f"{len(report.units)} units, {report.total_bytes / 1e6:.1f} MB) in {report.seconds:.1f} s; "
               f"{worst}{fused_text}")
    layers = layer_summary(report.quantization)  # the line above is the fp32 export's
    if layers:
        typer.echo(layers)
    dev = (report.quantization or {}).get("dev") or {}
    if dev.get("split"):
        full = f"; full model {dev['full']['int8']:.4f} vs {dev['full']['fp32']:.4f}" if dev.get("full") else ""
        typer.echo(f"int8 vs fp32 on {dev['split']} ({dev['examples']} rows): {dev['metric']} {dev['int8']:.4f} vs "
                   f"{dev['fp32']:.4f}, gate decisions changed in {dev['gate_rows_changed']:.2%} of rows, "
                   f"max |delta prob| {dev['max_abs_dprob']:.3g}{full}")
        ab = dev.get("alone_vs_batched")
        if ab:
            typer.echo(f"int8 each row alone vs in batches of {ab['batch_size']}: max |delta prob| "
                       f"{ab['max_abs_dprob']:.3g}, {ab['labels_changed']} labels and {ab['gate_rows_changed']} "
                       "gate rows changed")

