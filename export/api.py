"""export_model: a run dir -> a model dir the torch-free runtime loads (see hadskip.runtime.manifest).

Order of work, all inside a temp dir beside the target:
    1. every unit: torch.onnx.export (TorchScript exporter) -> [fp16] -> validate against PyTorch;
       layers with optimize=True: fuse, validate, else keep the unfused graph
    2. tokenizer.json with truncation/padding; [baseline/ through optimum-onnx, validated]
    3. [engine "trt": a TensorRT plan per unit, validated on the GPU]
    4. manifest.json with every file's sha256 (and RUN/dial.json, the budget dial, if any), then one rename
       into place (export/install.py: an existing --out is replaced only when it holds nothing but an
       earlier export's files).
Budgeted-exit and early-exit runs ship as routes "static" and "early-exit" (export/route.py: no gate graphs;
an early-exit run's exit heads as exits/NN.onnx and its exit dial calibrated on dev).
A failed validation raises (ValidationError / ShapeError) and leaves no model dir. A TensorRT step that
cannot run (no tensorrt, no GPU) or fails still installs the validated ONNX model dir (engine "onnx")
and then raises, naming what is missing. SIGTERM / SIGINT / SIGHUP remove the temp dirs first (install.py).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from hadskip.export.install import SignalGuard, check_target, install, temp_dirs
from hadskip.export.labels import parse_label_names, resolve_labels
from hadskip.export.portable import portable_name, portable_task, run_ref
from hadskip.export.progress import ExportProgress
from hadskip.export.quantize import Int8Config, TextSetup, check_on_dev, check_request, quantize_units
from hadskip.export.spec import RULE, ExportError, settle
from hadskip.runtime.manifest import ENGINES, MANIFEST, MIN_OPSET, Manifest, file_table, write_manifest

DUMMY = (2, 8)  # (batch, seq) the graphs are traced at; validation uses other shapes too


@dataclass
class UnitReport:
    name: str
    path: str
    bytes: int
    max_abs_diff: float | None  # None when validate=False
    seconds: float
    optimization: str = "none"  # "ort-fused" | "none"
    fused_ops: dict = field(default_factory=dict)
    note: str = ""  # e.g. why a fused graph was not kept


@dataclass
class ExportReport:
    out_dir: str
    seconds: float
    total_bytes: int
    engine: str  # what the model dir holds ("onnx" when a TensorRT build could not run)
    precision: str
    opset: int
    units: list[UnitReport]
    optimization: dict = field(default_factory=dict)
    baseline: dict | None = None
    engines: dict | None = None
    validation: dict = field(default_factory=dict)
    quantization: dict | None = None  # --quantize int8: hadskip.export.quantize's manifest section

    def to_dict(self) -> dict:
        d = asdict(self)
        d["max_abs_diff"] = d.pop("validation")
        d["fused_ops"] = {u.name: u.fused_ops for u in self.units if u.fused_ops}
        return d


def validation_cases(max_seq_len: int, max_batch: int) -> list[tuple[int, int]]:
    """(batch, seq) pairs: tiny, odd, the maximum length, and shapes unlike the export dummy."""
    t, b = max_seq_len, max_batch
    cases = [(1, 1), (min(3, b), min(t, 5)), (min(4, b), t), (min(7, b), min(t, 13)), (min(b, 16), min(t, 11))]
    return list(dict.fromkeys(cases))


def _tool_versions(*extra: str) -> dict:
    from importlib import metadata

    from hadskip import __version__

    tools = {"hadskip": __version__}
    for pkg in ("torch", "transformers", "onnx", "onnxruntime", "tokenizers", *extra):
        try:
            tools[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return tools


def _io_types(model_dir: Path, units: dict) -> dict:
    """{kind: {io name: dtype}} read from one graph of each kind (every layer/gate has the same io)."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    out = {}
    firsts = (("embeddings", units["embeddings"]), ("layer", units["layers"][0]),
              ("gate", (units["gates"] or [None])[0]), ("head", units["head"]),
              ("exit", (units.get("exits") or [None])[0]))
    for kind, rel in [(k, r) for k, r in firsts if r is not None]:  # a static or early-exit model has no gates
        g = onnx.load(str(model_dir / rel), load_external_data=False).graph
        out[kind] = {v.name: str(tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
                     for v in [*g.input, *g.output]}
    return out


def trained_avg_layers(metrics: dict | None) -> dict | None:
    """The average layers the run measured when it was trained ({"dev", "test"}; None: not recorded): what the
    model runs, next to its target budget, for /info and `hadskip eval`."""
    got = {split: metrics.get(f"{split}_avg_layers") for split in ("dev", "test")} if metrics else {}
    return {k: float(v) for k, v in got.items() if isinstance(v, (int, float))} or None


def export_model(run_dir: str | Path, out_dir: str | Path, *, engine: str = "onnx", opset: int = 17,
                 optimize: bool = False, with_baseline: bool = False, fp16: bool = False, max_batch: int = 64,
                 validate: bool = True, progress: bool = True, quantize: str | None = None,
                 int8: Int8Config | None = None, fuse_gates: bool = False,
                 label_names: str | Sequence[str] | None = None) -> ExportReport:
    """Export a run dir into a model dir (manifest + per-unit graphs); see the module docstring.

    engine: "onnx" (graphs only) or "trt" (also a TensorRT plan per unit; needs tensorrt and a GPU).
    optimize: onnxruntime BERT fusions in the layer graphs (unfused kept where a fused one fails validation).
    with_baseline: also the full model through optimum-onnx into MODEL/baseline/: the run's fine-tuned teacher
        when it records one that is still there, else the run's model with every gate open (the manifest's
        export.baseline says which; see export/baseline.py).
    fp16: fp16 graphs (engine onnx) or fp16 plans (engine trt); gates, LayerNorm and softmax stay fp32.
    max_batch: the largest batch the TensorRT profile accepts, and the bound of the validation batches.
    quantize: "int8" for CPUs (hadskip.export.quantize; int8: its Int8Config), checked on the run's dev split.
    fuse_gates: the gates also inside the graph before them (hadskip.export.fuse_gates; ort-cpu reads them).
    label_names: the manifest's label names, label 0 first ("a,b" or a list; see hadskip.export.labels for
        the default: the task's names, a classifier config's id2label, else "0", "1", ...).
    """
    if engine not in ENGINES:
        raise ExportError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: >= {MIN_OPSET} is needed so LayerNorm is one op")
    if max_batch < 1:
        raise ExportError(f"max_batch must be >= 1, got {max_batch}")
    start = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out_dir).expanduser().resolve()
    check_target(out)  # refuse before any work; install checks again
    check_request(quantize, fp16=fp16, engine=engine)
    int8 = (int8 or Int8Config()).resolved() if quantize else None
    if label_names is not None:
        label_names = parse_label_names(label_names)  # empty or repeated names: refused before any work
    with SignalGuard() as guard:
        report, trt_error = _export(run_dir, out, guard, engine=engine, opset=opset, optimize=optimize,
                                    with_baseline=with_baseline, fp16=fp16, max_batch=max_batch, validate=validate,
                                    progress=progress, quantize=quantize, int8=int8, fuse_gates=fuse_gates,
                                    label_names=label_names)
    if trt_error is not None:  # after the install: the validated ONNX model dir stays usable
        from hadskip.export.trt import TRTUnavailableError

        kept = f"(the validated ONNX model dir {out} was kept, engine onnx)"
        if isinstance(trt_error, TRTUnavailableError):
            raise TRTUnavailableError(f"{trt_error} {kept}") from trt_error
        first = str(trt_error).strip().splitlines()[0] if str(trt_error).strip() else ""
        raise ExportError(f"TensorRT build failed: {type(trt_error).__name__}: {first} {kept}") from trt_error
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def _export(run_dir: Path, out: Path, guard: SignalGuard, *, engine: str, opset: int, optimize: bool,
            with_baseline: bool, fp16: bool, max_batch: int, validate: bool, progress: bool,
            quantize: str | None = None, int8: Int8Config | None = None, fuse_gates: bool = False,
            label_names: Sequence[str] | None = None):
    """The export proper: (ExportReport, the TensorRT error to raise after the install or None)."""
    from hadskip.modeling.checkpoint import load_run
    from hadskip.export import optimize as opt
    from hadskip.export.tokenizer import write_tokenizer
    from hadskip.export.route import plan_route
    from hadskip.export.units import build_specs, export_onnx

    model, tokenizer, info = load_run(run_dir)
    cfg, hf, fam = model.config, model.config.hf_config, model.family
    max_seq_len = int(info.max_len)
    if hf.get("max_position_embeddings") and max_seq_len > fam.max_tokens(hf):
        raise ExportError(f"run max_len {max_seq_len} is more than the backbone can take ({fam.position_note(hf)})")
    token_types = fam.uses_token_types(hf)  # the runtime reads this fact from the manifest
    type_vocab_size = int(hf.get("type_vocab_size", 1) or 0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(hf.get("pad_token_id") or 0)
    labels, labels_from = resolve_labels(info.task, hf, cfg.num_labels, label_names)
    onnx_fp16 = fp16 and engine == "onnx"  # TensorRT builds from fp32 graphs and lowers precision itself
    say = (lambda name: print(f"export: {name}", file=sys.stderr, flush=True)) if progress else None
    plan = plan_route(run_dir, model, tokenizer, info, fuse_gates=fuse_gates, quantize=quantize, progress=say)
    dial = plan.dial  # gated: RUN/dial.json, refused if calibrated on other weights; early-exit: the exit dial
    specs = build_specs(model, vocab_size=int(hf["vocab_size"]), pad_token_id=pad_id,
                        type_vocab_size=type_vocab_size if token_types else 1, opset=opset, fp16=onnx_fp16,
                        gates=plan.kind == "gated", exits=plan.exits)
    cases = validation_cases(max_seq_len, max_batch)
    dummy = (DUMMY[0], min(DUMMY[1], max_seq_len))

    tmp = scratch = None
    bar = ExportProgress(progress, len(specs) + 2 + int(with_baseline) + 2 * bool(quantize) + int(fuse_gates))
    trt_error: Exception | None = None
    try:
        with guard.deferred():  # a signal between the two mkdtemps must not orphan the first
            tmp, scratch = temp_dirs(out)
        reports: list[UnitReport] = []
        raw: dict = {}  # unit name -> its unfused fp32 graph (TensorRT input)
        for spec in specs:
            bar.step(spec.name)
            t0 = time.perf_counter()
            raw[spec.name] = scratch / spec.path
            export_onnx(spec, raw[spec.name], dummy)
            candidates = [("none", raw[spec.name], {})]
            if optimize and spec.kind == "layer":
                fused = scratch / spec.path.replace(".onnx", ".fused.onnx")
                stats = opt.fuse_bert_layer(raw[spec.name], fused, cfg.num_heads, cfg.hidden_size)
                candidates.insert(0, ("ort-fused", fused, stats))
            label, path, diff, stats, note = settle(spec, candidates, cases, validate)
            (tmp / spec.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, tmp / spec.path)
            reports.append(UnitReport(spec.name, spec.path, (tmp / spec.path).stat().st_size, diff,
                                      round(time.perf_counter() - t0, 3), label, stats, note))

        bar.step("tokenizer")
        tokenization = write_tokenizer(run_dir, tokenizer, max_seq_len, tmp / "tokenizer.json")

        baseline = None
        if with_baseline:
            from hadskip.export.baseline import build_baseline, teacher_source

            bar.step("baseline (optimum)")
            full, source = teacher_source(run_dir, model, tokenizer, info)
            baseline = build_baseline(full, tokenizer, labels, tmp, scratch, specs, cases, opset, optimize,
                                      onnx_fp16, validate, source)

        quant = None
        if quantize:
            bar.step("int8")
            setup = TextSetup(dict(info.task), max_seq_len, pad_id, token_types, cfg.num_layers)
            quant = quantize_units(tmp, scratch, specs, baseline, cases, int8, validate, setup)
        units = {"embeddings": "embeddings.onnx", "layers": [s.path for s in specs if s.kind == "layer"],
                 "gates": [s.path for s in specs if s.kind == "gate"], "head": "head.onnx",
                 "tokenizer": "tokenizer.json", "engines": None,
                 "baseline": baseline["path"] if baseline else None}
        if plan.exits is not None:
            units["exits"] = [s.path for s in specs if s.kind == "exit"]
        if fuse_gates:
            from hadskip.export.fuse_gates import fuse_model_dir

            bar.step("fuse gates")
            units["gate_form"] = "fused"
            fused_gates = fuse_model_dir(tmp, units, cfg.hidden_size, int(hf["vocab_size"]), cases)
        validation = {r.name: r.max_abs_diff for r in reports if r.max_abs_diff is not None}
        if fuse_gates:
            validation.update({f"gates-fused/{k}": v for k, v in fused_gates["max_abs_diff"].items()})
        if baseline and baseline.get("max_abs_diff") is not None:
            validation["baseline"] = baseline["max_abs_diff"]
        final_engine, precision, engines = "onnx", quantize or ("fp16" if onnx_fp16 else "fp32"), None
        if engine == "trt":
            try:
                from hadskip.export.trt import build_engines, require_tensorrt

                require_tensorrt()
                bar.add(len(specs))
                engines, trt_diffs = build_engines(specs, raw, tmp, max_batch=max_batch, max_seq_len=max_seq_len,
                                                   hidden_size=cfg.hidden_size, fp16=fp16, cases=cases,
                                                   step=bar.step)
                units["engines"] = engines
                validation.update({f"trt/{k}": v for k, v in trt_diffs.items()})
                final_engine, precision = "trt", "fp16" if fp16 else "fp32"
            except Exception as exc:  # noqa: BLE001 - tensorrt raises many types; the ONNX part is still good
                trt_error = exc
                shutil.rmtree(tmp / "engines", ignore_errors=True)

        bar.step("manifest")
        optimization = _optimization(optimize, reports, len(units["layers"]), baseline)
        rels = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        files = file_table(tmp, rels)
        manifest = Manifest(
            backbone={"name": portable_name(cfg.backbone), "model_type": cfg.model_type, "num_layers": cfg.num_layers,
                      "hidden_size": cfg.hidden_size, "num_heads": cfg.num_heads,
                      "intermediate_size": hf.get("intermediate_size"), "vocab_size": int(hf["vocab_size"]),
                      "pad_token_id": pad_id, "type_vocab_size": type_vocab_size, "token_types": token_types,
                      "max_position_embeddings": hf.get("max_position_embeddings"), "gate_hidden": cfg.gate_hidden},
            task=portable_task(info.task), labels=labels, max_seq_len=max_seq_len, precision=precision,
            engine=final_engine, opset=opset, units=units, files=files, budget=plan.budget, route=plan.manifest,
            validation=validation, optimization=optimization,
            tools=_tool_versions(*(("optimum-onnx", "optimum") if with_baseline else ()),
                                 *(("tensorrt",) if engines else ())),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            tokenization=tokenization, io_types=_io_types(tmp, units), dial=dial.to_dict() if dial else None,
            export={"run": run_ref(run_dir), "run_kind": info.kind, "engine_requested": engine,
                    "fp16": fp16, "optimize": optimize, "max_batch": max_batch, "quantize": quantize,
                    "fuse_gates": fuse_gates, "labels_from": labels_from,
                    "trained_avg_layers": plan.trained_avg_layers or trained_avg_layers(info.metrics),
                    "validated": validate, "validation_cases": [list(c) for c in cases], "dummy": list(dummy),
                    "atol": {s.name: s.atol for s in specs}, "rtol": {s.name: s.rtol for s in specs},
                    "tolerance_rule": RULE,
                    "baseline": {k: baseline[k] for k in ("model", "teacher_run", "teacher_weights_sha256", "note")}
                    if baseline else None},
        )
        write_manifest(tmp, manifest)
        if quant is not None:
            bar.step(f"int8 vs fp32 on {int8.split}")
            # the check loads the run's task (a folder task: from its path, which the manifest does not hold)
            checked = check_on_dev(tmp, scratch / "fp32", replace(manifest, task=dict(info.task)), int8)
            manifest.quantization = {**quant, "dev": checked}
            write_manifest(tmp, manifest)
        bar.finish()
        total = sum(m["bytes"] for m in files.values()) + (tmp / MANIFEST).stat().st_size
        with guard.deferred():  # the old dir moved aside and the new one in place: both renames, or neither
            install(tmp, out)
    finally:
        with guard.deferred():
            bar.stop()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    report = ExportReport(out_dir=str(out), seconds=0.0, total_bytes=total, engine=final_engine, precision=precision,
                          opset=opset, units=reports, optimization=optimization, baseline=baseline, engines=engines,
                          validation=validation, quantization=manifest.quantization or None)
    return report, trt_error


def _optimization(optimize: bool, reports: list[UnitReport], n_layers: int, baseline: dict | None) -> dict:
    """What the manifest records about fusion: per layer kept or not, and why not."""
    if not optimize:
        return {"layers": "none"}
    kept = [r for r in reports if r.optimization == "ort-fused"]
    optimization = {
        "layers": "ort-fused" if len(kept) == n_layers else ("mixed" if kept else "none"),
        "tool": "onnxruntime.transformers.optimizer (model_type bert, opt_level 0)",
        "fused_ops": {r.name: r.fused_ops for r in kept if r.fused_ops},
        "not_kept": {r.name: r.note for r in reports if r.note},
    }
    if baseline:
        optimization["baseline"] = baseline["optimization"]
    return optimization
