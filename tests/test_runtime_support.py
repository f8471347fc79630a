"""Shared helpers for the runtime tests (no tests here): tiny model dirs, reference runs, inputs.

`cached_model` uses `hadskip.export.export_model` when it exists, else a small private exporter (one
`torch.onnx.export` per unit + `file_table` + `write_manifest`) that writes the same model-dir contract
(runtime/manifest.py).
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import pytest

from hadskip.modeling.families import FAMILIES

# every family (hadskip.modeling.families), and TinyBERT's head size 26
ARCHS = [*(f.name for f in FAMILIES), "tinybert"]


def _private_export(run_dir: Path, out_dir: Path) -> Path:
    import torch

    from hadskip.modeling.checkpoint import load_run
    from hadskip.runtime.manifest import IO, Manifest, file_table, write_manifest

    model, tokenizer, info = load_run(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "layers").mkdir(exist_ok=True)
    (out_dir / "gates").mkdir(exist_ok=True)
    b, t, hs = 2, 5, model.config.hidden_size
    ids = torch.randint(5, 20, (b, t))
    mask = torch.ones(b, t, dtype=torch.long)
    h = torch.randn(b, t, hs)
    bt = {0: "batch", 1: "seq"}

    def export(module, args, rel, kind):
        names = IO[kind]
        axes = {n: bt for n in names["inputs"]}
        axes[names["outputs"][0]] = {0: "batch"} if kind in ("gate", "head") else bt
        torch.onnx.export(module, args, str(out_dir / rel), input_names=names["inputs"],
                          output_names=names["outputs"], dynamic_axes=axes, opset_version=17, dynamo=False)
        return rel

    with torch.no_grad():
        units = {
            "embeddings": export(model.embeddings, (ids, mask, torch.zeros_like(ids)), "embeddings.onnx",
                                 "embeddings"),
            "layers": [export(m, (h, mask), f"layers/{i:02d}.onnx", "layer") for i, m in enumerate(model.layers)],
            "gates": [export(m, (h, mask), f"gates/{i:02d}.onnx", "gate") for i, m in enumerate(model.gates)],
            "head": export(model.head, (h, mask), "head.onnx", "head"),
            "tokenizer": "tokenizer.json", "engines": None, "baseline": None,
        }
    shutil.copy(run_dir / "tokenizer" / "tokenizer.json", out_dir / "tokenizer.json")
    c = model.config
    rels = [units["embeddings"], units["head"], units["tokenizer"], *units["layers"], *units["gates"]]
    manifest = Manifest(
        backbone={"name": c.backbone, "model_type": c.model_type, "num_layers": c.num_layers,
                  "hidden_size": c.hidden_size, "num_heads": c.num_heads,
                  "vocab_size": c.hf_config.get("vocab_size"), "pad_token_id": tokenizer.pad_token_id},
        task=info.task, labels=list(info.task["label_names"]), max_seq_len=info.max_len, precision="fp32",
        engine="onnx", opset=17, units=units, files=file_table(out_dir, rels), budget=info.budget)
    write_manifest(out_dir, manifest)
    return out_dir


def export_dir(run_dir: Path, out_dir: Path, with_baseline: bool = False, optimize: bool = False) -> Path:
    """The exporter without its own validation (these tests compare every unit against PyTorch anyway)."""
    try:
        from hadskip.export import export_model
    except ImportError:
        return _private_export(run_dir, out_dir)
    export_model(run_dir, out_dir, with_baseline=with_baseline, optimize=optimize, validate=False, progress=False)
    return out_dir


_CACHE: dict[tuple, tuple[Path, Path]] = {}


def cached_model(tmp_path_factory, arch: str = "bert", seed: int = 0, with_baseline: bool = False,
                 max_len: int = 32, optimize: bool = False) -> tuple[Path, Path]:
    """(run_dir, model_dir) of a tiny random gated model, built once per test session and shared by modules."""
    from hadskip.testing import tiny_run

    import torch

    key = (arch, seed, with_baseline, max_len, optimize)
    if key not in _CACHE:
        root = tmp_path_factory.mktemp(f"{arch}-{seed}")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # see reference()
        try:
            run = tiny_run(root / "run", arch=arch, seed=seed, max_len=max_len)
            _CACHE[key] = (run, export_dir(run, root / "model", with_baseline=with_baseline, optimize=optimize))
        finally:
            torch.set_num_threads(threads)
    return _CACHE[key]


@functools.lru_cache(maxsize=8)
def _load(run_dir: Path):
    from hadskip.modeling.checkpoint import load_run

    return load_run(run_dir)[0]


def reference(run_dir: Path, ids, mask, tt, forced=None):
    """(logits, gates) of the PyTorch gated model in "route" mode: the reference for every backend."""
    import torch

    model = _load(Path(run_dir))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: OpenMP threads only contend (100x slower on a busy 2-core box)
    try:
        with torch.no_grad():
            out = model(torch.as_tensor(ids), torch.as_tensor(mask), torch.as_tensor(tt), gates="route",
                        forced=None if forced is None else torch.as_tensor(forced))
    finally:
        torch.set_num_threads(threads)
    return out.logits.numpy(), out.gates.numpy().astype(bool)


def padded_batch(lengths: list[int], vocab: int, seed: int = 0, pad_id: int = 0, cls_id: int = 2, sep_id: int = 3):
    """Right-padded (ids, mask, token_type_ids) with rows of the given lengths and random word ids."""
    rng = np.random.default_rng(seed)
    b, t = len(lengths), max(lengths)
    ids = np.full((b, t), pad_id, dtype=np.int64)
    mask = np.zeros((b, t), dtype=np.int64)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.integers(5, vocab, n)
        ids[r, 0], ids[r, n - 1] = cls_id, sep_id
        mask[r, :n] = 1
    return ids, mask, np.zeros_like(ids)


@pytest.fixture(scope="module", autouse=False)
def one_torch_thread():
    """torch on one thread for a module (the torch backend on tiny models), restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fake_triton(monkeypatch) -> None:
    """Triton's python backend module, faked: a request is {input name: array}; responses keep their tensors."""
    import sys
    import types

    fake = types.ModuleType("triton_python_backend_utils")

    class TritonError:
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, message, code=None):
            self.message, self.code = message, code

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.outputs, self.error = {t.name: t.value for t in output_tensors}, error

    class Tensor:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def as_numpy(self):
            return self.value

    fake.TritonError, fake.InferenceResponse, fake.Tensor = TritonError, InferenceResponse, Tensor
    fake.get_input_tensor_by_name = lambda request, name: (Tensor(name, request[name]) if name in request else None)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    monkeypatch.delitem(sys.modules, "hadskip.triton.model", raising=False)
