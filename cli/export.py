"""`hadskip export RUN --out DIR`: a trained run dir -> a model dir for the runtime (hadskip.export.export_model)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class Engine(str, Enum):
    onnx = "onnx"
    trt = "trt"


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
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17: LayerNorm as one op).")] = 17,
    max_batch: Annotated[int, typer.Option(help="Largest batch of the TensorRT profile and of validation.")] = 64,
    no_validate: Annotated[bool, typer.Option("--no-validate", help="Skip the check of every unit against "
                                              "PyTorch (not recommended).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (out dir, seconds, bytes, "
                                          "per-unit max abs diff, fused ops).")] = False,
) -> None:
    """Export every unit (embeddings, gates, layers, head) as its own graph, validated against PyTorch."""
    from hadskip.export import export_model

    report = export_model(run, out, engine=engine.value, opset=opset, optimize=optimize,
                          with_baseline=with_baseline, fp16=fp16, max_batch=max_batch, validate=not no_validate,
                          progress=True)
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
