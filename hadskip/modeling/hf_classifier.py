"""A fine-tuned transformers sequence classifier (a `save_pretrained` folder or a hub name) as a GatedEncoder.

`hadskip train --teacher` takes one in place of a `hadskip finetune` run: its backbone weights, its
classification head (mapped through the family adapter's `classifier` / `classifier_parts`, the inverse of the
baseline export's mapping), its config (id2label included, which export names labels from) and its tokenizer
are kept, with fresh gates. Nothing is re-fine-tuned.
"""

from __future__ import annotations

import re
from pathlib import Path

from hadskip.errors import HadSkipError
from hadskip.modeling.encoder import GatedEncoder, ModelConfig
from hadskip.modeling.families import family


def classifier_location(name: str) -> str | None:
    """Where `--teacher NAME` names a transformers classifier: its folder, or NAME as a hub name. None when it
    is (or can only be meant as) a hadskip run dir: a path with a run.json, or without a config.json, or a
    path-like name that does not exist."""
    path = Path(name).expanduser()
    if path.exists():
        if (path / "run.json").exists() or not (path / "config.json").is_file():
            return None
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not name.strip():
        return None
    return name  # a hub name


def classifier_config(name: str, flag: str = "--teacher"):
    """The transformers config of the classifier `name` (folder or hub name), checked: loadable, a supported
    encoder family, a *ForSequenceClassification architecture. HadSkipError (one line) otherwise."""
    from transformers import AutoConfig

    location = classifier_location(name) or name
    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise HadSkipError(f"{flag} {name} is not a hadskip run dir, and not a transformers classifier folder or "
                           f"hub name that loads ({str(exc).splitlines()[0]})") from exc
    family(str(config.model_type)).check(config.to_dict())  # unsupported type or configuration: says why
    archs = [str(a) for a in (config.architectures or [])]
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise HadSkipError(f"{flag} {name} is a {', '.join(archs) or config.model_type} model, not a fine-tuned "
                           "sequence classifier (config.json architectures has no *ForSequenceClassification); "
                           "give a classifier, or use it as --backbone")
    return config


def load_hf_classifier(name: str, flag: str = "--teacher"):
    """(GatedEncoder in eval mode, tokenizer) holding the classifier's backbone and head weights, with fresh
    gates; its logits with every layer on are transformers' AutoModelForSequenceClassification's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = classifier_config(name, flag)
    location = classifier_location(name) or name
    hf = AutoModelForSequenceClassification.from_pretrained(location, attn_implementation="eager")
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, use_fast=True)
    except (OSError, ValueError) as exc:
        raise HadSkipError(f"{flag} {name} has no loadable tokenizer ({str(exc).splitlines()[0]})") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise HadSkipError(f"{flag} {name} has no fast tokenizer (tokenizer.json); export needs one")
    c = hf.config
    fam = family(c.model_type)
    model_config = ModelConfig(backbone=name, model_type=c.model_type, num_layers=c.num_hidden_layers,
                               hidden_size=c.hidden_size, num_heads=c.num_attention_heads, num_labels=c.num_labels,
                               hf_config=config.to_dict())
    model = GatedEncoder(model_config, hf.base_model)
    prefix = hf.base_model_prefix
    for ours, theirs in zip(fam.classifier_parts, fam.classifier, strict=True):
        path = theirs.format(prefix=prefix)
        try:
            src = hf.get_submodule(path)
        except AttributeError as exc:
            raise HadSkipError(f"{flag} {name}: no known classifier layout for {type(hf).__name__} ({path} is "
                               "missing)") from exc
        getattr(model.head, ours).load_state_dict(src.state_dict())
    return model.eval(), tokenizer



def id2label_names(hf_config: dict) -> list[str] | None:
    """The classifier's label names, label 0 first, when its id2label names them all (not LABEL_0, ...)."""
    raw = hf_config.get("id2label") or {}
    try:
        names = [str(raw[k]) for k in sorted(raw, key=int)]
    except (TypeError, ValueError):
        return None
    if not names or all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        return None
    return names
