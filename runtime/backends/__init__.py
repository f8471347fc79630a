"""Execution backends behind one small Protocol (hadskip.runtime.router.Backend), found by name.

    ort-cpu    onnxruntime on the CPU, numpy hidden states                       (always available)
    ort-cuda   onnxruntime-gpu, IOBinding on pre-allocated device buffers      (extra `gpu`)
    trt        TensorRT engines, shared scratch, CUDA graphs per shape bucket  (extra `trt`)
    torch      the PyTorch units of a run dir, CPU or CUDA: the reference      (extra `train`)

The first three live here and are opened by hadskip.runtime.core. Any other name is a plug-in: an opener
registered with `register_backend`, or else an entry point of the group `hadskip.backends` in an installed
distribution's metadata. `torch` is such a plug-in: hadskip's own pyproject.toml points it at
hadskip.modeling.torch_backend:open_backend, a core module this package never imports itself.
An opener is `opener(path, BackendOptions) -> (backend, hadskip.runtime.core.ModelInfo)`.
Each backend module imports its heavy dependency itself, only when that backend is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from hadskip.errors import HadSkipError

BACKENDS = ("ort-cpu", "ort-cuda", "trt", "torch")
BUILTIN = BACKENDS[:3]  # opened by hadskip.runtime.core from a model dir
ENTRY_POINT_GROUP = "hadskip.backends"
OPTIMIZATIONS = ("disable", "basic", "extended", "all")  # onnxruntime's graph optimisation levels, by our names


@dataclass
class BackendOptions:
    """Runtime.load's backend settings (see its docstring); a backend ignores those it has no use for."""

    threads: int | None = None
    device_id: int = 0
    device: str | None = None
    max_batch: int = 32
    cuda_graphs: str = "auto"
    optimization: str = "all"
    verify: bool = True

    def __post_init__(self) -> None:
        for name, low in (("threads", 1), ("device_id", 0), ("max_batch", 1)):
            v = getattr(self, name)
            if v is None and name == "threads":
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise HadSkipError(f"{name} must be an integer >= {low}, got {v!r}")


Opener = Callable[[Path, BackendOptions], "tuple[Any, Any]"]  # -> (Backend, ModelInfo)
_OPENERS: dict[str, Opener] = {}


def register_backend(name: str, opener: Opener) -> None:
    """Make `Runtime.load(path, backend=name)` call `opener(path, options)`. Built-in names cannot be replaced."""
    if name in BUILTIN:
        raise HadSkipError(f"{name!r} is a built-in backend; register a plug-in under another name")
    _OPENERS[name] = opener


def plugin_opener(name: str) -> Opener:
    """The opener of a plug-in backend: registered, or loaded from its entry point on first use."""
    if name not in _OPENERS:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if found:
            _OPENERS[name] = found[0].load()
        elif name in BACKENDS:  # ours, but the installed metadata lacks the entry point (an old install)
            raise HadSkipError(f"backend {name!r} is not registered in this install (no {ENTRY_POINT_GROUP} entry "
                               "point): reinstall hadskip, e.g. pip install -e '.[train]'")
        else:
            names = sorted(set(BACKENDS) | set(_OPENERS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
            raise HadSkipError(f"unknown backend {name!r}; choose one of {', '.join(names)}")
    return _OPENERS[name]
