"""The runtime's `torch` backend: the routing loop over the PyTorch units of a GatedEncoder (CPU or CUDA).

A core object implementing the runtime's Backend Protocol (hadskip.runtime.router), so it lives here, beside
the model, and the runtime finds it by name: pyproject.toml registers `open_backend` under the entry-point
group `hadskip.backends` as `torch`, and hadskip.runtime never imports this module itself.

The reference backend, and the GPU path on machines without onnxruntime-gpu or tensorrt: the units come
from a run dir (hadskip.modeling.checkpoint.load_run) or from MODEL/torch/{model.safetensors, model_config.json}
when the exporter wrote them. Needs the `train` extra (torch, transformers); importing this module does not.
On CUDA, unit calls of up to GRAPH_TOKENS tokens go through CUDA graphs per shape (hadskip.modeling.cuda_graphs)
unless cuda_graphs="off": at batch 1 launches, not kernels, set the time of a small layer. There, a routed batch
(no forced pattern) is one CUDA graph whose gates are decided on the device (hadskip.modeling.cuda_conditional,
`device_gates`), when cuda-bindings 13.x and a CUDA >= 12.4 driver are there; else one line says why, and the
router's host loop runs it.
dtype "fp16" / "bf16": embeddings and layers in that precision (LayerNorm and softmax accumulate in fp32 inside
torch's kernels), gates and head in fp32 on the fp32-cast hidden state; TIE_MARGIN says how close to its offset
a gate margin may be where a decision can differ from fp32. fp16 needs a CUDA device; bf16 runs on CPU too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hadskip.errors import HadSkipError, require

DTYPES = ("fp32", "fp16", "bf16")
DEVICE_GATES = ("auto", "dense", "compact", "off")  # auto: dense (the GPU check measures both; docs/gpu.md)
# |fp32 gate margin - offset| within which a half-precision backend's gate decision may differ from fp32's
# (tests/test_torch_dtype.py measures bf16 on CPU; fp16 has 3 more mantissa bits)
TIE_MARGIN = {"fp32": 0.0, "fp16": 0.05, "bf16": 0.25}


def load_units(path: str | Path):
    """(GatedEncoder in eval mode, RunInfo or None) from a run dir or a model dir with a torch/ folder."""
    require("torch", "train", "the torch backend")
    require("transformers", "train", "the torch backend")
    path = Path(path)
    if (path / "run.json").is_file():
        from hadskip.modeling.checkpoint import load_run

        model, _, info = load_run(path)
        return model, info
    tdir = path / "torch"
    if (tdir / "model.safetensors").is_file() and (tdir / "model_config.json").is_file():
        from hadskip.modeling.checkpoint import load_model

        return load_model(tdir), None
    raise HadSkipError(f"the torch backend needs a run dir (with run.json) or a model dir with "
                       f"torch/model.safetensors; {path} has neither")


def open_backend(path: Path, options) -> tuple[TorchBackend, object]:
    """The runtime's opener for backend="torch": (TorchBackend, hadskip.runtime.model_info.ModelInfo) for a run dir
    or a model dir with a torch/ folder. options: hadskip.runtime.backends.BackendOptions (threads, device,
    verify are used)."""
    from hadskip.runtime.model_info import ModelInfo, info_from_manifest
    from hadskip.runtime.routes import route_of_run
    from hadskip.runtime.dial import DialError, read_dial
    from hadskip.runtime.manifest import load_manifest

    torch = require("torch", "train", "the torch backend")
    if options.threads:
        torch.set_num_threads(int(options.threads))
    path = Path(path)
    model, run_info = load_units(path)
    if run_info is not None:  # a run dir
        labels = run_info.task.get("label_names") or [str(k) for k in range(model.config.num_labels)]
        info = ModelInfo(labels=list(labels), max_seq_len=int(run_info.max_len), num_layers=model.num_layers,
                         model_type=model.config.model_type, tokenizer_file=path / "tokenizer" / "tokenizer.json",
                         pad_token_id=model.config.hf_config.get("pad_token_id"),
                         type_vocab_size=model.config.hf_config.get("type_vocab_size"),
                         token_types=model.family.uses_token_types(model.config.hf_config), budget=run_info.budget,
                         source=str(path), route=route_of_run(run_info.kind))  # budgeted/early exit: not gated
        try:  # a dial that does not fit matters only when a budget is asked for
            info.dial = read_dial(path, path / "model.safetensors")
        except DialError as exc:
            info.dial_problem = str(exc)
    else:
        info = info_from_manifest(path, load_manifest(path, verify=options.verify))
    if not info.tokenizer_file.is_file():
        raise HadSkipError(f"{info.tokenizer_file} is missing (a fast tokenizer is needed)")
    return TorchBackend(model, options.device, cuda_graphs=options.cuda_graphs,
                        dtype=getattr(options, "dtype", "fp32")), info


class TorchBackend:
    """Hidden states are torch tensors on `device`; gate logits and logits come back as numpy."""

    name = "torch"

    def __init__(self, model, device: str | None = None, cuda_graphs: str = "auto", graphs=None, dtype: str = "fp32",
                 device_gates: str = "auto", gate_graphs=None):
        """cuda_graphs: "auto" (CUDA graphs for calls of at most GRAPH_TOKENS tokens on CUDA), "on" (any size),
        "off". `graphs`: a hadskip.modeling.cuda_graphs.UnitGraphs-like object to use instead (tests).
        dtype: "fp32", "fp16" or "bf16" (the model's embeddings and layers are converted in place).
        device_gates: on CUDA with graphs, how a routed batch of more than one row runs in one graph with its gates
        decided on the device ("auto" = "dense": every row, kept where open; "compact": the open rows gathered
        into row-count buckets; "off": the router's host loop); `gate_graphs`: a
        hadskip.modeling.cuda_conditional.DeviceGates-like object to use instead (tests)."""
        import torch

        self.torch = torch
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise HadSkipError(f"device {device!r} requested but torch sees no CUDA GPU")
        if dtype not in DTYPES:
            raise HadSkipError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if dtype == "fp16" and not device.startswith("cuda"):
            raise HadSkipError("dtype fp16 needs a CUDA device (on the CPU, use bf16)")
        if device_gates not in DEVICE_GATES:
            raise HadSkipError(f"device_gates must be one of {', '.join(DEVICE_GATES)}, got {device_gates!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.dtype = dtype
        self.hidden_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        if dtype != "fp32":
            for part in (self.model.embeddings, self.model.shared, *self.model.layers):
                part.to(self.hidden_dtype)
            self._gates = [_InFp32(g) for g in self.model.gates]
            self._head = _InFp32(self.model.head)
        else:
            self._gates, self._head = list(self.model.gates), self.model.head
        self.num_layers = model.num_layers
        self.name = f"torch-{self.device.type}" + ("" if dtype == "fp32" else f"-{dtype}")
        self._mask: tuple[np.ndarray, object] | None = None
        if cuda_graphs not in ("auto", "on", "off"):
            raise HadSkipError(f"cuda_graphs must be auto, on or off, got {cuda_graphs!r}")
        self.graphs = graphs
        if graphs is None and cuda_graphs != "off" and self.device.type == "cuda":
            from hadskip.modeling.cuda_graphs import GRAPH_TOKENS, UnitGraphs

            self.graphs = UnitGraphs(self.device, max_tokens=None if cuda_graphs == "on" else GRAPH_TOKENS)
        self.gate_graphs = gate_graphs
        self.device_gates_why: str | None = None  # why gates are decided on the host, when they are
        if gate_graphs is None and device_gates != "off" and cuda_graphs != "off" and self.device.type == "cuda":
            from hadskip.modeling.cuda_conditional import GRAPH_TOKENS, open_device_gates

            self.gate_graphs, self.device_gates_why = open_device_gates(
                self.units(), self.device, "compact" if device_gates == "compact" else "dense",
                max_tokens=None if cuda_graphs == "on" else GRAPH_TOKENS)

    def units(self):
        """The model's units as hadskip.modeling.cuda_conditional.Units (gates and head giving fp32)."""
        from hadskip.modeling.cuda_conditional import Units

        cfg = self.model.config
        return Units(self.model.embeddings, self._gates, list(self.model.layers), self._head, cfg.hidden_size,
                     cfg.num_labels, self.hidden_dtype)

    def run_routed(self, input_ids, attention_mask, token_type_ids, gate_offset=0.0, max_layers=None):
        """The whole routed batch in one graph, gates decided on the device: (logits, gates), or None (then the
        router runs its host loop). hadskip.runtime.router.route calls it first when a backend has it."""
        if self.gate_graphs is None:
            return None
        return self.gate_graphs.run(input_ids, attention_mask, token_type_ids, gate_offset, max_layers)

    def _unit(self, key, module, *args):
        return module(*args) if self.graphs is None else self.graphs.run(key, module, *args)

    def _t(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)

    def _m(self, mask: np.ndarray):
        if self._mask is not None and mask is self._mask[0]:
            return self._mask[1]
        return self._t(mask)

    def run_embeddings(self, input_ids, attention_mask, token_type_ids):
        with self.torch.inference_mode():
            self._mask = (attention_mask, self._t(attention_mask))
            return self._unit(("embeddings", 0), self.model.embeddings, self._t(input_ids), self._mask[1],
                              self._t(token_type_ids))

    def run_gate(self, i, h, attention_mask) -> np.ndarray:
        with self.torch.inference_mode():
            logits = self._unit(("gate", i), self._gates[i], h, self._m(attention_mask))  # (B, 2)
            return logits.float().cpu().numpy()

    def run_layer(self, i, h, attention_mask):
        with self.torch.inference_mode():
            return self._unit(("layer", i), self.model.layers[i], h, self._m(attention_mask))

    def gather(self, h, rows, t):
        with self.torch.inference_mode():
            return h[self._t(rows), :t]

    def scatter(self, h, rows, sub):
        with self.torch.inference_mode():
            h[self._t(rows), : sub.shape[1]] = sub
            return h

    def run_head(self, h, attention_mask) -> np.ndarray:
        with self.torch.inference_mode():
            return self._unit(("head", 0), self._head, h, self._m(attention_mask)).float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self._mask = None
        if self.graphs is not None:
            self.graphs.clear()
        if self.gate_graphs is not None:
            self.gate_graphs.close()
            self.gate_graphs = None


class _InFp32:
    """A unit (gate, head) run on the fp32 cast of a half-precision hidden state; its output in fp32."""

    def __init__(self, module):
        self.module = module

    def __call__(self, hidden, attention_mask):
        return self.module(hidden.float(), attention_mask).float()
