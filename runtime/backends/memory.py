"""Raw device memory for the pointer backends (ort-cuda, trt): allocate, copy, and a stream, nothing more.

`CudaMemory` calls the CUDA runtime (libcudart, which onnxruntime-gpu and tensorrt already need) through
ctypes, so the GPU backends need neither torch nor cupy nor cuda-python. `HostMemory` has the same interface
over host memory, so the whole pointer backend (buffers, gather/scatter by row runs, IOBinding with raw
pointers) is tested on CPU.
Not included: pinned host buffers and multi-GPU streams (one device, one stream per backend).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import re
import sys
from pathlib import Path
from typing import Protocol

import numpy as np

from hadskip.errors import HadSkipError

H2D, D2H, D2D = 1, 2, 3  # cudaMemcpyKind


class Memory(Protocol):
    device: str  # onnxruntime device name of the pointers: "cuda" | "cpu"
    stream: int  # cudaStream_t as an int (0 for host memory)

    def alloc(self, nbytes: int) -> int: ...

    def free(self, ptr: int) -> None: ...

    def h2d(self, dst: int, src: np.ndarray) -> None: ...

    def d2h(self, dst: np.ndarray, src: int) -> None: ...  # returns once `dst` holds the data

    def copy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int) -> None: ...

    def synchronize(self) -> None: ...


class HostMemory:
    """Memory's interface over numpy-owned host buffers (tests, and debugging without a GPU)."""

    device = "cpu"
    stream = 0

    def __init__(self) -> None:
        self._blocks: dict[int, np.ndarray] = {}

    def alloc(self, nbytes: int) -> int:
        block = np.empty(max(int(nbytes), 1) + 256, dtype=np.uint8)
        ptr = (block.ctypes.data + 255) // 256 * 256  # aligned like cudaMalloc
        self._blocks[ptr] = block
        return ptr

    def free(self, ptr: int) -> None:
        self._blocks.pop(ptr, None)

    def h2d(self, dst: int, src: np.ndarray) -> None:
        src = np.ascontiguousarray(src)
        ctypes.memmove(dst, src.ctypes.data, src.nbytes)

    def d2h(self, dst: np.ndarray, src: int) -> None:
        ctypes.memmove(dst.ctypes.data, src, dst.nbytes)

    def copy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int) -> None:
        for r in range(height):
            ctypes.memmove(dst + r * dpitch, src + r * spitch, width)

    def synchronize(self) -> None:
        pass


def loaded_cudart(maps: str | None = None) -> list[str]:
    """Paths of the libcudart already mapped into this process (Linux /proc/self/maps; [] elsewhere).

    onnxruntime-gpu (after preload_dlls), tensorrt and torch load their own libcudart; using that very file
    keeps one CUDA runtime in the process, whatever its major version.
    """
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return []
    paths = []
    for line in maps.splitlines():
        path = line.split(None, 5)[5].strip() if len(line.split(None, 5)) == 6 else ""
        if os.path.basename(path).startswith("libcudart.so") and path not in paths:
            paths.append(path)
    return paths


@functools.lru_cache(maxsize=1)
def wanted_cuda_majors() -> tuple[int, ...]:
    """CUDA major versions that onnxruntime-gpu and tensorrt here were built for, in that order (maybe none)."""
    majors: list[int] = []
    try:  # onnxruntime-gpu records it at build time, e.g. "12.2"
        from onnxruntime.capi import build_and_package_info as info

        v = str(getattr(info, "cuda_version", "") or "")
        if v.split(".")[0].isdigit():
            majors.append(int(v.split(".")[0]))
    except ImportError:
        pass
    from importlib import metadata

    try:  # the TensorRT wheels carry the CUDA major in their names: tensorrt-cu12, tensorrt_cu13_libs, ...
        names = [d.metadata["Name"] or "" for d in metadata.distributions()]
    except Exception:  # noqa: BLE001 - a broken dist-info must not stop the search
        names = []
    for name in names:
        m = re.match(r"tensorrt[-_]cu(\d+)", name.lower())
        if m and int(m.group(1)) not in majors:
            majors.append(int(m.group(1)))
    return tuple(majors)


def cudart_candidates(loaded: list[str], majors, site_dirs: list[str], found: str | None = None) -> list[str]:
    """Where to look for libcudart, first to last: already loaded; then per CUDA major (the wanted ones
    first, then 13, 12, 11) its soname and the pip wheels' copies (nvidia/cu13/lib for CUDA 13,
    nvidia/cuda_runtime/lib for 12 and 11); then any libcudart.so."""
    out = list(loaded)
    for major in [*majors, *(m for m in (13, 12, 11) if m not in majors)]:
        out.append("libcudart.so.11.0" if major == 11 else f"libcudart.so.{major}")
        for base in site_dirs:
            out += sorted(glob.glob(os.path.join(base, "nvidia", f"cu{major}", "lib", "libcudart.so*")))
            out += sorted(glob.glob(os.path.join(base, "nvidia", "cuda_runtime", "lib", f"libcudart.so.{major}*")))
    out.append("libcudart.so")
    if found:
        out.append(found)
    return list(dict.fromkeys(out))


def _load_cudart() -> ctypes.CDLL:
    """libcudart: the one already loaded, else the CUDA major onnxruntime-gpu / tensorrt need (see above)."""
    if sys.platform == "win32":
        names = [os.path.basename(p) for p in glob.glob(os.path.join(os.environ.get("CUDA_PATH", ""), "bin",
                                                                     "cudart64_*.dll"))]
    else:
        names = cudart_candidates(loaded_cudart(), wanted_cuda_majors(), [p for p in sys.path if os.path.isdir(p)],
                                  ctypes.util.find_library("cudart"))
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise HadSkipError("the CUDA runtime library (libcudart) was not found; install the CUDA runtime "
                       "(pip install 'hadskip[gpu]') or add its folder to LD_LIBRARY_PATH")


