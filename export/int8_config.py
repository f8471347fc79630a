"""The int8 export's settings and facts, shared by the quantizer (export/quantize.py), its calibration
(export/calibration.py) and its dev-split check (export/int8_check.py); imports nothing else of the export."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field, replace

from hadskip.export.spec import ExportError

QUANTIZE_CHOICES = ("int8",)
METHODS = ("static", "dynamic")
CALIBRATIONS = ("minmax", "percentile", "entropy")
TOOLS = {"static": "onnxruntime.quantization.quantize_static", "dynamic": "onnxruntime.quantization.quantize_dynamic"}
TOOL = TOOLS["static"]
INT8_OPS = ("MatMulInteger", "QAttention", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QGemm",
            "QuantizeLinear", "QLinearMatMul")
BASELINE_INT8 = "baseline/model_quantized.onnx"  # optimum's name for a quantized model.onnx
KEPT_FP32 = ["embeddings", "gates", "head", "LayerNormalization", "Softmax", "attention score MatMuls"]


class QuantizationWarning(UserWarning):
    """The int8 model moved away from fp32 on dev by more than the stated tolerance (or was not checked)."""


@dataclass(frozen=True)
class Int8Config:
    """int8 settings and the tolerances the dev-split check warns past."""

    method: str = "static"  # "static": calibrated constant activation scales; "dynamic": per call (batch-dependent)
    calibration: str = "minmax"  # static: "minmax" | "percentile" | "entropy" (onnxruntime's CalibrationMethod)
    calibration_split: str = "train"
    calibration_rows: int = 256  # texts of calibration_split (a fixed random subset when the split is larger)
    percentile: float = 99.999  # calibration "percentile": the share of |values| the range keeps
    per_channel: bool = True  # one weight scale per output channel (more accurate than one per tensor)
    reduce_range: bool | None = None  # 7-bit weights; None: on for x86 CPUs without VNNI (see the docstring)
    weight_type: str = "int8"  # "int8" (u8 x s8 kernels) | "uint8" (u8 x u8)
    op_types: tuple[str, ...] = ("MatMul", "Attention")  # Attention: dynamic only (QAttention)
    metric_tolerance: float = 0.005  # a dev metric drop larger than this (0.5 point) is reported
    gate_tolerance: float = 0.01  # a share of dev rows with any changed gate decision larger than this
    split: str = "dev"
    max_examples: int | None = 5000  # a larger split is checked on a fixed random subset of this many rows
    layer_check_rows: int = 128  # dev rows whose hidden states compare each int8 layer with its fp32 graph
    keep_fp32: tuple[str, ...] = ("ffn_out",)  # static: keep each FFN output projection fp32 (its input, after
    # GELU, is long-tailed: one constant scale cost 2.6 dev points on MiniLM-L6 + RT, fp32 there cost 0.6; docs/cpu.md)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ExportError(f"int8 method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if set(self.keep_fp32) - {"ffn_out"}:
            raise ExportError(f"int8 keep_fp32 takes 'ffn_out' only, got {list(self.keep_fp32)}")
        if self.calibration not in CALIBRATIONS:
            raise ExportError(f"int8 calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")
        if self.calibration_rows < 1 or self.layer_check_rows < 1:
            raise ExportError("int8 calibration_rows and layer_check_rows must be >= 1")
        if not 50 < self.percentile <= 100:
            raise ExportError(f"int8 percentile must be within (50, 100], got {self.percentile}")
        if self.weight_type not in ("int8", "uint8"):
            raise ExportError(f"int8 weight_type must be int8 or uint8, got {self.weight_type!r}")
        if self.metric_tolerance < 0 or not 0 <= self.gate_tolerance <= 1:
            raise ExportError("int8 tolerances must be >= 0 (gate_tolerance a share within 0..1)")
        if self.max_examples is not None and self.max_examples < 1:
            raise ExportError(f"int8 max_examples must be >= 1 or None, got {self.max_examples}")

    def resolved(self) -> Int8Config:
        return self if self.reduce_range is not None else replace(self, reduce_range=not cpu_has_vnni())


@dataclass
class TextSetup:
    """What tokenizing the run's texts for the model dir being built needs (export_model knows it)."""

    task: dict
    max_seq_len: int
    pad_token_id: int
    token_types: bool
    num_layers: int
    rows: dict = field(default_factory=dict)  # filled: {split: (rows used, rows in the split)}


def check_request(quantize: str | None, *, fp16: bool, engine: str) -> None:
    """Refuse combinations that make no model: int8 is for onnxruntime on CPUs, in fp32 graphs."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_CHOICES:
        raise ExportError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {quantize!r}")
    if fp16:
        raise ExportError("--quantize int8 and --fp16 exclude each other (int8 is for CPUs, fp16 for GPUs)")
    if engine != "onnx":
        raise ExportError("--quantize int8 needs --engine onnx (TensorRT builds from fp32 graphs)")


def cpu_has_vnni() -> bool:
    """True where the u8 x s8 kernels cannot saturate: x86 with AVX512-VNNI / AVX-VNNI, or ARM (sdot)."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return True
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags



def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
