"""hadskip.runtime: run an exported model dir with per-row layer skipping, without torch.

    from hadskip.runtime import Runtime
    rt = Runtime.load("model-dir")                 # backend="ort-cpu" | "ort-cuda" | "trt" | "torch"
    preds = rt.predict(["a fine movie", ("premise", "hypothesis")])
    preds[0].label, preds[0].probs, preds[0].layers  # layers: indices (0-based) of the layers that ran

Importing this package loads numpy, onnxruntime and tokenizers only; tensorrt, torch and the CUDA runtime
are imported by their backends when chosen.
"""

from hadskip.runtime.backends import BACKENDS
from hadskip.runtime.core import Prediction, Predictions, Runtime
from hadskip.runtime.router import BatchResult

__all__ = ["BACKENDS", "BatchResult", "Prediction", "Predictions", "Runtime"]
