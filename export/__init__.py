"""hadskip.export: a trained run dir -> a model dir of per-unit graphs the torch-free runtime loads.

    export_model(run_dir, out_dir, engine="onnx"|"trt", ...) -> ExportReport

Modules: api (the orchestration), install (the --out rule, the swap into place, cleanup on signals), spec
(ExportSpec, validation with a relative + absolute tolerance, typed errors), units (the GatedEncoder's units as
specs, TorchScript ONNX export), optimize (onnxruntime fusions, fp16), tokenizer, baseline (the full model
through optimum-onnx: the run's teacher when it is recorded and present), trt (TensorRT plans), progress,
quantize (int8 for CPUs and its check on the dev split), fuse_gates (the gates inside the graph before them).
Importing this package is light: torch, onnx and tensorrt are imported inside the functions that need them.
"""

from hadskip.export.api import ExportReport, UnitReport, export_model
from hadskip.export.spec import ExportError, ExportSpec, ShapeError, ValidationError

__all__ = ["ExportError", "ExportReport", "ExportSpec", "ShapeError", "UnitReport", "ValidationError",
           "export_model"]
