"""INT8 for CPUs: the layer graphs (and the optimum baseline) quantized with calibrated, static activation
scales, and the check of the int8 model against its fp32 graphs on the run's dev split.

    quantize_units(tmp, scratch, specs, baseline, cases, config, validate, calib)  -> the "quantization" section
    check_on_dev(int8_dir, fp32_dir, manifest, config)                                -> metric fp32 vs int8, gate
                                                                                         agreement, each row alone
                                                                                         vs batched

Why static: with dynamic quantization (onnxruntime's quantize_dynamic, the method before) every call computes
its activation scales over the whole batch, so a row's answer depended on which rows shared its batch (under
serve-local's micro-batching labels and routes flipped). Static scales are constants of the graph: every
element is quantized on its own, int8 products are summed exactly, so a row's answer is the same alone and in
any batch (fp32 graphs are already bitwise independent of the batch and of its padding length).

Tool: onnxruntime.quantization.quantize_static, QDQ format (QuantizeLinear/DequantizeLinear pairs that
onnxruntime's CPU provider fuses into integer kernels at load). Weights int8 per output channel, activations
uint8. Calibration: `calibration_rows` texts of the run's train split (a fixed
random subset) are tokenized with the model dir's tokenizer and run through the fp32 units by the runtime's own
routing loop (hadskip.runtime.router.route) twice, once routed (the run's gates, offset 0) and once with every
gate open (the path of low-offset budgets), and each layer graph is calibrated on exactly the hidden states and
masks that reached it. MinMax ranges by default (see Int8Config.calibration). Quantized: the weight MatMuls of
every layer, from the unfused graph (the QDQ quantizer has no rule for --optimize's fused Attention op, which
would keep the QKV projection fp32; onnxruntime fuses the QDQ graph at load). Activations uint8 x weights int8:
int8 x int8 QDQ ran 2x slower on x86 (not fused into integer kernels). Kept fp32: LayerNorm, softmax, GELU,
the attention score MatMuls (activation x activation), the embeddings, the head and
every gate, so the decisions that route a row see fp32 logits computed from int8 layer outputs. The baseline
(the full teacher from optimum-onnx) is quantized alike, calibrated on the same texts as whole-model inputs,
so `hadskip bench` compares like with like.

Int8Config(method="dynamic") keeps the old per-call method reachable (for comparisons; its answers depend on
the batch, and the export's check says so). reduce_range (7-bit weights) is on by default on x86 CPUs without
VNNI, where u8 x s8 kernels can saturate (https://onnxruntime.ai/docs/performance/model-optimizations/
quantization.html#when-and-why-do-i-need-to-try-u8u8). Not included: int8 for TensorRT or CUDA.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from hadskip.export.calibration import calibrate, layer_check
from hadskip.export.int8_config import (  # noqa: F401 - the int8 API, importable from here
    BASELINE_INT8, CALIBRATIONS, INT8_OPS, KEPT_FP32, METHODS, QUANTIZE_CHOICES, TOOL, TOOLS, Int8Config,
    QuantizationWarning, TextSetup, check_request, cpu_has_vnni, first_line)
from hadskip.export.int8_check import link_file, check_on_dev  # noqa: F401
from hadskip.export.spec import ExportError

@contextlib.contextmanager
def _quiet_quantizer():
    """The quantizers log a pre-processing hint on the root logger for every graph, and the histogram
    calibrators print their progress: keep stderr clean and stdout for the command's own output (--json)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _activation_matmuls(path: str | Path) -> list[str]:
    """Names of the MatMul nodes whose inputs are both activations (attention scores): kept fp32."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in g.node if n.op_type == "MatMul" and not any(x in consts for x in n.input)]


def _ffn_out_matmuls(path: str | Path) -> list[str]:
    """Names of the MatMuls that project the feed-forward's wide activation back to the hidden size (weight
    (I, H) with I > H): the activation after GELU is long-tailed, the hardest to quantize with one scale."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path), load_external_data=False).graph
    shapes = {i.name: numpy_helper.to_array(i).shape for i in g.initializer}
    return [n.name for n in g.node if n.op_type == "MatMul" and any(
        len(shapes.get(x, ())) == 2 and shapes[x][0] > shapes[x][1] for x in n.input)]


def int8_ops(path: str | Path) -> dict[str, int]:
    import onnx

    ops = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {op: int(ops[op]) for op in INT8_OPS if ops[op]}


