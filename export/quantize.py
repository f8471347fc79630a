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
import platform
import shutil
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ExportError(f"int8 method must be one of {', '.join(METHODS)}, got {self.method!r}")
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


@contextlib.contextmanager
def _quiet_quantizer():
    """The quantizers log a pre-processing hint on the root logger for every graph; keep stderr clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _activation_matmuls(path: str | Path) -> list[str]:
    """Names of the MatMul nodes whose inputs are both activations (attention scores): kept fp32."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in g.node if n.op_type == "MatMul" and not any(x in consts for x in n.input)]


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

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter(feeds)

                def get_next(self):
                    return next(self.it, None)

                def rewind(self):
                    self.it = iter(feeds)

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
                                nodes_to_exclude=_activation_matmuls(src), calibrate_method=method,
                                extra_options=extra)
            except Exception as exc:  # noqa: BLE001 - shape inference raises a bare Exception
                raise ExportError(f"static int8 of {Path(src).name} failed: {_first_line(exc)}") from exc
            finally:
                typed.unlink(missing_ok=True)
    found = int8_ops(dst)
    if not found:
        raise ExportError(f"quantizing {Path(src).name} changed no op to int8")
    return found


def _subset(n: int, k: int | None, seed: int = 0):
    """A fixed random subset of range(n) of at most k indices, sorted."""
    import numpy as np

    if k is None or n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def _split_inputs(task: dict, split: str, k: int | None):
    """(inputs (texts or pairs), labels, rows in the split) of a fixed subset of the run's task split."""
    from hadskip.modeling.checkpoint import load_run_task

    s = load_run_task(task).split(split)
    inputs = list(zip(s.texts, s.pairs, strict=True)) if s.pairs is not None else list(s.texts)
    keep = _subset(len(inputs), k)
    return [inputs[i] for i in keep], s.labels[keep], len(inputs)


def _load_split(task: dict, split: str, k: int | None, why: str):
    """_split_inputs, or ExportError in one line when the run's task cannot be loaded here."""
    from hadskip.errors import HadSkipError

    try:
        out = _split_inputs(task, split, k)
    except (HadSkipError, OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{why} needs the run's {split} split, and the task {task.get('name')!r} cannot be "
                          f"loaded here ({_first_line(exc)})") from exc
    if not out[0]:
        raise ExportError(f"{why} needs the run's {split} split, and it is empty")
    return out


class _Recorder:
    """The fp32 units of the model dir being built, routed by the runtime's own loop, keeping every input a layer
    graph gets (per layer: a list of {input name: array}) and the whole-model inputs of each batch."""

    def __init__(self, tmp: Path, specs, setup: TextSetup, threads: int | None = None):
        from hadskip.runtime.backends.ort import OrtCpuBackend, open_session, session_options
        from hadskip.runtime.text import TextEncoder

        class Backend(OrtCpuBackend):
            def __init__(self, sessions, num_layers, seen):
                self.sessions, self.num_layers, self.seen = sessions, num_layers, seen
                self.inputs = {k: {i.name for i in s.get_inputs()} for k, s in sessions.items()}

            def run_layer(self, i, h, attention_mask):
                names = self.inputs[("layer", i)]
                feed = {"hidden": h, "attention_mask": attention_mask}
                self.seen[i].append({k: v.copy() for k, v in feed.items() if k in names})
                return super().run_layer(i, h, attention_mask)

        so = session_options(threads)
        kinds = {"embeddings": "embeddings", "head": "head", "layer": "layer", "gate": "gate"}
        count: Counter = Counter()
        sessions = {}
        for spec in specs:
            kind = kinds[spec.kind]
            i = count[kind]
            count[kind] += 1
            sessions[(kind, i if kind in ("layer", "gate") else 0)] = open_session(tmp / spec.path, so,
                                                                                    ["CPUExecutionProvider"])
        self.seen: dict[int, list[dict]] = {i: [] for i in range(setup.num_layers)}
        self.backend = Backend(sessions, setup.num_layers, self.seen)
        self.encoder = TextEncoder(tmp / "tokenizer.json", setup.max_seq_len, setup.pad_token_id,
                                   not setup.token_types)
        self.model_feeds: list[dict] = []

    def run(self, inputs, batch_size: int = 32, every_gate_open: bool = True) -> None:
        import numpy as np

        from hadskip.runtime.router import route

        enc = self.encoder.encode(inputs)
        order = np.argsort(enc.lengths, kind="stable")  # like Runtime.predict: little padding
        for start in range(0, len(order), batch_size):
            ids, mask, tt = self.encoder.pad_batch(enc, order[start:start + batch_size])
            t = max(1, int(mask.sum(axis=1).max()))
            ids, mask, tt = ids[:, :t], mask[:, :t], tt[:, :t]
            self.model_feeds.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": tt})
            route(self.backend, ids, mask, tt)  # the run's gates at offset 0
            if every_gate_open:
                route(self.backend, ids, mask, tt, forced=np.ones((len(ids), self.backend.num_layers), bool))


