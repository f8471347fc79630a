"""Graph rewrites after export: onnxruntime's BERT fusions for the layer graphs, and fp16 conversion.

Fusion (`optimize=True`) uses onnxruntime.transformers.optimizer with model_type "bert" and the real
num_heads / hidden_size (head sizes such as 26 are fine). The fused graphs use com.microsoft contrib ops
(Attention, SkipLayerNormalization, BiasGelu) that only onnxruntime runs, so TensorRT engines are built
from the unfused graphs. fp16 keeps the graph io in fp32 (the runtime loop never changes dtypes) and
LayerNorm / softmax in fp32 (TensorRT issues 2781 / 2564 describe the fp16 LN overflow).
Quantisation lives in hadskip.export.quantize.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "Gelu", "FastGelu",
             "EmbedLayerNormalization", "LayerNormalization")
FP32_OPS = ["LayerNormalization", "Softmax"]  # fused SkipLayerNormalization accumulates in fp32 itself


def fuse_bert_layer(src: str | Path, dst: str | Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Write the fused graph of `src` to `dst`; returns {fused op: count} (zeros left out)."""
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet_ort_transformers():
        # opt_level 0: only the Python fusions; onnxruntime applies its own graph optimisations at load
        opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                             opt_level=0)
        stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v and k in FUSED_OPS}
        opt.save_model_to_file(str(dst))
    return stats


@contextlib.contextmanager
def _quiet_ort_transformers():
    """Silence the fusion notes of onnxruntime.transformers below ERROR while optimising.

    Its modules import each other as top-level names (fusion_attention, onnx_model_bert, ...) through a
    sys.path entry, so their loggers are named after those modules: find them by file location.
    """
    import onnxruntime.transformers as pkg

    root = str(Path(pkg.__file__).parent)
    names = {name for name, mod in list(sys.modules.items())
             if str(getattr(mod, "__file__", "") or "").startswith(root)}
    loggers = [logging.getLogger(n) for n in names | {"onnxruntime.transformers"}]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def to_fp16(src: str | Path, dst: str | Path) -> None:
    """fp16 weights and compute with fp32 io; LayerNorm and softmax kept fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=FP32_OPS)
    onnx.save(model, str(dst))



def op_counts(path: str | Path) -> dict[str, int]:
    """Node count per op type of an ONNX graph (export/trt.py checks how many ops an fp16 copy keeps in fp32)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
