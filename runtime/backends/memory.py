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
import glob
import os
import sys
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


def _load_cudart() -> ctypes.CDLL:
    """libcudart: already loaded by onnxruntime-gpu/tensorrt, found by soname, or in the nvidia-* wheels."""
    names = ["libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0", "libcudart.so"]
    if sys.platform == "win32":
        names = [os.path.basename(p) for p in glob.glob(os.path.join(os.environ.get("CUDA_PATH", ""), "bin",
                                                                     "cudart64_*.dll"))]
    found = ctypes.util.find_library("cudart")
    if found:
        names.append(found)
    for base in sys.path:  # pip's nvidia-cuda-runtime-cu12 wheel
        names += sorted(glob.glob(os.path.join(base, "nvidia", "cuda_runtime", "lib", "libcudart.so*")))
    errors = []
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
    raise HadSkipError("the CUDA runtime library (libcudart) was not found; install the CUDA runtime "
                       "(pip install nvidia-cuda-runtime-cu12) or add its folder to LD_LIBRARY_PATH")


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
            "cudaGraphDestroy": [p], "cudaGraphExecDestroy": [p],
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

    def end_capture(self) -> int:
        graph, exe = ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self.lib.cudaStreamEndCapture(self.stream, ctypes.byref(graph)), "cudaStreamEndCapture")
        try:
            self._check(self.lib.cudaGraphInstantiateWithFlags(ctypes.byref(exe), graph, 0), "cudaGraphInstantiate")
        finally:
            self.lib.cudaGraphDestroy(graph)
        return exe.value

    def launch_graph(self, exe: int) -> None:
        self._check(self.lib.cudaGraphLaunch(exe, self.stream), "cudaGraphLaunch")

    def destroy_graph(self, exe: int) -> None:
        self.lib.cudaGraphExecDestroy(exe)
