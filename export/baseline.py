"""The full fine-tuned teacher as a plain transformers classifier, exported through optimum-onnx.

This is what a user would deploy instead of HadSkip, so the benchmarks compare against it. Our Head is
exactly the classifier of transformers' sequence-classification models on the first token:
    BERT:    pooler.dense + tanh, dropout, classifier           <- head.dense, head.out
    RoBERTa: classifier.dense + tanh, dropout, classifier.out_proj   <- head.dense, head.out
(RobertaClassificationHead has one more dropout before dense: the identity in eval.) So the teacher is
rebuilt as `AutoModelForSequenceClassification` from model.config.hf_config with our weights, and
optimum exports one graph input_ids, attention_mask[, token_type_ids] -> logits, into MODEL/baseline/
beside config.json and the tokenizer, so `ORTModelForSequenceClassification.from_pretrained` loads it
as is. The graph is validated against `model(..., gates="off")`, the same weights with every layer run.
"""

from __future__ import annotations

from pathlib import Path

from hadskip.export.spec import ExportError


def teacher_model(model, labels: list[str]):
    """A transformers XForSequenceClassification holding the GatedEncoder's backbone and head weights."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from hadskip.checkpoint import load_weights

    d = dict(model.config.hf_config)
    config = AutoConfig.for_model(d.pop("model_type"), **d)
    config.num_labels = model.config.num_labels
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    hf = AutoModelForSequenceClassification.from_config(config)
    prefix = hf.base_model_prefix  # "bert" | "roberta"
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("embeddings.emb."):
            state[f"{prefix}.embeddings.{key[len('embeddings.emb.'):]}"] = value
        elif key.startswith("layers."):
            i, rest = key[len("layers."):].split(".", 1)
            state[f"{prefix}.encoder.layer.{i}.{rest.removeprefix('layer.')}"] = value
    head = {"dense": model.head.dense, "out": model.head.out}
    if hasattr(hf, "classifier") and hasattr(hf.classifier, "out_proj"):  # RobertaClassificationHead
        targets = {"dense": "classifier.dense", "out": "classifier.out_proj"}
    elif getattr(getattr(hf, prefix), "pooler", None) is not None:  # BERT: pooler + classifier
        targets = {"dense": f"{prefix}.pooler.dense", "out": "classifier"}
    else:
        raise ExportError(f"no known classifier layout for {type(hf).__name__}; cannot build the baseline")
    for ours, theirs in targets.items():
        for name, p in head[ours].state_dict().items():
            state[f"{theirs}.{name}"] = p
    load_weights(hf, state, f"baseline weights do not map onto {type(hf).__name__}", ExportError)
    return hf.eval()


class TeacherLogits:
    """The PyTorch reference for the baseline graph: the gated model with gates off."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids, attention_mask, token_type_ids, gates="off").logits


def export_baseline(model, tokenizer, labels: list[str], dst: str | Path, opset: int) -> list[str]:
    """Write MODEL/baseline/ (model.onnx, config.json, tokenizer files); returns the written file names."""
    import logging
    import warnings

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
