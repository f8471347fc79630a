"""The GatedEncoder's units as export specs, and their export to ONNX with the TorchScript exporter.

torch >= 2.9 defaults `torch.onnx.export` to the dynamo exporter, which needs onnxscript; we pass
`dynamo=False` (the TorchScript exporter), which at opset >= 17 emits one LayerNormalization op per LN.
Imports torch at module level: import this module lazily.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from hadskip.export.spec import TOLERANCES, ExportSpec
from hadskip.runtime.manifest import IO

AXES = {0: "batch", 1: "seq"}


class LayerForExport(nn.Module):
    """model.layers[i] called in its family's export form (hadskip.modeling.families `call(..., export_form=True)`):
    for BERT-shaped layers the additive mask is built as HF's classic `(1 - mask) * min`.

    Same values as hadskip.modeling.encoder.additive_mask for a 0/1 mask (0 * min = 0), but in the
    Unsqueeze-Cast-Sub-Mul form that onnxruntime's Attention fusion recognises
    (onnxruntime/transformers/fusion_attention.py, mask paths). Validation compares the graph with
    model.layers[i] itself, so any difference would be caught.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer.layer  # the HF layer inside hadskip.modeling.encoder.Layer
        self.family = layer.family
        self.shared = layer.shared  # registered here, so the tracer sees them as this graph's own weights

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.family.call(self.layer, hidden, attention_mask, export_form=True, shared=self.shared)[0]


def _mask(batch: int, seq: int, g: torch.Generator) -> torch.Tensor:
    """(B, T) right-padded 0/1 mask: row 0 is full, the others have random lengths in 1..T."""
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    lengths[0] = seq
    return (torch.arange(seq)[None, :] < lengths[:, None]).long()


def id_sampler(vocab_size: int, pad_token_id: int, type_vocab_size: int):
    """(batch, seq, generator) -> (input_ids, attention_mask, token_type_ids), padded with pad_token_id."""
    lo = min(5, vocab_size - 1)  # past the usual special tokens
    other = lo if lo != pad_token_id else lo + 1

    def sample(batch: int, seq: int, g: torch.Generator):
        mask = _mask(batch, seq, g)
        ids = torch.randint(lo, vocab_size, (batch, seq), generator=g)
        ids[ids == pad_token_id] = other  # a pad id inside a row would move RoBERTa's positions
        ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_token_id))
        types = torch.randint(0, max(type_vocab_size, 1), (batch, seq), generator=g) * mask
        return ids, mask, types

    return sample


def hidden_sampler(hidden_size: int):
    """(batch, seq, generator) -> (hidden (B, T, H) ~ N(0, 1), attention_mask (B, T))."""

    def sample(batch: int, seq: int, g: torch.Generator):
        return torch.randn(batch, seq, hidden_size, generator=g), _mask(batch, seq, g)

    return sample


def build_specs(model, *, vocab_size: int, pad_token_id: int, type_vocab_size: int, opset: int = 17,
                fp16: bool = False, gates: bool = True, exits=None) -> list[ExportSpec]:
    """Specs for embeddings, every layer and gate, and the head, in model order (gates stay fp32).
    gates=False: no gate units (a static or early-exit model); exits: the exit heads of an early-exit model
    (exit i after layer i, as MODEL/exits/NN.onnx)."""
    model.eval()
    ids_sample = id_sampler(vocab_size, pad_token_id, type_vocab_size)
    hidden_sample = hidden_sampler(model.config.hidden_size)

    def spec(name, kind, path, module, sample, *, export_module=None, half=fp16):
        io = IO[kind]
        outputs_axes = {0: "batch"} if kind in ("gate", "head", "exit") else AXES
        axes = {n: dict(AXES) for n in io["inputs"]} | {n: dict(outputs_axes) for n in io["outputs"]}
        return ExportSpec(name=name, kind=kind, path=path, module=module, inputs=list(io["inputs"]),
                          outputs=list(io["outputs"]), dynamic_axes=axes, sample=sample,
                          export_module=export_module, opset=opset, fp16=half,
                          atol=TOLERANCES["fp16" if half else "fp32"][0],
                          rtol=TOLERANCES["fp16" if half else "fp32"][1])

    specs = [spec("embeddings", "embeddings", "embeddings.onnx", model.embeddings, ids_sample)]
    for i, (layer, gate) in enumerate(zip(model.layers, model.gates, strict=True)):
        if gates:
            specs.append(spec(f"gate_{i:02d}", "gate", f"gates/{i:02d}.onnx", gate, hidden_sample, half=False))
        specs.append(spec(f"layer_{i:02d}", "layer", f"layers/{i:02d}.onnx", layer, hidden_sample,
                          export_module=LayerForExport(layer).eval()))
        if exits is not None and i < len(exits):
            specs.append(spec(f"exit_{i:02d}", "exit", f"exits/{i:02d}.onnx", exits[i].eval(), hidden_sample))
    specs.append(spec("head", "head", "head.onnx", model.head, hidden_sample))
    return specs


def export_onnx(spec: ExportSpec, path: str | Path, dummy: tuple[int, int] = (2, 8)) -> None:
    """Trace `spec` at the dummy (batch, seq) and write the fp32 graph to `path`."""
    module = spec.export_module if spec.export_module is not None else spec.module
    module.eval()
    args = spec.sample(*dummy, torch.Generator().manual_seed(1234))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # the legacy-exporter notice, and tracer notes about Python bools of the HF code (no data-dependent
        # control flow reaches our graphs: validation at other shapes would catch one)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=spec.opset,
                          input_names=spec.inputs, output_names=spec.outputs, dynamic_axes=spec.dynamic_axes,
                          do_constant_folding=True)
    # torch.onnx.export restores the module's previous train/eval mode recursively; keep eval for sure
    module.eval()
    spec.module.eval()
