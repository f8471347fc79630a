"""The runtime's `torch` backend: the routing loop over the PyTorch units of a GatedEncoder (CPU or CUDA).

A core object implementing the runtime's Backend Protocol (hadskip.runtime.router), so it lives here, beside
the model, and the runtime finds it by name: pyproject.toml registers `open_backend` under the entry-point
group `hadskip.backends` as `torch`, and hadskip.runtime never imports this module itself.

The reference backend, and the GPU path on machines without onnxruntime-gpu or tensorrt: the units come
from a run dir (hadskip.modeling.checkpoint.load_run) or from MODEL/torch/{model.safetensors, model_config.json}
when the exporter wrote them. Needs the `train` extra (torch, transformers); importing this module does not.
On CUDA, unit calls of up to GRAPH_TOKENS tokens go through CUDA graphs per shape (hadskip.modeling.cuda_graphs)
unless cuda_graphs="off": at batch 1 launches, not kernels, set the time of a small layer.
Not included: fp16/bf16 autocast (the torch backend computes in fp32, like the exported graphs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hadskip.errors import HadSkipError, require


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
    return TorchBackend(model, options.device, cuda_graphs=options.cuda_graphs), info


class TorchBackend:
    """Hidden states are torch tensors on `device`; gate logits and logits come back as numpy."""

    name = "torch"

    def __init__(self, model, device: str | None = None, cuda_graphs: str = "auto", graphs=None):
        """cuda_graphs: "auto" (CUDA graphs for calls of at most GRAPH_TOKENS tokens on CUDA), "on" (any size),
        "off". `graphs`: a hadskip.modeling.cuda_graphs.UnitGraphs-like object to use instead (tests)."""
        import torch

        self.torch = torch
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise HadSkipError(f"device {device!r} requested but torch sees no CUDA GPU")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.num_layers = model.num_layers
        self.name = f"torch-{self.device.type}"
        self._mask: tuple[np.ndarray, object] | None = None
        if cuda_graphs not in ("auto", "on", "off"):
            raise HadSkipError(f"cuda_graphs must be auto, on or off, got {cuda_graphs!r}")
        self.graphs = graphs
        if graphs is None and cuda_graphs != "off" and self.device.type == "cuda":
            from hadskip.modeling.cuda_graphs import GRAPH_TOKENS, UnitGraphs

            self.graphs = UnitGraphs(self.device, max_tokens=None if cuda_graphs == "on" else GRAPH_TOKENS)

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
            logits = self._unit(("gate", i), self.model.gates[i], h, self._m(attention_mask))  # (B, 2)
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
            return self._unit(("head", 0), self.model.head, h, self._m(attention_mask)).float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self._mask = None
        if self.graphs is not None:
            self.graphs.clear()