def quantize_graph(src: str | Path, dst: str | Path, config: Int8Config, feeds: list[dict] | None = None
                   ) -> dict[str, int]:
    """Write the int8 graph of `src` to `dst`: static (calibrated on `feeds`, a list of input dicts) or dynamic,
    by config.method; returns {int8 op: count}. Raises ExportError when nothing was quantized."""
    import onnx

    try:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_dynamic, quantize_static)
    except ImportError as exc:  # pragma: no cover - onnxruntime always ships it
        raise ExportError("onnxruntime.quantization is missing: pip install 'hadskip[export]'") from exc
    config = config.resolved()
    weight_type = QuantType.QInt8 if config.weight_type == "int8" else QuantType.QUInt8
    # shape inference cannot type com.microsoft ops (fused graphs): their outputs are float
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    with _quiet_quantizer():
        if config.method == "dynamic":
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(config.op_types),
                             per_channel=config.per_channel, reduce_range=bool(config.reduce_range),
                             weight_type=weight_type, extra_options=extra)
        else:
            if not feeds:
                raise ExportError(f"static int8 of {Path(src).name} has no calibration data")

            rows = feeds if config.calibration == "minmax" else _same_shape(feeds)

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter(rows)

                def get_next(self):
                    return next(self.it, None)

                def rewind(self):
                    self.it = iter(rows)

            method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                      "entropy": CalibrationMethod.Entropy}[config.calibration]
            extra.update(CalibPercentile=config.percentile)
            from onnxruntime.quantization.shape_inference import quant_pre_process

            typed = Path(src).with_suffix(".typed.onnx")  # symbolic shape inference types the com.microsoft
            try:  # ops' outputs (--optimize graphs); without it their MatMuls are silently left fp32
                ms = any(n.domain == "com.microsoft" for n in onnx.load(str(src), load_external_data=False).graph.node)
                quant_pre_process(str(src), str(typed), skip_optimization=True, skip_symbolic_shape=not ms)
                quantize_static(str(typed), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=["MatMul"], per_channel=config.per_channel,
                                reduce_range=bool(config.reduce_range), weight_type=weight_type,
                                activation_type=QuantType.QUInt8,  # u8 x s8: x86's fast path (s8 x s8 QDQ
                                # ran 2x slower than u8 here: it is not fused into integer kernels)
                                nodes_to_exclude=_activation_matmuls(src) + (
                                    _ffn_out_matmuls(src) if "ffn_out" in config.keep_fp32 else []),
                                calibrate_method=method,
                                extra_options=extra)
            except Exception as exc:  # noqa: BLE001 - shape inference raises a bare Exception
                raise ExportError(f"static int8 of {Path(src).name} failed: {first_line(exc)}") from exc
            finally:
                typed.unlink(missing_ok=True)
    found = int8_ops(dst)
    if not found:
        raise ExportError(f"quantizing {Path(src).name} changed no op to int8")
    return found


def _same_shape(feeds: list[dict]) -> list[dict]:
    """The calibration batches as one-row feeds padded to the longest sequence: onnxruntime's histogram
    calibrators (percentile, entropy) stack every batch's tensors, so all must have one shape. Padded positions
    are masked (attention_mask 0), as in any padded batch the runtime runs."""
    import numpy as np

    t = max(a.shape[1] for f in feeds for a in f.values())
    out = []
    for f in feeds:
        for i in range(len(next(iter(f.values())))):
            out.append({k: np.pad(a[i:i + 1], [(0, 0), (0, t - a.shape[1])] + [(0, 0)] * (a.ndim - 2))
                        for k, a in f.items()})
    return out


