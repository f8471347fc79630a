"""`torch`: the routing loop over the PyTorch units of a GatedEncoder (CPU or CUDA).

The reference backend, and the GPU path on machines without onnxruntime-gpu or tensorrt: the units come
from a run dir (hadskip.checkpoint.load_run) or from MODEL/torch/{model.safetensors, model_config.json}
when the exporter wrote them. Needs the `train` extra (torch, transformers).
Not included: fp16/bf16 autocast (the torch backend computes in fp32, like the exported graphs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hadskip.errors import HadSkipError, require


def load_units(path: str | Path):
    """(GatedEncoder in eval mode, RunInfo or None) from a run dir or a model dir with a torch/ folder."""
    require("torch", "train", "the torch backend")
    require("transformers", "train", "the torch backend")
    path = Path(path)
    if (path / "run.json").is_file():
        from hadskip.checkpoint import load_run

        model, _, info = load_run(path)
        return model, info
    tdir = path / "torch"
    if (tdir / "model.safetensors").is_file() and (tdir / "model_config.json").is_file():
        from safetensors.torch import load_file

        from hadskip.backbone import empty_hf_model
        from hadskip.model import GatedEncoder, ModelConfig

        config = ModelConfig.from_dict(json.loads((tdir / "model_config.json").read_text()))
        model = GatedEncoder(config, empty_hf_model(config.hf_config))
        missing, unexpected = model.load_state_dict(load_file(str(tdir / "model.safetensors")), strict=False)
        missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
        if missing or unexpected:
            raise HadSkipError(f"{tdir / 'model.safetensors'} does not match its config "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        return model.eval(), None
    raise HadSkipError(f"the torch backend needs a run dir (with run.json) or a model dir with "
                       f"torch/model.safetensors; {path} has neither")


class TorchBackend:
    """Hidden states are torch tensors on `device`; gate bits and logits come back as numpy."""

    name = "torch"

    def __init__(self, model, device: str | None = None):
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

    def _t(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)

    def _m(self, mask: np.ndarray):
        if self._mask is not None and mask is self._mask[0]:
            return self._mask[1]
        return self._t(mask)

    def run_embeddings(self, input_ids, attention_mask, token_type_ids):
        with self.torch.inference_mode():
            self._mask = (attention_mask, self._t(attention_mask))
            return self.model.embeddings(self._t(input_ids), self._mask[1], self._t(token_type_ids))

    def run_gate(self, i, h, attention_mask) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model.gates[i](h, self._m(attention_mask)).float().cpu().numpy()  # (B, 2)

    def run_layer(self, i, h, attention_mask):
        with self.torch.inference_mode():
            return self.model.layers[i](h, self._m(attention_mask))

    def gather(self, h, rows, t):
        with self.torch.inference_mode():
            return h[self._t(rows), :t]

    def scatter(self, h, rows, sub):
        with self.torch.inference_mode():
            h[self._t(rows), : sub.shape[1]] = sub
            return h

    def run_head(self, h, attention_mask) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model.head(h, self._m(attention_mask)).float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self._mask = None
