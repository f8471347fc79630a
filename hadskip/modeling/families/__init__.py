"""Encoder families: the one place where BERT, RoBERTa, ELECTRA, DistilBERT, ... differ (docs/architecture.md).

`family(model_type)` returns the adapter of a supported transformers model_type, or raises HadSkipError naming
why the type is refused. An adapter says

    embed(hf_embeddings, input_ids, token_type_ids)        -> (B, T, E)   the backbone's own embeddings module
    projection_path                                        ELECTRA's embeddings_project (E -> H) or None
    layers(hf_model)                                       -> the HF layer modules, in order
    call(layer, hidden, mask, output_attentions, export_form)
                                                           -> (hidden (B, T, H), attention probs or None); mask
                                                              is the plain (B, T) 0/1 mask, the family builds
                                                              what its layers take from it
    uses_token_types(hf_config)                            the token-type rule (the exporter writes the answer
                                                              into the manifest; the runtime reads only that)
    max_tokens(hf_config)                                  the longest input the position table embeds
    head_activation, head_dropout(hf_config), head_init    the classification head and its initialisation
    make_head(config, hf_model)                            the head unit (ModernBERT's holds the final norm)
    classifier, classifier_parts, base_key(key)            where our weights go in transformers'
                                                              XForSequenceClassification (baseline export, tests)

Needs torch (imported at module level): import it where the model is built.
Supported: BERT, RoBERTa (xlm-roberta, camembert), ELECTRA, DistilBERT, DeBERTa-v2/v3 (its relative position
embeddings, shared by all layers, are held once by the GatedEncoder and run inside every layer unit), ModernBERT
(rotary cos/sin computed inside every layer unit from positions 0..T-1, the sliding-window mask of its local
layers built there from the plain mask on the padded eager/sdpa path, and its final norm in the head unit, so it
follows whichever layer ran last).
Refused: ALBERT (one set of layer weights shared by every layer: there is no layer of its own to skip or to
export per layer), DeBERTa v1 (not ported), DeBERTa-v2 with a convolution layer or z_steps, ModernBERT loaded
for flash attention (the unpadded path), and everything that is not an encoder listed here.
"""

from __future__ import annotations


from __future__ import annotations

from hadskip.errors import HadSkipError
from hadskip.modeling.families.base import Family, additive_mask, call_layer
from hadskip.modeling.families.deberta import DebertaV2Family
from hadskip.modeling.families.distilbert import DistilBertFamily
from hadskip.modeling.families.modernbert import ModernBertFamily, ModernBertHead

__all__ = ["FAMILIES", "REFUSED", "SUPPORTED_MODEL_TYPES", "Family", "ModernBertHead", "additive_mask", "base_state",
           "call_layer", "family", "why_not"]


FAMILIES: tuple[Family, ...] = (
    Family("bert", ("bert",)),
    Family("roberta", ("roberta", "xlm-roberta", "camembert"), token_types=False, positions_after_padding=True,
           classifier=("classifier.dense", "classifier.out_proj")),
    Family("electra", ("electra",), projection_path="embeddings_project", head_activation="gelu", head_init=None,
           classifier=("classifier.dense", "classifier.out_proj"),
           dropout_keys=("classifier_dropout", "hidden_dropout_prob")),
    DistilBertFamily("distilbert", ("distilbert",), layer_path="transformer.layer", token_types=False,
                     head_activation="relu", head_init=None, classifier=("pre_classifier", "classifier"),
                     dropout_keys=("seq_classif_dropout",)),
    DebertaV2Family("deberta-v2", ("deberta-v2",), head_activation="gelu", head_init=None,
                    classifier=("pooler.dense", "classifier"), dropout_keys=("cls_dropout", "hidden_dropout_prob"),
                    shared_paths=(("rel_embeddings", "encoder.rel_embeddings"), ("rel_norm", "encoder.LayerNorm"))),
    ModernBertFamily("modernbert", ("modernbert",), layer_path="layers", token_types=False, head_activation="gelu",
                     head_init=None, classifier=("head.dense", "head.norm", "classifier"),
                     classifier_parts=("dense", "norm", "out"), dropout_keys=("classifier_dropout",)),
)
SUPPORTED_MODEL_TYPES = tuple(t for f in FAMILIES for t in f.model_types)

REFUSED = {
    "albert": "ALBERT shares one set of layer weights across all its layers, so there is no layer of its own to "
              "skip, train or export per layer",
    "deberta": "DeBERTa v1's relative position embeddings are shared by all layers and its adapter is not written "
               "yet (DeBERTa-v2/v3, model_type deberta-v2, is supported)",
}


def why_not(model_type: str) -> str:
    """Why `model_type` is refused, in words (the reason, or the list of what is supported)."""
    supported = ", ".join(SUPPORTED_MODEL_TYPES)
    if model_type in REFUSED:
        return f"{REFUSED[model_type]} (hadskip supports {supported})"
    return f"hadskip supports the encoder model types {supported}"


def family(model_type: str) -> Family:
    """The adapter of `model_type`; HadSkipError (one line) naming why another type is refused."""
    for f in FAMILIES:
        if model_type in f.model_types:
            return f
    raise HadSkipError(f"{model_type!r} models are not supported: {why_not(model_type)}")


def base_state(model) -> dict:
    """The backbone weights of a GatedEncoder as the state dict of transformers' base model (AutoModel)."""
    f = model.family
    return {k: v for key, v in model.state_dict().items() if (k := f.base_key(key)) is not None}
