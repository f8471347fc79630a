"""Runtime: a model dir (or, for the torch backend, a run dir) + a backend -> predictions with layers used.

    rt = Runtime.load(model_dir, backend="ort-cpu")
    rt.predict(texts_or_pairs, batch_size=32) -> Predictions   # sorted by length into batches, input order kept
    rt.run_batch(input_ids, attention_mask, token_type_ids, forced=None) -> BatchResult(logits, gates)

Not included: request queueing or dynamic batching across callers (the server builds that on run_batch).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hadskip.errors import HadSkipError
from hadskip.runtime.backends import BACKENDS
from hadskip.runtime.manifest import MANIFEST, Manifest, load_manifest
from hadskip.runtime.router import Backend, BatchResult, route
from hadskip.runtime.text import ROBERTA_LIKE, Encoded, TextEncoder, TextInput

log = logging.getLogger("hadskip.runtime")  # unconfigured logging prints a warning as one bare line on stderr


@dataclass
class ModelInfo:
    """What the runtime needs to know about the model, whichever kind of folder it came from."""

    labels: list[str]
    max_seq_len: int
    num_layers: int
    model_type: str
    tokenizer_file: Path
    pad_token_id: int | None = None
    budget: float | None = None
    manifest: Manifest | None = None  # None when loaded from a run dir (torch backend)


@dataclass
class Prediction:
    label: str
    label_id: int
    probs: dict[str, float]
    layers: list[int]  # indices (0-based) of the layers that ran for this input
    tokens: int  # tokens after truncation
    truncated: bool  # the input was longer than max_seq_len and was cut

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict:
        return {"label": self.label, "label_id": self.label_id, "probs": self.probs, "layers": self.layers,
                "num_layers": self.num_layers, "tokens": self.tokens, "truncated": self.truncated}


class Predictions(Sequence):
    """Results of `Runtime.predict` in input order: a sequence of Prediction plus whole-array views."""

    def __init__(self, label_names: list[str], probabilities: np.ndarray, gates: np.ndarray, tokens: np.ndarray,
                 truncated: np.ndarray):
        self.label_names = list(label_names)
        self.probabilities = probabilities  # (N, C) float32
        self.gates = gates  # (N, L) bool
        self.tokens = tokens  # (N,) int
        self.truncated = truncated  # (N,) bool

    def __len__(self) -> int:
        return len(self.probabilities)

    def __getitem__(self, n):
        if isinstance(n, slice):
            return [self[i] for i in range(*n.indices(len(self)))]
        p = self.probabilities[n]
        k = int(p.argmax())
        return Prediction(label=self.label_names[k], label_id=k,
                          probs={name: float(x) for name, x in zip(self.label_names, p, strict=True)},
                          layers=np.flatnonzero(self.gates[n]).tolist(), tokens=int(self.tokens[n]),
                          truncated=bool(self.truncated[n]))

    @property
    def label_ids(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1) if len(self) else np.zeros(0, dtype=np.int64)

    @property
    def labels(self) -> list[str]:
        return [self.label_names[k] for k in self.label_ids]

    @property
    def layers(self) -> list[list[int]]:
        return [np.flatnonzero(g).tolist() for g in self.gates]

    @property
    def num_layers(self) -> np.ndarray:
        return self.gates.sum(axis=1)  # (N,) layers used per input

    @property
    def avg_layers(self) -> float:
        return float(self.num_layers.mean()) if len(self) else 0.0

    def to_dicts(self) -> list[dict]:
        return [p.to_dict() for p in self]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Runtime:
    """A loaded model on one backend. Use `Runtime.load`."""

    def __init__(self, backend: Backend, info: ModelInfo):
        self.backend, self.info = backend, info
        types = info.manifest.backbone.get("type_vocab_size") if info.manifest else None
        zero_types = info.model_type in ROBERTA_LIKE or types == 1
        self.encoder = TextEncoder(info.tokenizer_file, info.max_seq_len, info.pad_token_id, zero_types)

    @classmethod
    def load(cls, model_dir: str | Path, backend: str = "ort-cpu", *, threads: int | None = None,
             device_id: int = 0, device: str | None = None, max_batch: int = 32, cuda_graphs: str = "auto",
             optimization: str = "all", verify: bool = True) -> Runtime:
        """Load a model dir on `backend`.

        threads: intra-op threads per ORT session (None: onnxruntime's default); for the torch backend,
        torch's (process-wide) intra-op thread count; trt has no host threads to set. device_id: the GPU for
        ort-cuda/trt. device: torch device for the torch backend ("cpu", "cuda:0"; None: CUDA if present).
        max_batch: rows the GPU buffers are first sized for (they grow on demand). cuda_graphs: trt only.
        optimization: ORT graph optimisation level (disable|basic|extended|all). verify: check sha256s.
        The torch backend also takes a run dir (hadskip.checkpoint) instead of a model dir.
        """
        path = Path(model_dir)
        if backend not in BACKENDS:
            raise HadSkipError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if backend == "torch":
            return cls._load_torch(path, device, threads)
        manifest = load_manifest(path, verify=verify)
        info = _info_from_manifest(path, manifest)
        note = precision_note(manifest.precision, backend)
        if note:
            log.warning(f"warning: {path}: {note}")
        if backend == "ort-cpu" and manifest.units.get("gate_form") == "fused":
            from hadskip.runtime.backends.ort_fused import OrtCpuFusedBackend

            be = OrtCpuFusedBackend(path, manifest, threads=threads, optimization=optimization)
        elif backend == "ort-cpu":
            from hadskip.runtime.backends.ort import OrtCpuBackend

            be = OrtCpuBackend(path, manifest, threads=threads, optimization=optimization)
        elif backend == "ort-cuda":
            from hadskip.runtime.backends.ort import OrtDeviceBackend

            be = OrtDeviceBackend(path, manifest, device="cuda", device_id=device_id, threads=threads,
                                  max_batch=max_batch, optimization=optimization)
        else:
            from hadskip.runtime.backends.trt import TrtBackend

            be = TrtBackend(path, manifest, device_id=device_id, max_batch=max_batch, cuda_graphs=cuda_graphs)
        return cls(be, info)

    @classmethod
    def _load_torch(cls, path: Path, device: str | None, threads: int | None = None) -> Runtime:
        from hadskip.runtime.backends.torch_backend import TorchBackend, load_units

        if threads:
            import torch

            torch.set_num_threads(int(threads))

        model, run_info = load_units(path)
        if run_info is not None:  # a run dir
            task = run_info.task
            labels = task.get("label_names") or [str(k) for k in range(model.config.num_labels)]
            info = ModelInfo(labels=list(labels), max_seq_len=int(run_info.max_len), num_layers=model.num_layers,
                             model_type=model.config.model_type, tokenizer_file=path / "tokenizer" / "tokenizer.json",
                             pad_token_id=model.config.hf_config.get("pad_token_id"), budget=run_info.budget)
        else:
            info = _info_from_manifest(path, load_manifest(path))
        if not info.tokenizer_file.is_file():
            raise HadSkipError(f"{info.tokenizer_file} is missing (a fast tokenizer is needed)")
        return cls(TorchBackend(model, device), info)

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.info.num_layers

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    @property
    def max_seq_len(self) -> int:
        return self.info.max_seq_len

    @property
    def backend_name(self) -> str:
        return self.backend.name

    # -- running ------------------------------------------------------------------------------------------
    def run_batch(self, input_ids, attention_mask, token_type_ids=None, forced=None) -> BatchResult:
        """One right-padded batch: logits (B, C) and gate decisions (B, L); `forced` (B, L) 0/1 sets the gates."""
        return route(self.backend, input_ids, attention_mask, token_type_ids, forced)

    def encode(self, inputs: Sequence[TextInput]) -> Encoded:
        return self.encoder.encode(inputs)

    def predict(self, inputs: Sequence[TextInput] | str, batch_size: int = 32) -> Predictions:
        """Classify texts (or (text, text_pair) tuples). Inputs are sorted by token length into batches,
        so padding costs little, and the results come back in input order."""
        if isinstance(inputs, str):
            inputs = [inputs]
        if batch_size < 1:
            raise HadSkipError(f"batch_size must be >= 1, got {batch_size}")
        enc = self.encode(list(inputs))
        n = len(enc.ids)
        lengths = enc.lengths
        probs = np.zeros((n, len(self.labels)), dtype=np.float32)
        gates = np.zeros((n, self.num_layers), dtype=bool)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            ids, mask, tt = self.encoder.pad_batch(enc, rows)
            res = self.run_batch(ids, mask, tt)
            if res.logits.shape[1] != len(self.labels):
                raise HadSkipError(f"the head gives {res.logits.shape[1]} logits for {len(self.labels)} labels")
            probs[rows], gates[rows] = softmax(res.logits), res.gates
        return Predictions(self.labels, probs, gates, lengths, enc.truncated)

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Runtime(backend={self.backend.name!r}, layers={self.num_layers}, labels={self.labels})"


def precision_note(precision: str, backend: str) -> str | None:
    """Why a model dir's precision is a poor fit for a backend, or None. fp16 on a CPU: onnxruntime's CPU
    kernels are fp32, so the fp16 graphs pay casts (measured ~11% slower than fp32 on 2 cores, issue 13)."""
    if precision == "fp16" and backend == "ort-cpu":
        return "fp16 graphs run slower than fp32 on a CPU backend; export without --fp16 (or with --quantize int8)"
    if precision == "int8" and backend != "ort-cpu":
        return f"int8 graphs are quantized for CPUs (ort-cpu); on {backend} export fp32 or --fp16 instead"
    return None


def _info_from_manifest(path: Path, manifest: Manifest) -> ModelInfo:
    if not manifest.labels:
        raise HadSkipError(f"{path / MANIFEST} lists no labels")
    return ModelInfo(labels=list(manifest.labels), max_seq_len=int(manifest.max_seq_len),
                     num_layers=manifest.num_layers, model_type=str(manifest.backbone.get("model_type", "bert")),
                     tokenizer_file=path / manifest.units["tokenizer"],
                     pad_token_id=manifest.backbone.get("pad_token_id"), budget=manifest.budget, manifest=manifest)