def quantize_units(tmp: Path, scratch: Path, specs, baseline: dict | None, cases, config: Int8Config,
                   validate: bool = True, setup: TextSetup | None = None) -> dict:
    """Quantize the layer graphs in the model dir being built (`tmp`) in place, and its baseline into
    BASELINE_INT8; the fp32 originals move to scratch/fp32/ (the reference of check_on_dev).

    Static (config.method): calibrated on the run's texts (setup) through the fp32 units. With `validate`, each
    int8 layer is compared with its fp32 graph on the hidden states of dev rows (relative RMS error and max abs
    diff recorded; only a non-finite output fails: int8 is judged end to end by check_on_dev). `baseline`
    (export_model's dict) is updated to name the int8 graph. Returns the manifest's "quantization" section
    (without "dev")."""
    config = config.resolved()
    if setup is None and (config.method == "static" or validate):
        raise ExportError("int8 needs the run's task to calibrate on and to check against (no TextSetup given)")
    ref = scratch / "fp32"
    rec, calibration = calibrate(tmp, specs, setup, config) if config.method == "static" else (None, None)
    units: dict[str, dict] = {}
    fp32_bytes = int8_bytes = 0
    layers = [s for s in specs if s.kind == "layer"]
    for i, spec in enumerate(layers):
        src, dst = ref / spec.path, tmp / spec.path
        src.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(dst, src)
        units[spec.name] = {"ops": quantize_graph(_source(scratch, spec.path, src, config), dst, config,
                                                  rec.seen[i] if rec else None)}
        if rec:
            rec.seen[i] = []  # free the calibration inputs as soon as they are used
        fp32_bytes += src.stat().st_size
        int8_bytes += dst.stat().st_size
    if validate:
        fp32_view = scratch / "fp32-view"  # the fp32 layers with the shared units, for the dev hidden states
        for spec in specs:
            target = fp32_view / spec.path
            target.parent.mkdir(parents=True, exist_ok=True)
            source = ref / spec.path if spec.kind == "layer" else tmp / spec.path
            link_file(source, target)
        link_file(tmp / "tokenizer.json", fp32_view / "tokenizer.json")
        for name, found in layer_check(tmp, fp32_view, specs, setup, config).items():
            units[name]["vs_fp32"] = found
        shutil.rmtree(fp32_view, ignore_errors=True)
    if baseline is not None:
        src, dst = ref / baseline["path"], tmp / BASELINE_INT8
        src.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tmp / baseline["path"], src)
        feeds = None
        if rec:
            import onnx

            names = {i.name for i in onnx.load(str(src), load_external_data=False).graph.input}
            feeds = [{k: v for k, v in f.items() if k in names} for f in rec.model_feeds]
        units["baseline"] = {"ops": quantize_graph(_source(scratch, baseline["path"], src, config), dst, config,
                                                   feeds)}
        baseline.update(path=BASELINE_INT8, precision="int8")  # max_abs_diff: the fp32 graph's, as for layers
    kept = KEPT_FP32 + (["FFN output MatMuls"] if config.method == "static" and "ffn_out" in config.keep_fp32 else [])
    out = {"precision": "int8", "method": config.method, "tool": TOOLS[config.method],
           "format": "QDQ" if config.method == "static" else "QOperator (integer ops)",
           "settings": _settings(config), "calibration": calibration,
           "quantized": ["layers"] + (["baseline"] if baseline is not None else []), "kept_fp32": kept,
           "units": units, "layer_bytes": {"fp32": fp32_bytes, "int8": int8_bytes},
           "tolerance": {"metric": config.metric_tolerance, "gate_rows": config.gate_tolerance}}
    if config.method == "dynamic":
        out["note"] = "activation scales per call over the whole batch: a row's answer depends on its batch"
    return out


def _source(scratch: Path, rel: str, graph: Path, config: Int8Config) -> Path:
    """The graph to quantize: static takes the unfused export (scratch/rel, export_model's raw graph) when the
    model dir's graph is fused (--optimize): the QDQ quantizer has no rule for the fused Attention op, so its
    QKV projection would stay fp32, and the unfused int8 graph measured faster (onnxruntime fuses QDQ at load).
    Dynamic quantizes the fused graph (Attention -> QAttention)."""
    raw = scratch / rel
    return raw if config.method == "static" and raw.is_file() else graph


def _settings(config: Int8Config) -> dict:
    d = asdict(config)
    for k in ("metric_tolerance", "gate_tolerance", "split", "max_examples", "layer_check_rows", "method",
              "calibration", "calibration_split", "calibration_rows", "percentile"):
        d.pop(k)
    d["keep_fp32"] = list(config.keep_fp32) if config.method == "static" else []
    if config.method == "static":
        d["op_types"] = ["MatMul"]
        d["activations"] = "uint8, static (calibrated constant scales, QDQ)"
        d["graphs"] = "the unfused export of each layer (the QDQ quantizer has no rule for the fused Attention)"
    else:
        d["op_types"] = list(config.op_types)
        d["activations"] = "uint8, dynamic (per call)"
    d["cpu_has_vnni"] = cpu_has_vnni()
    return d


def layer_summary(quantization: dict) -> str | None:
    """One line on how far the int8 layers are from their fp32 graphs (None when not checked)."""
    checked = {k: u["vs_fp32"] for k, u in (quantization or {}).get("units", {}).items()
               if (u.get("vs_fp32") or {}).get("rows")}
    if not checked:
        return None
    worst = max(checked, key=lambda k: checked[k]["rel_rms"])
    w = checked[worst]
    return (f"int8 layers vs their fp32 graphs on {(quantization.get('dev') or {}).get('split') or 'dev'} hidden "
            f"states: relative RMS error up to {w['rel_rms']:.2%} ({worst}: max abs diff {w['max_abs_diff']:.3g} "
            f"on values up to {w['max_abs_ref']:.3g})")
