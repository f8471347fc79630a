"""INT8 for CPUs: dynamic quantization of the layer graphs (and of the optimum baseline), and the check of
the int8 model against its fp32 graphs on the run's dev split.

    quantize_units(tmp, scratch, specs, baseline, cases, config)  -> the "quantization" manifest section
    check_on_dev(int8_dir, fp32_dir, manifest, config)            -> metric fp32 vs int8, gate agreement

Tool: onnxruntime.quantization.quantize_dynamic (the quantizer optimum's ORTQuantizer wraps; ORTQuantizer
itself cannot quantize the fused graphs of --optimize: it runs ONNX shape inference, which cannot type the
com.microsoft ops, and has no way to pass onnxruntime's DefaultTensorType option). Weights int8 per output
channel, activations uint8 quantized per call (dynamic: no calibration data). Quantized: the weight MatMuls of
every layer (or the fused Attention, as QAttention). Kept fp32: LayerNorm, softmax, GELU, the attention score
MatMuls (activation x activation), the embeddings, the head and every gate, so the decisions that route a row
see fp32 logits computed from int8 layer outputs. The baseline (the full teacher from optimum-onnx) gets the
same settings, so `hadskip bench` compares like with like.

reduce_range (7-bit weights) is on by default on x86 CPUs without VNNI: their u8 x s8 kernel (VPMADDUBSW)
can saturate with full-range weights (https://onnxruntime.ai/docs/performance/model-optimizations/
quantization.html#when-and-why-do-i-need-to-try-u8u8). Not included: static (calibrated) quantization, QDQ
graphs for other execution providers, int8 for TensorRT.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from hadskip.export.spec import ExportError

QUANTIZE_CHOICES = ("int8",)
TOOL = "onnxruntime.quantization.quantize_dynamic"
INT8_OPS = ("MatMulInteger", "QAttention", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QGemm")
BASELINE_INT8 = "baseline/model_quantized.onnx"  # optimum's name for a quantized model.onnx
KEPT_FP32 = ["embeddings", "gates", "head", "LayerNormalization", "Softmax", "attention score MatMuls"]


class QuantizationWarning(UserWarning):
    """The int8 model moved away from fp32 on dev by more than the stated tolerance (or was not checked)."""


@dataclass(frozen=True)
class Int8Config:
    """Dynamic int8 settings and the tolerances the dev-split check warns past."""

    per_channel: bool = True  # one weight scale per output channel (more accurate than one per tensor)
    reduce_range: bool | None = None  # 7-bit weights; None: on for x86 CPUs without VNNI (see the docstring)
    weight_type: str = "int8"  # "int8" (u8 x s8 kernels) | "uint8" (u8 x u8)
    op_types: tuple[str, ...] = ("MatMul", "Attention")
    metric_tolerance: float = 0.005  # a dev metric drop larger than this (0.5 point) is reported
    gate_tolerance: float = 0.01  # a share of dev rows with any changed gate decision larger than this
    split: str = "dev"
    max_examples: int | None = 5000  # a larger split is checked on a fixed random subset of this many rows

    def __post_init__(self) -> None:
        if self.weight_type not in ("int8", "uint8"):
            raise ExportError(f"int8 weight_type must be int8 or uint8, got {self.weight_type!r}")
        if self.metric_tolerance < 0 or not 0 <= self.gate_tolerance <= 1:
            raise ExportError("int8 tolerances must be >= 0 (gate_tolerance a share within 0..1)")
        if self.max_examples is not None and self.max_examples < 1:
            raise ExportError(f"int8 max_examples must be >= 1 or None, got {self.max_examples}")

    def resolved(self) -> Int8Config:
        return self if self.reduce_range is not None else replace(self, reduce_range=not cpu_has_vnni())


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


@contextlib.contextmanager
def _quiet_quantizer():
    """quantize_dynamic logs a pre-processing hint on the root logger for every graph; keep stderr clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_graph(src: str | Path, dst: str | Path, config: Int8Config) -> dict[str, int]:
    """Write the dynamically quantized graph of `src` to `dst`; returns {int8 op: count}. Raises ExportError
    when nothing was quantized (a graph without weight MatMuls is not made int8 by this)."""
    import onnx

    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # pragma: no cover - onnxruntime always ships it
        raise ExportError("onnxruntime.quantization is missing: pip install 'hadskip[export]'") from exc
    config = config.resolved()
    with _quiet_quantizer():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(config.op_types),
                         per_channel=config.per_channel, reduce_range=bool(config.reduce_range),
                         weight_type=QuantType.QInt8 if config.weight_type == "int8" else QuantType.QUInt8,
                         # shape inference cannot type com.microsoft ops (fused graphs): their outputs are float
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    ops = Counter(n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node)
    found = {op: int(ops[op]) for op in INT8_OPS if ops[op]}
    if not found:
        raise ExportError(f"quantizing {Path(src).name} changed no op to int8 (ops: {dict(ops)})")
    return found