def cuda_device_count() -> int:
    """NVIDIA GPUs the CUDA runtime sees; 0 without a driver, a GPU or libcudart (never raises)."""
    try:
        lib = _load_cudart()
    except HadSkipError:
        return 0
    n = ctypes.c_int(0)
    try:
        return n.value if lib.cudaGetDeviceCount(ctypes.byref(n)) == 0 else 0
    except (AttributeError, OSError):
        return 0


class CudaMemory:
    """Device memory and one stream on `device_id`, through the CUDA runtime API (ctypes)."""

    device = "cuda"

    def __init__(self, device_id: int = 0):
        self.lib = lib = _load_cudart()
        p, sz, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        sigs = {
            "cudaSetDevice": [i], "cudaGetDeviceCount": [ctypes.POINTER(i)],
            "cudaMalloc": [ctypes.POINTER(p), sz], "cudaFree": [p],
            "cudaMemcpyAsync": [p, p, sz, i, p], "cudaMemcpy2DAsync": [p, sz, p, sz, sz, sz, i, p],
            "cudaStreamCreateWithFlags": [ctypes.POINTER(p), ctypes.c_uint], "cudaStreamSynchronize": [p],
            "cudaStreamDestroy": [p], "cudaStreamBeginCapture": [p, i], "cudaStreamEndCapture": [p, ctypes.POINTER(p)],
            "cudaGraphInstantiateWithFlags": [ctypes.POINTER(p), p, ctypes.c_ulonglong], "cudaGraphLaunch": [p, p],
            "cudaGraphDestroy": [p], "cudaGraphExecDestroy": [p], "cudaGetLastError": [],
        }
        for name, args in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, i
        lib.cudaGetErrorString.argtypes, lib.cudaGetErrorString.restype = [i], ctypes.c_char_p
        n = i(0)
        if lib.cudaGetDeviceCount(ctypes.byref(n)) != 0 or n.value <= device_id:
            raise HadSkipError(f"no CUDA device {device_id} (found {n.value}); the GPU backends need an NVIDIA GPU")
        self._check(lib.cudaSetDevice(device_id), "cudaSetDevice")
        s = p()
        self._check(lib.cudaStreamCreateWithFlags(ctypes.byref(s), 1), "cudaStreamCreate")  # 1: non-blocking
        self.stream = s.value or 0
        self.device_id = device_id

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise HadSkipError(f"{what} failed: CUDA error {code} ({self.lib.cudaGetErrorString(code).decode()})")

    def alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), max(int(nbytes), 1)), f"cudaMalloc({nbytes})")
        return ptr.value

    def free(self, ptr: int) -> None:
        self._check(self.lib.cudaFree(ptr), "cudaFree")

    def h2d(self, dst: int, src: np.ndarray) -> None:
        src = np.ascontiguousarray(src)
        # pageable source: the call returns once the data is staged, so `src` may be freed right after
        self._check(self.lib.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, H2D, self.stream), "cudaMemcpy H2D")

    def d2h(self, dst: np.ndarray, src: int) -> None:
        self._check(self.lib.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, D2H, self.stream), "cudaMemcpy D2H")
        self.synchronize()

    def copy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int) -> None:
        self._check(self.lib.cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, D2D, self.stream),
                    "cudaMemcpy2D D2D")

    def synchronize(self) -> None:
        self._check(self.lib.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    # CUDA graphs (used by the trt backend)
    def begin_capture(self) -> None:
        self._check(self.lib.cudaStreamBeginCapture(self.stream, 2), "cudaStreamBeginCapture")  # 2: relaxed

    def end_capture(self) -> int | None:
        """End the capture and instantiate it: the graph exec, or None when the capture failed (then the
        partial graph is destroyed and the (non-sticky) CUDA error cleared, as TensorRT's samples do)."""
        graph, exe = ctypes.c_void_p(), ctypes.c_void_p()
        if self.lib.cudaStreamEndCapture(self.stream, ctypes.byref(graph)) != 0:
            self._drop_capture(graph)
            return None
        try:
            code = self.lib.cudaGraphInstantiateWithFlags(ctypes.byref(exe), graph, 0)
        finally:
            self.lib.cudaGraphDestroy(graph)  # the exec keeps what it needs
        if code != 0 or not exe.value:
            self.lib.cudaGetLastError()
            return None
        return exe.value

    def abort_capture(self) -> None:
        """End a capture whose enqueue failed: nothing is instantiated, the captured graph is destroyed and
        the CUDA error cleared, so the stream runs plainly again."""
        graph = ctypes.c_void_p()
        self.lib.cudaStreamEndCapture(self.stream, ctypes.byref(graph))
        self._drop_capture(graph)

    def _drop_capture(self, graph: ctypes.c_void_p) -> None:
        if graph.value:  # a capture invalidated by CUDA returns no graph; one that TensorRT failed returns one
            self.lib.cudaGraphDestroy(graph)
        self.lib.cudaGetLastError()

    def launch_graph(self, exe: int) -> None:
        self._check(self.lib.cudaGraphLaunch(exe, self.stream), "cudaGraphLaunch")

    def destroy_graph(self, exe: int) -> None:
        self.lib.cudaGraphExecDestroy(exe)
