"""cuda-bindings 13.x (cuda.bindings.driver / runtime / nvrtc, imported only here): loading them, whether gates can
be decided on the device (`why_not`: one line, or None), and `call`, which turns a failed status into
ConditionalGraphError.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch

MIN_CUDA_IF = 12040  # CUDA version (driver and runtime) with IF conditional nodes
MIN_CUDA_SWITCH = 12080  # ... with SWITCH nodes


class ConditionalGraphError(RuntimeError):
    """A CUDA call of the builder failed (the caller falls back to the host path)."""


def load_bindings() -> SimpleNamespace:
    """cuda-bindings 13.x as SimpleNamespace(driver, runtime, nvrtc, version); ImportError saying why not."""
    try:
        import cuda.bindings
        from cuda.bindings import driver, nvrtc, runtime
    except ImportError as exc:
        raise ImportError(f"cuda-bindings is not installed ({exc}); pip install 'cuda-bindings>=13,<14'") from None
    version = str(getattr(cuda.bindings, "__version__", "0"))
    if version.split(".")[0] != "13":
        raise ImportError(f"cuda-bindings {version} is installed; this path is written for 13.x")
    return SimpleNamespace(driver=driver, runtime=runtime, nvrtc=nvrtc, version=version)


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def why_not(device: torch.device, mode: str = "dense", api: SimpleNamespace | None = None,
            loader: Callable[[], SimpleNamespace] = load_bindings, gpu: bool | None = None) -> str | None:
    """None when gates can be decided on `device` in `mode`, else why not (one line). `api`: cuda-bindings
    (None: `loader()`); `gpu`: whether there is a CUDA GPU (None: ask torch)."""
    if gpu is None:
        gpu = device.type == "cuda" and torch.cuda.is_available()
    if not gpu:
        return "no CUDA GPU"
    if api is None:
        try:
            api = loader()
        except ImportError as exc:
            return str(exc)
    need = MIN_CUDA_SWITCH if mode == "compact" else MIN_CUDA_IF
    what = "SWITCH" if mode == "compact" else "IF"
    try:
        call(api.driver, "cuInit", 0)
        versions = {"driver": call(api.driver, "cuDriverGetVersion"),
                    "runtime": call(api.runtime, "cudaRuntimeGetVersion")}
    except Exception as exc:  # noqa: BLE001 - a missing libcuda raises the loader's own error class
        return f"the CUDA driver did not answer through cuda-bindings: {first_line(exc)}"
    for name, v in versions.items():
        if int(v) < need:
            return f"the CUDA {name} is {_cuda_version(int(v))}; {what} conditional nodes need {_cuda_version(need)}"
    try:
        call(api.nvrtc, "nvrtcVersion")
    except Exception as exc:  # noqa: BLE001 - libnvrtc not found raises the loader's error
        return f"NVRTC (libnvrtc, which compiles the gate kernel) is not usable: {first_line(exc)}"
    return None


def first_line(exc: BaseException) -> str:
    """An exception in one line: its type and its message's first line."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def call(module, name: str, *args):
    """module.name(*args), whose first item is a status (CUresult, nvrtcResult): the rest, or
    ConditionalGraphError naming the call and the status."""
    result = getattr(module, name)(*args)
    status, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if int(status) != 0:
        raise ConditionalGraphError(f"{name} failed: {getattr(status, 'name', status)}")
    return rest[0] if len(rest) == 1 else (rest or None)
