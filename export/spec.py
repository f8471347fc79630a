"""One export spec per unit, and its validation against PyTorch (typed errors carrying the max abs diff).

A spec says everything needed to export and check one graph: the module, io names, dynamic axes, opset,
tolerance, and how to draw example inputs of a given (batch, seq). Validation runs the written graph in
onnxruntime (CPU) on several random padded batches, including shapes other than the export dummy, and
compares every output element with the PyTorch module's. Not included: relative tolerances (the units
end in LayerNorm or small logits, so one absolute tolerance fits all of them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hadskip.errors import HadSkipError

FP32_ATOL = 1e-4
FP16_ATOL = 2e-2  # fp16 graphs (LayerNorm and softmax kept fp32) against the fp32 PyTorch module


class ExportError(HadSkipError):
    """An export that could not be completed; nothing was left behind unless the message says so."""


class ValidationError(ExportError):
    """A unit's exported output differs from PyTorch by more than its tolerance."""

    def __init__(self, unit: str, max_abs_diff: float, atol: float, shape: tuple[int, int]):
        self.unit, self.max_abs_diff, self.atol, self.shape = unit, float(max_abs_diff), float(atol), shape
        super().__init__(f"export of {unit} failed validation: max abs diff vs PyTorch {max_abs_diff:.3g} > "
                         f"atol {atol:g} (batch {shape[0]}, seq {shape[1]})")


class ShapeError(ExportError):
    """A unit's exported output has another shape (or output count) than the PyTorch module's."""

    def __init__(self, unit: str, expected: tuple, got: tuple):
        self.unit, self.expected, self.got = unit, tuple(expected), tuple(got)
        super().__init__(f"export of {unit} failed validation: output shape {self.got} != PyTorch {self.expected}")


@dataclass
class ExportSpec:
    """One unit to export: `module(*sample(batch, seq, generator))` is the reference for the graph."""

    name: str  # "embeddings", "layer_00", "gate_00", "head"
    kind: str  # key of runtime.manifest.IO: "embeddings" | "layer" | "gate" | "head"
    path: str  # relative to the model dir, e.g. "layers/00.onnx"
    module: Any  # torch.nn.Module in eval mode: the PyTorch reference
    inputs: list[str]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    sample: Callable[..., tuple]  # (batch, seq, torch.Generator) -> example inputs, a tuple of tensors
    export_module: Any = None  # what torch.onnx.export traces, when it differs from `module` (same function)
    opset: int = 17
    atol: float = FP32_ATOL
    fp16: bool = False  # convert the graph to fp16 after export (io stays fp32)
    meta: dict = field(default_factory=dict)


def ort_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception classes (they derive from Exception directly, not RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))


def ort_session(path: str | Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_session(session, names: list[str], args: tuple) -> list:
    """Feed the inputs the graph declares (an unused input, e.g. the embeddings' mask, may be absent)."""
    wanted = {i.name for i in session.get_inputs()}
    feed = {n: a.detach().cpu().numpy() for n, a in zip(names, args, strict=True) if n in wanted}
    return session.run(None, feed)


def validate(spec: ExportSpec, path: str | Path, cases: list[tuple[int, int]], seed: int = 0,
             atol: float | None = None) -> float:
    """Max abs diff of the graph at `path` vs `spec.module` over `cases` of (batch, seq); raises on mismatch."""
    import numpy as np
    import torch

    atol = spec.atol if atol is None else atol
    try:
        session = ort_session(path)
    except ort_errors() as exc:
        raise ExportError(f"export of {spec.name} failed: onnxruntime cannot load {Path(path).name}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch, seq in cases:
        args = spec.sample(batch, seq, g)
        with torch.no_grad():
            ref = spec.module(*args)
        refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        try:
            got = run_session(session, spec.inputs, args)
        except ort_errors() as exc:
            raise ExportError(f"export of {spec.name} failed: onnxruntime cannot run it at batch {batch}, "
                              f"seq {seq}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        if len(got) != len(refs):
            raise ShapeError(spec.name, (len(refs),), (len(got),))
        for r, o in zip(refs, got, strict=True):
            r = r.detach().float().cpu().numpy()
            if tuple(o.shape) != tuple(r.shape):
                raise ShapeError(spec.name, r.shape, o.shape)
            diff = float(np.max(np.abs(o.astype(np.float32) - r))) if r.size else 0.0
            if not np.isfinite(diff) or diff > atol:
                raise ValidationError(spec.name, diff if np.isfinite(diff) else float("inf"), atol, (batch, seq))
            worst = max(worst, diff)
    return worst