def quantize_units(tmp: Path, scratch: Path, specs, baseline: dict | None, cases, config: Int8Config,
                   validate: bool = True) -> dict:
    """Quantize the layer graphs in the model dir being built (`tmp`) in place, and its baseline into
    BASELINE_INT8; the fp32 originals move to scratch/fp32/ (the reference of check_on_dev).

    Each int8 layer is run against PyTorch on `cases` like the fp32 export (max abs diff recorded; only a
    non-finite output fails: int8 is judged end to end by check_on_dev). `baseline` (export_model's dict)
    is updated to name the int8 graph. Returns the manifest's "quantization" section (without "dev")."""
    from hadskip.export.spec import validate as check

    config = config.resolved()
    ref = scratch / "fp32"
    units: dict[str, dict] = {}
    fp32_bytes = int8_bytes = 0
    for spec in specs:
        if spec.kind != "layer":
            continue
        src, dst = ref / spec.path, tmp / spec.path
        src.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(dst, src)
        ops = quantize_graph(src, dst, config)
        diff = check(spec, dst, cases, atol=float("inf")) if validate else None
        units[spec.name] = {"ops": ops, "max_abs_diff": diff}
        fp32_bytes += src.stat().st_size
        int8_bytes += dst.stat().st_size
    if baseline is not None:
        src, dst = ref / baseline["path"], tmp / BASELINE_INT8
        src.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tmp / baseline["path"], src)
        units["baseline"] = {"ops": quantize_graph(src, dst, config), "max_abs_diff": None}
        baseline.update(path=BASELINE_INT8, precision="int8")  # max_abs_diff: the fp32 graph's, as for layers
    return {"precision": "int8", "tool": TOOL, "mode": "dynamic", "settings": _settings(config),
            "quantized": ["layers"] + (["baseline"] if baseline is not None else []), "kept_fp32": KEPT_FP32,
            "units": units, "layer_bytes": {"fp32": fp32_bytes, "int8": int8_bytes},
            "tolerance": {"metric": config.metric_tolerance, "gate_rows": config.gate_tolerance}}


def _settings(config: Int8Config) -> dict:
    d = asdict(config)
    for k in ("metric_tolerance", "gate_tolerance", "split", "max_examples"):
        d.pop(k)
    d["op_types"] = list(config.op_types)
    d["activations"] = "uint8, dynamic (per call)"
    d["cpu_has_vnni"] = cpu_has_vnni()
    return d


def check_on_dev(int8_dir: Path, fp32_dir: Path, manifest, config: Int8Config, batch_size: int = 64) -> dict:
    """Run the int8 model dir and the same units with the fp32 layers (fp32_dir, from quantize_units) on the
    run's dev split: metric fp32 vs int8, share of rows whose gate decisions changed, max |delta prob|.
    Warns (QuantizationWarning) past the config's tolerances, or when no dev split could be loaded."""
    import numpy as np

    from hadskip.checkpoint import load_run_task
    from hadskip.data.metrics import compute_metric
    from hadskip.errors import HadSkipError
    from hadskip.runtime import Runtime
    from hadskip.runtime.manifest import write_manifest

    try:
        data = load_run_task(manifest.task)
        split = data.split(config.split)
    except (HadSkipError, OSError, ValueError, KeyError) as exc:
        note = f"int8 not checked on a {config.split} split: the run's task {manifest.task.get('name')!r} " \
               f"cannot be loaded here ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        warnings.warn(note, QuantizationWarning, stacklevel=2)
        return {"split": None, "note": note}
    if not len(split.texts):
        note = f"int8 not checked: the {config.split} split is empty"
        warnings.warn(note, QuantizationWarning, stacklevel=2)
        return {"split": None, "note": note}
    _link_shared_units(int8_dir, fp32_dir, manifest)
    write_manifest(fp32_dir, replace(manifest, precision="fp32", files={}, quantization={},
                                     units={**manifest.units, "baseline": None, "gate_form": "separate"}))
    inputs = list(zip(split.texts, split.pairs, strict=True)) if split.pairs is not None else list(split.texts)
    labels = split.labels
    if config.max_examples is not None and len(inputs) > config.max_examples:
        keep = np.sort(np.random.default_rng(0).choice(len(inputs), config.max_examples, replace=False))
        inputs, labels = [inputs[k] for k in keep], labels[keep]
    out, full = {}, {}
    for name, d in (("fp32", fp32_dir), ("int8", int8_dir)):
        with Runtime.load(d, verify=False) as rt:
            out[name] = rt.predict(inputs, batch_size=batch_size)
            rel = manifest.units["baseline"] if name == "int8" else "baseline/model.onnx"
            if manifest.units.get("baseline") and (d / rel).is_file():  # the full teacher (fp32: moved aside
                full[name] = _baseline_labels(rt, d / rel, inputs, batch_size)  # by quantize_units)
    a, b = out["fp32"], out["int8"]
    metric = manifest.task.get("metric", "accuracy")
    n_labels = len(manifest.labels)
    m32 = compute_metric(metric, a.label_ids, labels, n_labels)
    m8 = compute_metric(metric, b.label_ids, labels, n_labels)
    rows_changed = float((a.gates != b.gates).any(axis=1).mean())
    report = {
        "split": config.split, "examples": len(inputs), "of": len(split.texts), "metric": metric,
        "fp32": round(float(m32), 6), "int8": round(float(m8), 6), "delta": round(float(m8 - m32), 6),
        "gate_rows_changed": round(rows_changed, 6),
        "gate_decisions_changed": round(float((a.gates != b.gates).mean()), 6),
        "predictions_changed": round(float((a.label_ids != b.label_ids).mean()), 6),
        "max_abs_dprob": float(np.abs(a.probabilities - b.probabilities).max()),
        "avg_layers": {"fp32": round(a.avg_layers, 4), "int8": round(b.avg_layers, 4)},
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
    return out


def _link_shared_units(int8_dir: Path, fp32_dir: Path, manifest) -> None:
    """fp32_dir holds the fp32 layers; the units int8 and fp32 share (embeddings, gates, head, tokenizer) are
    hard links (or copies) of the int8 dir's files."""
    u = manifest.units
    for rel in [u["embeddings"], u["head"], u["tokenizer"], *u["gates"]]:
        dst = fp32_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            continue
        try:
            os.link(int8_dir / rel, dst)
        except OSError:
            shutil.copyfile(int8_dir / rel, dst)
