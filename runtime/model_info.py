"""What the runtime knows about a loaded model (`ModelInfo`), read from a model dir's manifest; and which
precisions suit which backend. Used by Runtime (runtime/core.py) and by every backend's opener."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hadskip.errors import HadSkipError
from hadskip.runtime.dial import Dial
from hadskip.runtime.manifest import MANIFEST, Manifest, manifest_dial
from hadskip.runtime.text import manifest_token_types


@dataclass
class ModelInfo:
    """What the runtime needs to know about the model, whichever kind of folder it came from."""

    labels: list[str]
    max_seq_len: int
    num_layers: int
    model_type: str
    tokenizer_file: Path
    pad_token_id: int | None = None
    type_vocab_size: int | None = None  # None: not recorded (older model dirs)
    token_types: bool = True  # the model reads the tokenizer's token types (else every type is 0)
    budget: float | None = None
    manifest: Manifest | None = None  # None when loaded from a run dir (torch backend)
    dial: Dial | None = None  # the budget dial (manifest "dial", or RUN/dial.json); None: no dial
    source: str = ""  # the folder it was loaded from, for messages
    dial_problem: str = ""  # why a dial that is there cannot be used (raised when a budget is asked for)
    trained_avg_layers: dict | None = None  # {"dev", "test"} layers the run averaged when trained (None: unknown)
    route: str = "gated"  # "gated" | "static" | "early-exit" (hadskip.runtime.routes)
    teacher_layers: int | None = None  # static / early-exit: the teacher's layer count (None: not recorded)


def info_from_manifest(path: Path, manifest: Manifest) -> ModelInfo:
    if not manifest.labels:
        raise HadSkipError(f"{path / MANIFEST} lists no labels")
    return ModelInfo(labels=list(manifest.labels), max_seq_len=int(manifest.max_seq_len),
                     num_layers=manifest.num_layers, model_type=str(manifest.backbone.get("model_type", "bert")),
                     tokenizer_file=path / manifest.units["tokenizer"],
                     pad_token_id=manifest.backbone.get("pad_token_id"),
                     type_vocab_size=manifest.backbone.get("type_vocab_size"),
                     token_types=manifest_token_types(manifest.backbone), budget=manifest.budget,
                     manifest=manifest, dial=manifest_dial(manifest, path / MANIFEST), source=str(path),
                     trained_avg_layers=_trained_avg_layers((manifest.export or {}).get("trained_avg_layers")),
                     route=manifest.route_kind, teacher_layers=(manifest.route or {}).get("teacher_layers"))



def _trained_avg_layers(x) -> dict | None:
    """manifest export.trained_avg_layers, kept only when it is {split: number} (an optional, informative field)."""
    if not isinstance(x, dict):
        return None
    return {str(k): float(v) for k, v in x.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} or None


def precision_note(precision: str, backend: str) -> str | None:
    """Why a model dir's precision is a poor fit for a backend, or None. fp16 on a CPU: onnxruntime's CPU
    kernels are fp32, so the fp16 graphs pay casts (measured ~11% slower than fp32 on 2 cores, issue 13)."""
    if precision == "fp16" and backend == "ort-cpu":
        return "fp16 graphs run slower than fp32 on a CPU backend; export without --fp16 (or with --quantize int8)"
    if precision == "int8" and backend != "ort-cpu":
        return f"int8 graphs are quantized for CPUs (ort-cpu); on {backend} export fp32 or --fp16 instead"
    return None
