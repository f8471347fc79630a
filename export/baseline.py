"""MODEL/baseline/: the full model as a plain transformers classifier, exported through optimum-onnx.

This is what a user would deploy instead of HadSkip, so `hadskip bench` times it as "full". Which model it is:
the run's fine-tuned teacher when the run is a `finetune` run itself, or records its teacher (run.json
extra.teacher, written by `hadskip train`) and that run dir is still there and matches (same backbone shape,
labels and vocabulary); otherwise the run's own model with every gate open (the HadSkip student's weights,
all layers run). `teacher_source` decides; the manifest records the answer under export.baseline
{"model": "teacher" | "student-all-gates-open", "teacher_run" (the teacher run's folder name),
"teacher_weights_sha256", "note"}.

Our Head is exactly the classifier of transformers' sequence-classification models on the first token
(which modules, and the activation, come from the family: hadskip.modeling.families `classifier`, `head_activation`):
    BERT:       pooler.dense + tanh, dropout, classifier                 <- head.dense, head.out
    RoBERTa:    classifier.dense + tanh, dropout, classifier.out_proj    <- head.dense, head.out
    ELECTRA:    classifier.dense + gelu, dropout, classifier.out_proj    <- head.dense, head.out
    DistilBERT: pre_classifier + relu, dropout, classifier                <- head.dense, head.out
    ModernBERT: model.final_norm, cls/mean pooling, head.dense + act + head.norm, dropout, classifier
                                                                          <- head.final_norm, head.dense, .norm, .out
(The RoBERTa and ELECTRA heads have one more dropout before dense: the identity in eval.) So the model is
rebuilt as `AutoModelForSequenceClassification` from model.config.hf_config with our weights, and
optimum exports one graph input_ids, attention_mask[, token_type_ids] -> logits, into MODEL/baseline/
beside config.json and the tokenizer, so `ORTModelForSequenceClassification.from_pretrained` loads it
as is. The graph is validated against `model(..., gates="off")`, the same weights with every layer run.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from hadskip.export.portable import portable_name, run_ref
from hadskip.export.spec import ExportError


def teacher_model(model, labels: list[str]):
    """A transformers XForSequenceClassification holding a GatedEncoder's backbone and head weights."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from hadskip.modeling.checkpoint import load_weights
    from hadskip.modeling.families import base_state

    d = dict(model.config.hf_config)
    config = AutoConfig.for_model(d.pop("model_type"), **d)
    config.num_labels = model.config.num_labels
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    hf = AutoModelForSequenceClassification.from_config(config)
    prefix = hf.base_model_prefix  # "bert" | "roberta" | "electra" | "distilbert"
    state = {f"{prefix}.{k}": v for k, v in base_state(model).items()}
    head = {part: getattr(model.head, part) for part in model.family.classifier_parts}
    for ours, theirs in zip(model.family.classifier_parts, model.family.classifier, strict=True):
        theirs = theirs.format(prefix=prefix)
        try:
            hf.get_submodule(theirs)
        except AttributeError as exc:
            raise ExportError(f"no known classifier layout for {type(hf).__name__} ({theirs} is missing); cannot "
                              "build the baseline") from exc
        for name, p in head[ours].state_dict().items():
            state[f"{theirs}.{name}"] = p
    load_weights(hf, state, f"baseline weights do not map onto {type(hf).__name__}", ExportError)
    return hf.eval()


