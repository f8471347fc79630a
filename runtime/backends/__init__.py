"""Execution backends behind one small Protocol (hadskip.runtime.router.Backend), found by name in one registry.

    ort-cpu    onnxruntime on the CPU, numpy hidden states                       (always available)
    ort-cuda   onnxruntime-gpu, IOBinding on pre-allocated device buffers      (extra `gpu`)
    trt        TensorRT engines, shared scratch, CUDA graphs per shape bucket  (extra `trt`)
    torch      the PyTorch units of a run dir, CPU or CUDA: the reference      (extra `train`)

Every name maps to an opener, `opener(path, BackendOptions) -> (backend, hadskip.runtime.model_info.ModelInfo)`:
the built-ins (BUILTINS, openers in backends/builtin.py, imported by name on first use), those registered with
`register_backend`, and entry points of the group `hadskip.backends` in an installed distribution's metadata.
`torch` is such an entry point: hadskip's own pyproject.toml points it at
hadskip.modeling.torch_backend:open_backend, a core module this package never imports itself; the registry
holds its name and description only. `Runtime.load` makes one lookup (`find_opener`); the CLI's `--backend`
help lists `describe_backends()`. Each backend module imports its heavy dependency itself, only when opened.
"""

from __future__ import annotations

from dataclasses import dataclass
import importlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from hadskip.errors import HadSkipError

ENTRY_POINT_GROUP = "hadskip.backends"
OPTIMIZATIONS = ("disable", "basic", "extended", "all")  # onnxruntime's graph optimisation levels, by our names
DTYPES = ("fp32", "fp16", "bf16")  # BackendOptions.dtype: only the torch backend computes in another (--dtype)


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
    dtype: str = "fp32"  # the torch backend's compute precision: fp32, fp16 (CUDA), bf16

    def __post_init__(self) -> None:
        if self.threads is not None:
            check_count("threads", self.threads, 1)
        check_count("device_id", self.device_id, 0)
        check_count("max_batch", self.max_batch, 1)
        if self.dtype not in DTYPES:
            raise HadSkipError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


def check_count(name: str, value, low: int) -> None:
    """A backend option that counts something (threads, a device index, rows): an integer of at least `low`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise HadSkipError(f"{name} must be an integer >= {low}, got {value!r}")


Opener = Callable[[Path, BackendOptions], "tuple[Any, Any]"]  # -> (Backend, ModelInfo)


@dataclass(frozen=True)
class BackendEntry:
    """A backend name in the registry: its opener (a callable, "module:function" imported on first use, or None:
    the entry point of that name), one line for help texts, and whether it is built in (never replaced)."""

    name: str
    description: str
    opener: Opener | str | None
    builtin: bool = False


_HERE = "hadskip.runtime.backends.builtin"
BUILTINS = (
    BackendEntry("ort-cpu", "onnxruntime on the CPU", f"{_HERE}:open_ort_cpu", True),
    BackendEntry("ort-cuda", "onnxruntime on a CUDA GPU (extra gpu)", f"{_HERE}:open_ort_cuda", True),
    BackendEntry("trt", "TensorRT engines on a GPU (extra trt)", f"{_HERE}:open_trt", True),
    BackendEntry("torch", "the PyTorch units of a run dir, the reference (extra train)", None),
)
BACKENDS = tuple(e.name for e in BUILTINS)  # the backends hadskip itself provides
_REGISTRY: dict[str, BackendEntry] = {e.name: e for e in BUILTINS}


def register_backend(name: str, opener: Opener, description: str = "a plug-in backend") -> None:
    """Make `Runtime.load(path, backend=name)` call `opener(path, options)`. Built-in names cannot be replaced."""
    if name in _REGISTRY and _REGISTRY[name].builtin:
        raise HadSkipError(f"{name!r} is a built-in backend; register a plug-in under another name")
    _REGISTRY[name] = BackendEntry(name, description, opener)


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def describe_backends() -> dict[str, str]:
    """Every backend name this install can open -> one line about it: the built-ins first, then the registered
    plug-ins and the entry points (described by the object they name)."""
    out = {name: e.description for name, e in _REGISTRY.items()}
    for name, ep in _entry_points().items():
        out.setdefault(name, f"plug-in ({ep.value})")
    return out


def find_opener(name: str) -> Opener:
    """The opener of backend `name`, imported (a built-in's module, or an entry point) on first use."""
    entry = _REGISTRY.get(name)
    opener = entry.opener if entry is not None else None
    if callable(opener):
        return opener
    if isinstance(opener, str):
        module, attr = opener.split(":")
        found = getattr(importlib.import_module(module), attr)
    else:
        ep = _entry_points().get(name)
        if ep is None and entry is not None:  # ours, but the installed metadata lacks the entry point (an old install)
            raise HadSkipError(f"backend {name!r} is not registered in this install (no {ENTRY_POINT_GROUP} entry "
                               "point): reinstall hadskip, e.g. pip install -e '.[train]'")
        if ep is None:
            raise HadSkipError(f"unknown backend {name!r}; choose one of {', '.join(sorted(describe_backends()))}")
        found = ep.load()
    _REGISTRY[name] = BackendEntry(name, entry.description if entry else f"plug-in ({ep.value})", found,
                                   entry is not None and entry.builtin)
    return found
