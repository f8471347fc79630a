"""One export spec per unit, and its validation against PyTorch (typed errors carrying the max abs diff).

A spec says everything needed to export and check one graph: the module, io names, dynamic axes, opset,
tolerance, and how to draw example inputs of a given (batch, seq). Validation runs the written graph in
onnxruntime (CPU) on several random padded batches, including shapes other than the export dummy, and
compares every output element with the PyTorch module's by numpy.allclose's rule,

    |graph - torch| <= atol + rtol * |torch|        elementwise,

so units with large outputs (head logits ~50 in fp16, gate logits ~1e3) are held to their precision, not to
an absolute number. Gate graphs are also checked by their decisions (open = logit 1 > logit 0): they must
agree with PyTorch on every row whose PyTorch margin |l1 - l0| exceeds the tie margin
atol + rtol * (|l0| + |l1|) (within it, float noise may decide either way). That follows from the
elementwise rule; it is checked first so that the message names a flipped decision, the error that matters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hadskip.errors import HadSkipError

FP32_ATOL, FP32_RTOL = 1e-4, 1e-5  # rtol: numpy's default; fp32 rounding over a layer is ~1e-6 relative
FP16_ATOL, FP16_RTOL = 2e-2, 5e-3  # fp16 graphs (LayerNorm, softmax fp32) vs the fp32 module; fp16 eps ~1e-3
TOLERANCES = {"fp32": (FP32_ATOL, FP32_RTOL), "fp16": (FP16_ATOL, FP16_RTOL)}  # precision -> (atol, rtol)
RULE = ("|graph - torch| <= atol + rtol * |torch| elementwise; gate decisions (l1 > l0) agree wherever the "
        "torch margin |l1 - l0| > atol + rtol * (|l0| + |l1|)")


class ExportError(HadSkipError):
    """An export that could not be completed; nothing was left behind unless the message says so."""


class ValidationError(ExportError):
    """A unit's exported output differs from PyTorch by more than atol + rtol * |PyTorch| somewhere."""

    def __init__(self, unit: str, max_abs_diff: float, atol: float, shape: tuple[int, int], rtol: float = 0.0,
                 detail: str = ""):
        self.unit, self.max_abs_diff, self.atol, self.rtol, self.shape = \
            unit, float(max_abs_diff), float(atol), float(rtol), shape
        super().__init__(f"export of {unit} failed validation: max abs diff vs PyTorch {max_abs_diff:.3g} "
                         f"exceeds atol {atol:g} + rtol {rtol:g} x |PyTorch|{f' ({detail})' if detail else ''} "
                         f"(batch {shape[0]}, seq {shape[1]})")


class GateDecisionError(ValidationError):
    """A gate graph opens or skips a layer where PyTorch does the opposite, away from the tie."""

    def __init__(self, unit: str, rows: int, margin: float, max_abs_diff: float, atol: float, rtol: float,
                 shape: tuple[int, int]):
        self.rows, self.margin = int(rows), float(margin)
        ExportError.__init__(self, f"export of {unit} failed validation: gate decisions differ from PyTorch on "
                                   f"{rows} row(s) whose PyTorch margin |l1 - l0| (up to {margin:.3g}) is beyond "
                                   f"the tie margin atol {atol:g} + rtol {rtol:g} x (|l0| + |l1|) "
                                   f"(batch {shape[0]}, seq {shape[1]})")
        self.unit, self.max_abs_diff, self.atol, self.rtol, self.shape = \
            unit, float(max_abs_diff), float(atol), float(rtol), shape


class ShapeError(ExportError):
    """A unit's exported output has another shape (or output count) than the PyTorch module's."""

    def __init__(self, unit: str, expected: tuple, got: tuple):
        self.unit, self.expected, self.got = unit, tuple(expected), tuple(got)
        super().__init__(f"export of {unit} failed validation: output shape {self.got} != PyTorch {self.expected}")


@dataclass
class ExportSpec:
    """One unit to export: `module(*sample(batch, seq, generator))` is the reference for the graph."""

    name: str  # "embeddings", "layer_00", "gate_00", "head"
    kind: str  # key of runtime.manifest.IO: "embeddings" | "layer" | "gate" | "head" | "exit"
    path: str  # relative to the model dir, e.g. "layers/00.onnx"
    module: Any  # torch.nn.Module in eval mode: the PyTorch reference
    inputs: list[str]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    sample: Callable[..., tuple]  # (batch, seq, torch.Generator) -> example inputs, a tuple of tensors
    export_module: Any = None  # what torch.onnx.export traces, when it differs from `module` (same function)
    opset: int = 17
    atol: float = FP32_ATOL
    rtol: float = FP32_RTOL
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


def check_close(unit: str, got, ref, atol: float, rtol: float, shape: tuple[int, int], gate: bool = False) -> float:
    """Max abs diff of `got` vs the reference `ref` (numpy arrays of one shape) under the module's rule; raises
    ValidationError (GateDecisionError for a flipped gate, `gate=True`: logits (..., 2)) when it is broken."""
    import numpy as np

    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        raise ShapeError(unit, ref.shape, got.shape)
    if ref.size == 0:
        return 0.0
    diff = np.abs(got - ref)
    if not np.isfinite(diff).all():
        raise ValidationError(unit, float("inf"), atol, shape, rtol, "the graph gives inf or NaN")
    if gate:
        m_ref, m_got = ref[..., 1] - ref[..., 0], got[..., 1] - got[..., 0]
        tie = atol + rtol * (np.abs(ref[..., 0]) + np.abs(ref[..., 1]))
        flipped = ((m_ref > 0) != (m_got > 0)) & (np.abs(m_ref) > tie)
        if flipped.any():
            raise GateDecisionError(unit, int(flipped.sum()), float(np.abs(m_ref[flipped]).max()),
                                    float(diff.max()), atol, rtol, shape)
    bound = atol + rtol * np.abs(ref)
    if (diff > bound).any():
        k = np.unravel_index(int(np.argmax(diff - bound)), diff.shape)
        raise ValidationError(unit, float(diff.max()), atol, shape, rtol,
                              f"worst element: |diff| {diff[k]:.3g} > {bound[k]:.3g} at |PyTorch| {abs(ref[k]):.3g}")
    return float(diff.max())


def validate(spec: ExportSpec, path: str | Path, cases: list[tuple[int, int]], seed: int = 0,
             atol: float | None = None, rtol: float | None = None) -> float:
    """Max abs diff of the graph at `path` vs `spec.module` over `cases` of (batch, seq); raises on mismatch."""
    import torch

    atol = spec.atol if atol is None else atol
    rtol = spec.rtol if rtol is None else rtol
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
            worst = max(worst, check_close(spec.name, o, r.detach().float().cpu().numpy(), atol, rtol,
                                           (batch, seq), gate=spec.kind == "gate"))
    return worst


def settle(spec: ExportSpec, candidates: list[tuple[str, Path, dict]], cases, validate_: bool):
    """The first candidate graph (fused first, unfused last) that passes validation, converted to fp16 when
    the spec says so: (label, path, max abs diff, fused op counts, why a fused one was not kept)."""
    from hadskip.export import optimize as opt

    note = ""
    for label, path, stats in candidates:
        if spec.fp16:
            half = path.with_suffix(".fp16.onnx")
            opt.to_fp16(path, half)
            path = half
        try:
            diff = validate(spec, path, cases) if validate_ else None
        except (ValidationError, ShapeError, ExportError) as exc:
            if label == "none":
                raise
            note = f"fused graph not kept: {exc}"
            continue
        return label, path, diff, stats, note
    raise AssertionError("the unfused candidate comes last and either passes or raises")