class TeacherLogits:
    """The PyTorch reference for the baseline graph: the gated model with every layer run (gates off)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids, attention_mask, token_type_ids, gates="off").logits


def export_baseline(model, tokenizer, labels: list[str], dst: str | Path, opset: int) -> list[str]:
    """Write MODEL/baseline/ (model.onnx, config.json, tokenizer files); returns the written file names."""
    import logging

    import torch

    try:
        from optimum.exporters.onnx import onnx_export_from_model
    except ImportError as exc:
        raise ExportError("optimum-onnx is needed for --with-baseline: pip install 'hadskip[export]'") from exc
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    hf = teacher_model(model, labels)
    quiet = logging.getLogger("optimum")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # e.g. "opset 17 is lower than the recommended 18" (17 is all LN needs)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            onnx_export_from_model(hf, dst, opset=opset, task="text-classification", do_validation=False)
    finally:
        quiet.setLevel(level)
    if not (dst / "model.onnx").is_file():
        raise ExportError(f"optimum-onnx wrote no model.onnx into {dst}")
    tokenizer.save_pretrained(str(dst))
    return sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())


STUDENT = "student-all-gates-open"


def _recorded_dirs(run_dir: Path, info, recorded: str) -> list[Path]:
    """Where a teacher path recorded at training time may be now: as written (absolute, or relative to the
    current dir), and relative to the dir training ran in (found by matching the run's own recorded --out)."""
    p = Path(recorded).expanduser()
    if p.is_absolute():
        return [p]
    out = str(((info.extra or {}).get("config") or {}).get("out") or "")
    found = []
    parts = Path(out).parts
    real = run_dir.resolve().parts
    if parts and not Path(out).is_absolute() and ".." not in parts and real[-len(parts):] == parts:
        found.append(Path(*real[:-len(parts)]) / p)
    found.append(Path.cwd() / p)
    return list(dict.fromkeys(found))


def _mismatch(model, teacher, tokenizer, teacher_tokenizer, truncated: bool = False) -> str:
    """Why `teacher` cannot stand for `model`'s full-size original ("" when it can). truncated: the model is the
    teacher's first K layers (a budgeted-exit run), so the teacher may have more layers."""
    a, b = model.config, teacher.config
    if truncated and a.num_layers > b.num_layers:
        return f"it has {b.num_layers} layers, fewer than the run's {a.num_layers}"
    for name in ("model_type", *(() if truncated else ("num_layers",)), "hidden_size", "num_heads", "num_labels"):
        if getattr(a, name) != getattr(b, name):
            return f"its {name} is {getattr(b, name)!r}, the run's is {getattr(a, name)!r}"
    if tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        return "its tokenizer vocabulary differs from the run's"
    return ""


def _teacher(d: Path, note: str) -> dict:
    ref = run_ref(d)
    return {"model": "teacher", "teacher_run": ref["name"], "teacher_weights_sha256": ref["weights_sha256"],
            "note": note}


def _student(note: str) -> dict:
    return {"model": STUDENT, "teacher_run": None, "teacher_weights_sha256": None, "note": note}


def teacher_source(run_dir: Path, model, tokenizer, info):
    """(GatedEncoder to export as the baseline, {"model", "teacher_run", "teacher_weights_sha256", "note"}) for
    the run at `run_dir`. The teacher run is recorded by its folder's name and weights' sha256 (a manifest holds
    no build paths: hadskip.export.portable); the warning of an unusable recorded teacher names its path."""
    from hadskip.modeling.checkpoint import load_run, read_info
    from hadskip.errors import HadSkipError

    if info.is_teacher:
        return model, _teacher(run_dir, "the run is the teacher")
    recorded = (info.extra or {}).get("teacher")
    if not recorded:
        return model, _student(f"the {info.kind!r} run records no teacher: the run's model with every gate open")
    shown = portable_name(str(recorded))
    why = f"the recorded teacher {recorded} was not found"
    note = f"the recorded teacher {shown} was not found"
    for d in _recorded_dirs(run_dir, info, str(recorded)):
        if not (d / "run.json").is_file():
            continue
        try:
            if not read_info(d).is_teacher:
                why, note = (f"the recorded teacher {x} is not a finetune run" for x in (d, d.name))
                continue
            teacher, teacher_tok, _ = load_run(d)
        except (HadSkipError, OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else repr(exc)
            why = f"the recorded teacher {d} cannot be loaded ({first})"
            note = f"the recorded teacher {d.name} cannot be loaded"
            continue
        bad = _mismatch(model, teacher, tokenizer, teacher_tok, truncated=info.kind == "budgeted-exit")
        if bad:
            why, note = (f"the recorded teacher {x} does not match the run: {bad}" for x in (d, d.name))
            continue
        return teacher, _teacher(d, "the run's recorded teacher")
    tail = ": the run's model with every gate open"
    warnings.warn(f"baseline: {why}{tail}", stacklevel=2)  # a recorded teacher was expected; say so, not only in JSON
    return model, _student(note + tail)


def build_baseline(model, tokenizer, labels, tmp: Path, scratch: Path, specs, cases, opset: int, optimize: bool,
                   fp16: bool, validate: bool, source: dict) -> dict:
    """MODEL/baseline/ from `model` (see teacher_source); fused (and fp16) like the layers when asked.
    Returns what the report and manifest record about it."""
    import shutil

    from hadskip.export import optimize as opt
    from hadskip.export.spec import settle
    from hadskip.export.spec import TOLERANCES, ExportSpec

    dst = tmp / "baseline"
    raw = scratch / "baseline" / "model.onnx"
    raw.parent.mkdir(parents=True, exist_ok=True)
    export_baseline(model, tokenizer, labels, dst, opset)
    shutil.move(dst / "model.onnx", raw)
    emb = specs[0]
    atol, rtol = TOLERANCES["fp16" if fp16 else "fp32"]
    spec = ExportSpec(name="baseline", kind="embeddings", path="baseline/model.onnx", module=TeacherLogits(model),
                      inputs=list(emb.inputs), outputs=["logits"], dynamic_axes={}, sample=emb.sample, opset=opset,
                      fp16=fp16, atol=atol, rtol=rtol)
    candidates = [("none", raw, {})]
    if optimize:
        fused = scratch / "baseline" / "model.fused.onnx"
        stats = opt.fuse_bert_layer(raw, fused, model.config.num_heads, model.config.hidden_size)
        candidates.insert(0, ("ort-fused", fused, stats))
    label, path, diff, stats, note = settle(spec, candidates, cases, validate)
    shutil.copyfile(path, dst / "model.onnx")
    return {"path": "baseline/model.onnx", "dir": "baseline", "max_abs_diff": diff,
            "precision": "fp16" if fp16 else "fp32", **source,
            "optimization": {"mode": label, "fused_ops": stats, "note": note,
                             "tool": "onnxruntime.transformers.optimizer (model_type bert, opt_level 0), "
                                     "the same settings as the layer graphs"},
            "exporter": "optimum.exporters.onnx.onnx_export_from_model (task text-classification)"}