def _calibrate(tmp: Path, specs, setup: TextSetup, config: Int8Config) -> tuple[_Recorder, dict]:
    inputs, _, of = _load_split(setup.task, config.calibration_split, config.calibration_rows,
                                "static int8 calibration")
    rec = _Recorder(tmp, specs, setup)
    rec.run(inputs)
    info = {"split": config.calibration_split, "rows": len(inputs), "of": of, "method": config.calibration,
            "paths": "routed (the run's gates at offset 0) and every gate open",
            "layer_inputs": {f"layer_{i:02d}": {"rows": int(sum(len(f["hidden"]) for f in feeds)),
                                                "tokens": int(sum(f["attention_mask"].sum() for f in feeds))}
                             for i, feeds in rec.seen.items()}}
    if config.calibration == "percentile":
        info["percentile"] = config.percentile
    return rec, info


def _layer_check(tmp: Path, ref: Path, specs, setup: TextSetup, config: Int8Config) -> dict[str, dict]:
    """Each int8 layer graph vs its fp32 graph on the hidden states dev rows bring to it (real tokens only):
    {layer: {rel_rms, max_abs_diff, max_abs_ref}}. Raises ExportError on a non-finite output."""
    import numpy as np

    from hadskip.runtime.backends.ort import open_session, session_options

    try:
        inputs, _, _ = _load_split(setup.task, config.split, config.layer_check_rows, "the int8 layer check")
    except ExportError:
        return {}  # said by check_on_dev, which needs the same split
    rec = _Recorder(ref, specs, setup)  # fp32 graphs: scratch/fp32 holds the layers, tmp the rest
    rec.run(inputs)  # routed and every gate open: every layer gets checked
    so = session_options()
    out = {}
    for i, spec in enumerate([s for s in specs if s.kind == "layer"]):
        if not rec.seen[i]:
            out[spec.name] = {"rows": 0}
            continue
        s32, s8 = (open_session(d / spec.path, so, ["CPUExecutionProvider"]) for d in (ref, tmp))
        se = ss = 0.0
        diff = top = 0.0
        rows = 0
        for feed in rec.seen[i]:
            a, b = s32.run(None, feed)[0], s8.run(None, feed)[0]
            real = feed["attention_mask"].astype(bool) if "attention_mask" in feed else np.ones(a.shape[:2], bool)
            a, b = a[real].astype(np.float64), b[real].astype(np.float64)
            if not np.isfinite(b).all():
                raise ExportError(f"int8 {spec.name} gives non-finite values on {config.split} hidden states")
            se += float(((a - b) ** 2).sum())
            ss += float((a ** 2).sum())
            diff, top = max(diff, float(np.abs(a - b).max())), max(top, float(np.abs(a).max()))
            rows += len(feed["hidden"])
        out[spec.name] = {"rows": rows, "rel_rms": round((se / ss) ** 0.5 if ss else 0.0, 6),
                          "max_abs_diff": round(diff, 6), "max_abs_ref": round(top, 6)}
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
    rec, calibration = _calibrate(tmp, specs, setup, config) if config.method == "static" else (None, None)
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
            _link(source, target)
        _link(tmp / "tokenizer.json", fp32_view / "tokenizer.json")
        for name, found in _layer_check(tmp, fp32_view, specs, setup, config).items():
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
    out = {"precision": "int8", "method": config.method, "tool": TOOLS[config.method],
           "format": "QDQ" if config.method == "static" else "QOperator (integer ops)",
           "settings": _settings(config), "calibration": calibration,
           "quantized": ["layers"] + (["baseline"] if baseline is not None else []), "kept_fp32": KEPT_FP32,
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


def check_on_dev(int8_dir: Path, fp32_dir: Path, manifest, config: Int8Config, batch_size: int = 64) -> dict:
    """Run the int8 model dir and the same units with the fp32 layers (fp32_dir, from quantize_units) on the
    run's dev split: metric fp32 vs int8, share of rows whose gate decisions changed, max |delta prob|; and
    each row of the int8 model alone vs in its batch ("alone_vs_batched": an answer must not depend on the rows
    it shares a batch with). Warns (QuantizationWarning) past the config's tolerances, on any difference
    between alone and batched, or when no dev split could be loaded."""
    import numpy as np

    from hadskip.data.metrics import compute_metric
    from hadskip.runtime import Runtime
    from hadskip.runtime.manifest import write_manifest

    try:
        inputs, labels, of = _load_split(manifest.task, config.split, config.max_examples, "the int8 check")
    except ExportError as exc:
        note = f"int8 not checked on a {config.split} split: {exc}"
        warnings.warn(note, QuantizationWarning, stacklevel=2)
        return {"split": None, "note": note}
    _link_shared_units(int8_dir, fp32_dir, manifest)
    write_manifest(fp32_dir, replace(manifest, precision="fp32", files={}, quantization={},
                                     units={**manifest.units, "baseline": None, "gate_form": "separate"}))
    out, full = {}, {}
    for name, d in (("fp32", fp32_dir), ("int8", int8_dir)):
        with Runtime.load(d, verify=False) as rt:
            out[name] = rt.predict(inputs, batch_size=batch_size, allow_empty=True)
            if name == "int8":
                alone = [rt.predict([x], batch_size=1, allow_empty=True) for x in inputs]
            rel = manifest.units["baseline"] if name == "int8" else "baseline/model.onnx"
            if manifest.units.get("baseline") and (d / rel).is_file():  # the full teacher (fp32: moved aside
                full[name] = _baseline_labels(rt, d / rel, inputs, batch_size)  # by quantize_units)
    a, b = out["fp32"], out["int8"]
    metric = manifest.task.get("metric", "accuracy")
    n_labels = len(manifest.labels)
    m32 = compute_metric(metric, a.label_ids, labels, n_labels)
    m8 = compute_metric(metric, b.label_ids, labels, n_labels)
    rows_changed = float((a.gates != b.gates).any(axis=1).mean())
    one = {k: np.concatenate([getattr(p, k) for p in alone]) for k in ("probabilities", "label_ids", "gates")}
    report = {
        "split": config.split, "examples": len(inputs), "of": of, "metric": metric,
        "fp32": round(float(m32), 6), "int8": round(float(m8), 6), "delta": round(float(m8 - m32), 6),
        "gate_rows_changed": round(rows_changed, 6),
        "gate_decisions_changed": round(float((a.gates != b.gates).mean()), 6),
        "predictions_changed": round(float((a.label_ids != b.label_ids).mean()), 6),
        "max_abs_dprob": float(np.abs(a.probabilities - b.probabilities).max()),
        "avg_layers": {"fp32": round(a.avg_layers, 4), "int8": round(b.avg_layers, 4)},
        "alone_vs_batched": {"batch_size": batch_size,
                             "max_abs_dprob": float(np.abs(one["probabilities"] - b.probabilities).max()),
                             "labels_changed": int((one["label_ids"] != b.label_ids).sum()),
                             "gate_rows_changed": int((one["gates"] != b.gates).any(axis=1).sum())},
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
    ab = r.get("alone_vs_batched")
    if ab and ab["max_abs_dprob"] > 0:
        out.append(f"int8 answers depend on the batch: {r['split']} rows alone vs in batches of {ab['batch_size']} "
                   f"differ by up to {ab['max_abs_dprob']:.3g} in probability ({ab['labels_changed']} labels, "
                   f"{ab['gate_rows_changed']} gate rows changed)")
    return out


def _link_shared_units(int8_dir: Path, fp32_dir: Path, manifest) -> None:
    """fp32_dir holds the fp32 layers; the units int8 and fp32 share (embeddings, gates, head, tokenizer) are
    hard links (or copies) of the int8 dir's files."""
    u = manifest.units
    for rel in [u["embeddings"], u["head"], u["tokenizer"], *u["gates"]]:
        dst = fp32_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        _link(int8_dir / rel, dst)


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
