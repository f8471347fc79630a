"""Gates decided on the GPU: per batch shape, one CUDA graph whose conditional nodes run layer i only where gate i
opens, so a routed batch is one graph launch with no host round trip (docs/gpu.md).

    gates = DeviceGates(units, device)                    # TorchBackend makes one on CUDA when it can
    out = gates.run(ids, mask, tt, gate_offset, max_layers)  # (logits (B, C), gates (B, L)), or None: host path

The outer graph, assembled with cuda-bindings 13.x (cuda.bindings.driver / runtime / nvrtc, imported only here):

    embeddings -> gate 0 -> kernel 0 -> IF/SWITCH 0 -> gate 1 -> kernel 1 -> ... -> head      (a chain)
                                          body: layer 0's graph (a child-graph node)

Every unit is captured once by torch (`torch.cuda.CUDAGraph(keep_graph=True)`, `raw_cuda_graph()`) reading and
writing static buffers, and added as a child-graph node; the outer graph is instantiated once per shape and
launched per call. The gate kernel (KERNEL_SOURCE, compiled by NVRTC, one thread) holds the one gate rule in C
(RULE_SOURCE): open iff logit_open - logit_closed > offset, the margin in double from the fp32 logits, so ties
and NaN margins close, then the per-row cap (runtime.router.cap_gates); it writes each row's decision and sets the
conditional. tests/test_cuda_conditional.py compiles the same C on the host and pins it to
hadskip.runtime.router.gate_open (NaN, +-inf, ties, one-ulp gaps, offsets), and runs this builder against a
stand-in of cuda.bindings that records and executes every call.

Batch 1 (and mode "dense"): one IF node per layer, whose body runs the layer on every row and keeps its output
only in the open rows (`where`; at batch 1 a plain copy). Mode "compact" (batch > 1): a SWITCH node over row-count
buckets (1, 2, 4, ..., B): the kernel picks the smallest bucket holding the open rows, case k gathers them in
static shape (compact_rows: no host sync), runs the layer captured at that many rows and scatters back only the
valid ones (the padding slots go to a scratch row B). No capacity dropping: every row's decision is the rule's.

Falls back to the host path (runtime.router.route) with one line saying why (`why_not`) when there is no CUDA
GPU, cuda-bindings 13.x is missing, or the driver or runtime is older than CUDA 12.4 (IF nodes; 12.8 for SWITCH),
and per shape, with one line, when a build fails. Not included: padding shapes into coarser buckets (each exact
(batch, seq) is its own graph, at most `limit`), forced patterns (route's `forced` takes the host path).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from hadskip.modeling.cuda_graphs import GRAPH_TOKENS

__all__ = ["GRAPH_TOKENS", "DeviceGates", "Units", "open_device_gates", "why_not"]
MIN_CUDA_IF = 12040  # CUDA version (driver and runtime) with IF conditional nodes
MIN_CUDA_SWITCH = 12080  # ... with SWITCH nodes
MODES = ("dense", "compact")  # batch > 1: every row runs the layer, masked / the open rows gathered by bucket
COMPACTIONS = ("cumsum", "argsort", "nonzero_static")
KERNEL_NAME = "hadskip_gate"
GRAPH_LIMIT = 64  # shapes (batch, seq, mode) with an outer graph per DeviceGates

# The gate rule and the kernel, in C. RULE_SOURCE is the one copy of the rule on the device: the kernel source
# is DEVICE_PREAMBLE + RULE_SOURCE + KERNEL_BODY, and the host test compiles HOST_PREAMBLE + the same two parts.
RULE_SOURCE = r"""
/* hadskip.runtime.router.gate_open: open iff logit_open - logit_closed > offset. Both fp32 logits are widened
   first: the double difference is exact, 0 only for equal logits and never of the wrong sign, so a tie (0 > 0)
   and a NaN margin (a NaN logit, inf - inf) close the gate, as in numpy. */
HADSKIP_FN int hadskip_gate_open(float closed, float open, double offset)
{
    double margin = (double)open - (double)closed;
    return margin > offset;
}

/* Gate i over `rows` rows (logits (rows, 2): closed, open): the rule, then the per-row cap of
   hadskip.runtime.router.cap_gates (a row that ran cap[r] layers runs no more). Writes each row's decision (0/1),
   adds it to used[r], and returns the conditional's value: with nbuckets == 0 (an IF node) 1 when any row runs
   the layer; else (a SWITCH node) the first bucket of at least as many rows as are open, nbuckets (no case
   runs) when none is. The last bucket is `rows`. */
HADSKIP_FN unsigned int hadskip_gate_rows(int rows, const float *logits, const double *offsets, int *used,
                                          const int *cap, unsigned char *decisions, const int *buckets, int nbuckets)
{
    int count = 0;
    for (int r = 0; r < rows; ++r) {
        int g = hadskip_gate_open(logits[2 * r], logits[2 * r + 1], offsets[r]) && used[r] < cap[r];
        decisions[r] = (unsigned char)g;
        used[r] += g;
        count += g;
    }
    if (nbuckets == 0)
        return count > 0;
    if (count == 0)
        return (unsigned int)nbuckets;
    int k = 0;
    while (k < nbuckets - 1 && buckets[k] < count)
        ++k;
    return (unsigned int)k;
}
"""

KERNEL_BODY = r"""
/* One thread: a few dozen rows at most, and no reduction to get wrong. */
__global__ void hadskip_gate(cudaGraphConditionalHandle handle, const float *logits, const double *offsets,
                             int *used, const int *cap, unsigned char *decisions, int rows, const int *buckets,
                             int nbuckets)
{
    cudaGraphSetConditional(handle, hadskip_gate_rows(rows, logits, offsets, used, cap, decisions, buckets,
                                                      nbuckets));
}
"""

# NVRTC: the two declarations of cuda_device_runtime_api.h the kernel needs (a cudart builtin: no device runtime
# library to link), so no include path is needed
DEVICE_PREAMBLE = r"""
typedef __device_builtin__ unsigned long long cudaGraphConditionalHandle;
extern "C" __device__ __cudart_builtin__ void cudaGraphSetConditional(cudaGraphConditionalHandle handle,
                                                                      unsigned int value);
#define HADSKIP_FN __device__
"""

HOST_PREAMBLE = r"""
/* the host build of the kernel source (tests): the conditional's value lands in hadskip_conditional_value */
#define HADSKIP_FN
#define __global__
typedef unsigned long long cudaGraphConditionalHandle;
extern "C" unsigned int hadskip_conditional_value[4096];
unsigned int hadskip_conditional_value[4096];
static void cudaGraphSetConditional(cudaGraphConditionalHandle handle, unsigned int value)
{
    hadskip_conditional_value[handle % 4096] = value;
}
"""


def kernel_source(preamble: str = DEVICE_PREAMBLE) -> str:
    """The gate kernel's C++ source: `preamble`, then the rule and the kernel with C linkage."""
    return preamble + 'extern "C" {\n' + RULE_SOURCE + KERNEL_BODY + "}\n"


KERNEL_SOURCE = kernel_source()
# the kernel's parameters, in order (how they are packed for the kernel node, and read back by the stand-in)
KERNEL_ARGTYPES = (ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int)


def reference_gate_rows(logits: np.ndarray, offsets: np.ndarray, used: np.ndarray, cap: np.ndarray,
                        buckets: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray, int]:
    """What hadskip_gate_rows computes, in numpy: (decisions (B,) bool, used after, conditional value)."""
    z = np.asarray(logits, dtype=np.float32).astype(np.float64)
    with np.errstate(invalid="ignore"):
        g = (z[:, 1] - z[:, 0] > np.asarray(offsets, dtype=np.float64)) & (used < cap)
    count = int(g.sum())
    if not buckets:
        value = int(count > 0)
    elif count == 0:
        value = len(buckets)
    else:
        value = next((k for k, s in enumerate(buckets[:-1]) if s >= count), len(buckets) - 1)
    return g, used + g, value


def buckets_for(rows: int) -> tuple[int, ...]:
    """Row-count buckets of the compact mode: powers of two below `rows`, then `rows`."""
    out, s = [], 1
    while s < rows:
        out.append(s)
        s *= 2
    return (*out, rows)


def compact_rows(open_rows: torch.Tensor, size: int, fill: int, how: str = "cumsum") -> torch.Tensor:
    """(size,) int64: the indices of the open rows in row order, then `fill`, computed in static shapes on the
    tensor's device (no host sync, so it can be captured). `size` must be at least the number of open rows.

    cumsum: each open row's slot is its running count - 1, scattered (closed rows go to a spare slot);
    argsort: a stable sort of the closed flags puts the open rows first; nonzero_static: torch's."""
    b = open_rows.shape[0]
    rows = torch.arange(b, device=open_rows.device)
    if how == "nonzero_static":
        return torch.nonzero_static(open_rows, size=size, fill_value=fill).reshape(size)
    if how == "argsort":
        order = torch.argsort((~open_rows).to(torch.uint8), stable=True)
        return torch.where(rows < open_rows.sum(), order, fill)[:size]
    if how == "cumsum":
        slot = torch.where(open_rows, torch.cumsum(open_rows.to(torch.int64), 0) - 1, b)
        out = torch.full((b + 1,), fill, dtype=torch.int64, device=open_rows.device)
        return out.scatter_(0, slot, rows)[:size]
    raise ValueError(f"unknown compaction {how!r}; choose one of {', '.join(COMPACTIONS)}")


# -- cuda-bindings ----------------------------------------------------------------------------------------------

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
        _call(api.driver, "cuInit", 0)
        versions = {"driver": _call(api.driver, "cuDriverGetVersion"),
                    "runtime": _call(api.runtime, "cudaRuntimeGetVersion")}
    except Exception as exc:  # noqa: BLE001 - a missing libcuda raises the loader's own error class
        return f"the CUDA driver did not answer through cuda-bindings: {_first_line(exc)}"
    for name, v in versions.items():
        if int(v) < need:
            return f"the CUDA {name} is {_cuda_version(int(v))}; {what} conditional nodes need {_cuda_version(need)}"
    try:
        _call(api.nvrtc, "nvrtcVersion")
    except Exception as exc:  # noqa: BLE001 - libnvrtc not found raises the loader's error
        return f"NVRTC (libnvrtc, which compiles the gate kernel) is not usable: {_first_line(exc)}"
    return None


def open_device_gates(units: Units, device: torch.device, mode: str = "dense", *, max_tokens: int | None = None,
                      api: SimpleNamespace | None = None, loader: Callable[[], SimpleNamespace] = load_bindings,
                      gpu: bool | None = None, **kwargs) -> tuple[DeviceGates | None, str | None]:
    """(DeviceGates, None) where gates can be decided on `device`, else (None, why), having printed that in one
    line on stderr: the routed batches then take the router's host loop."""
    why = why_not(device, mode, api, loader, gpu)
    if why is None:
        try:
            return DeviceGates(units, device, mode, api=api or loader(), max_tokens=max_tokens, **kwargs), None
        except Exception as exc:  # noqa: BLE001 - whatever stops it, the host path still runs
            why = _first_line(exc)
    print(f"[hadskip] gates decided on the host (a round trip per gate), not in one CUDA graph: {why}",
          file=sys.stderr)
    return None, why


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _call(module, name: str, *args):
    """module.name(*args), whose first item is a status (CUresult, nvrtcResult): the rest, or
    ConditionalGraphError naming the call and the status."""
    result = getattr(module, name)(*args)
    status, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if int(status) != 0:
        raise ConditionalGraphError(f"{name} failed: {getattr(status, 'name', status)}")
    return rest[0] if len(rest) == 1 else (rest or None)


class GateKernel:
    """The gate kernel, compiled by NVRTC for the device's architecture and loaded as a module."""

    def __init__(self, api: SimpleNamespace, arch: tuple[int, int]):
        self.api = api
        nvrtc, driver = api.nvrtc, api.driver
        prog = _call(nvrtc, "nvrtcCreateProgram", KERNEL_SOURCE.encode(), b"hadskip_gate.cu", 0, [], [])
        try:
            opts = [f"--gpu-architecture=sm_{arch[0]}{arch[1]}".encode(), b"-ftz=false", b"-fmad=false"]
            status = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
            if int(status) != 0:
                size = _call(nvrtc, "nvrtcGetProgramLogSize", prog)
                log = b" " * size
                _call(nvrtc, "nvrtcGetProgramLog", prog, log)
                first = (log.decode(errors="replace").strip().splitlines() or [""])[0]
                raise ConditionalGraphError(f"nvrtcCompileProgram failed ({getattr(status, 'name', status)}): {first}")
            size = _call(nvrtc, "nvrtcGetCUBINSize", prog)
            cubin = b" " * size
            _call(nvrtc, "nvrtcGetCUBIN", prog, cubin)
        finally:
            nvrtc.nvrtcDestroyProgram(prog)
        image = ctypes.create_string_buffer(cubin, len(cubin))
        self.module = _call(driver, "cuModuleLoadData", ctypes.addressof(image))
        try:
            self.func = _call(driver, "cuModuleGetFunction", self.module, KERNEL_NAME.encode())
        except BaseException:
            driver.cuModuleUnload(self.module)
            raise

    def close(self) -> None:
        if self.module is not None:
            self.api.driver.cuModuleUnload(self.module)
            self.module = None


class KernelArgs:
    """One gate kernel's parameters packed as the driver takes them: an array of pointers to each value."""

    def __init__(self, *values: int):
        self.values = [t(v) for t, v in zip(KERNEL_ARGTYPES, values, strict=True)]
        self.array = (ctypes.c_void_p * len(self.values))(*[ctypes.addressof(v) for v in self.values])
        self.address = ctypes.addressof(self.array)


@dataclass
class LayerStep:
    """Layer i in the outer graph: gate i's graph, the kernel's data pointers, and the body graph(s): one (IF) or
    one per bucket (SWITCH)."""

    gate: int  # raw cudaGraph_t of gate i's unit
    bodies: list[int]
    logits: int  # device pointers the kernel reads and writes
    offsets: int
    used: int
    cap: int
    decisions: int
    rows: int
    buckets: int = 0  # device pointer to the int32 bucket sizes (SWITCH), 0 for IF
    nbuckets: int = 0


@dataclass
class OuterGraph:
    """The instantiated outer graph of one shape (and what must outlive it)."""

    api: SimpleNamespace
    graph: object
    exec: object
    keep: list = field(default_factory=list)  # kernel args, torch graphs and buffers the nodes point into

    def launch(self, stream: int) -> None:
        d = self.api.driver
        _call(d, "cuGraphLaunch", self.exec, d.CUstream(stream))

    def close(self) -> None:
        d = self.api.driver
        if self.exec is not None:
            d.cuGraphExecDestroy(self.exec)
            self.exec = None
        if self.graph is not None:
            d.cuGraphDestroy(self.graph)
            self.graph = None
        self.keep.clear()


def assemble(api: SimpleNamespace, func, ctx, embeddings: int, steps: list[LayerStep], head: int) -> OuterGraph:
    """Build and instantiate the outer graph (a chain: embeddings, then per layer its gate, the kernel and the
    conditional node whose bodies hold the layer, then the head); on any failure nothing is left allocated."""
    d = api.driver
    graph = _call(d, "cuGraphCreate", 0)
    keep: list = []
    try:
        node = _call(d, "cuGraphAddChildGraphNode", graph, [], 0, d.CUgraph(embeddings))
        for step in steps:
            node = _call(d, "cuGraphAddChildGraphNode", graph, [node], 1, d.CUgraph(step.gate))
            handle = _call(d, "cuGraphConditionalHandleCreate", graph, ctx, 0, 0)
            args = KernelArgs(int(handle), step.logits, step.offsets, step.used, step.cap, step.decisions,
                              step.rows, step.buckets, step.nbuckets)
            keep.append(args)
            kp = d.CUDA_KERNEL_NODE_PARAMS()
            kp.func = func
            kp.gridDimX = kp.gridDimY = kp.gridDimZ = 1
            kp.blockDimX = kp.blockDimY = kp.blockDimZ = 1
            kp.sharedMemBytes = 0
            kp.kernelParams = args.address
            node = _call(d, "cuGraphAddKernelNode", graph, [node], 1, kp)
            cp = d.CUgraphNodeParams()
            cp.type = d.CUgraphNodeType.CU_GRAPH_NODE_TYPE_CONDITIONAL
            cp.conditional.handle = handle
            cp.conditional.type = (d.CUgraphConditionalNodeType.CU_GRAPH_COND_TYPE_SWITCH if step.nbuckets
                                   else d.CUgraphConditionalNodeType.CU_GRAPH_COND_TYPE_IF)
            cp.conditional.size = len(step.bodies)
            cp.conditional.ctx = ctx
            node = _call(d, "cuGraphAddNode", graph, [node], None, 1, cp)
            bodies = list(cp.conditional.phGraph_out)[:len(step.bodies)]  # owned by the conditional node
            for body, child in zip(bodies, step.bodies, strict=True):
                _call(d, "cuGraphAddChildGraphNode", body, [], 0, d.CUgraph(child))
        _call(d, "cuGraphAddChildGraphNode", graph, [node], 1, d.CUgraph(head))
        exe = _call(d, "cuGraphInstantiate", graph, 0)
    except BaseException:
        d.cuGraphDestroy(graph)
        raise
    return OuterGraph(api, graph, exe, keep)


# -- torch side: static buffers, unit captures ----------------------------------------------------------------

class TorchCapture:
    """Captures a unit call into a kept torch CUDA graph (all of one shape share a memory pool: they never run
    at the same time, and everything they pass on lives in buffers allocated outside the capture)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: list = []

    def warmup(self, fns: list[Callable[[], None]]) -> None:
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for fn in fns:
                fn()
        current.wait_stream(side)

    def __call__(self, fn: Callable[[], None]) -> int:
        g = torch.cuda.CUDAGraph(keep_graph=True)
        with torch.cuda.graph(g, pool=self.pool):
            fn()
        self.graphs.append(g)
        return int(g.raw_cuda_graph())


@dataclass
class Units:
    """What the outer graph runs: unit callables with the signatures of hadskip.modeling.units (gates and head
    returning fp32), and the facts the buffers need."""

    embeddings: Callable
    gates: Sequence[Callable]
    layers: Sequence[Callable]
    head: Callable
    hidden_size: int
    num_labels: int
    dtype: torch.dtype = torch.float32  # of the hidden states


class _Shape:
    """Static buffers and the outer graph of one (batch, seq, mode)."""

    def __init__(self, units: Units, device, b: int, t: int, mode: str, compaction: str):
        n_layers = len(units.layers)
        z = dict(device=device)
        self.b, self.t, self.mode = b, t, mode
        self.ids = torch.zeros((b, t), dtype=torch.int64, **z)
        self.tt = torch.zeros((b, t), dtype=torch.int64, **z)
        self.mask_ext = torch.ones((b + 1, t), dtype=torch.int64, **z)  # row b: the scratch row of compact mode
        self.mask = self.mask_ext[:b]
        self.h_ext = torch.zeros((b + 1, t, units.hidden_size), dtype=units.dtype, **z)
        self.h = self.h_ext[:b]
        self.glog = torch.zeros((n_layers, b, 2), dtype=torch.float32, **z)
        self.dec = torch.zeros((n_layers, b), dtype=torch.uint8, **z)
        self.used = torch.zeros(b, dtype=torch.int32, **z)
        self.cap = torch.full((b,), n_layers + 1, dtype=torch.int32, **z)
        self.offsets = torch.zeros(b, dtype=torch.float64, **z)
        self.logits = torch.zeros((b, units.num_labels), dtype=torch.float32, **z)
        self.buckets = buckets_for(b) if mode == "compact" else ()
        self.bucket_sizes = torch.tensor(self.buckets or (0,), dtype=torch.int32, device=device)
        self.units, self.compaction = units, compaction
        self.outer: OuterGraph | None = None

    # the unit calls as captured: each reads and writes the static buffers only
    def embeddings(self) -> None:
        self.h.copy_(self.units.embeddings(self.ids, self.mask, self.tt))
        self.used.zero_()

    def gate(self, i: int) -> Callable[[], None]:
        return lambda: self.glog[i].copy_(self.units.gates[i](self.h, self.mask))

    def dense(self, i: int) -> Callable[[], None]:
        def run() -> None:
            out = self.units.layers[i](self.h, self.mask)
            if self.b == 1:  # the body runs only when the one row's gate opened
                self.h.copy_(out)
            else:
                self.h.copy_(torch.where(self.dec[i].bool()[:, None, None], out, self.h))
        return run

    def compact(self, i: int, size: int) -> Callable[[], None]:
        def run() -> None:
            idx = compact_rows(self.dec[i].bool(), size, self.b, self.compaction)  # padding: the scratch row b
            out = self.units.layers[i](self.h_ext.index_select(0, idx), self.mask_ext.index_select(0, idx))
            self.h_ext.index_copy_(0, idx, out)
        return run

    def head(self) -> None:
        self.logits.copy_(self.units.head(self.h, self.mask))

    def build(self, api, kernel_func, ctx, capture) -> None:
        n_layers = len(self.units.layers)
        bodies = [[self.dense(i)] if not self.buckets else [self.compact(i, s) for s in self.buckets]
                  for i in range(n_layers)]
        gates = [self.gate(i) for i in range(n_layers)]
        fns = [self.embeddings, *gates, *[f for body in bodies for f in body], self.head]
        warmup = getattr(capture, "warmup", None)
        if warmup is not None:
            warmup(fns)
        emb = capture(self.embeddings)
        steps = []
        for i in range(n_layers):
            steps.append(LayerStep(
                gate=capture(gates[i]), bodies=[capture(f) for f in bodies[i]],
                logits=self.glog[i].data_ptr(), offsets=self.offsets.data_ptr(), used=self.used.data_ptr(),
                cap=self.cap.data_ptr(), decisions=self.dec[i].data_ptr(), rows=self.b,
                buckets=self.bucket_sizes.data_ptr() if self.buckets else 0, nbuckets=len(self.buckets)))
        head = capture(self.head)
        self.outer = assemble(api, kernel_func, ctx, emb, steps, head)
        self.outer.keep.append(capture)

    def run(self, ids, mask, tt, offsets: np.ndarray, cap: np.ndarray, stream: int) -> tuple[np.ndarray, np.ndarray]:
        self.ids.copy_(torch.from_numpy(ids))
        self.mask.copy_(torch.from_numpy(mask))
        self.tt.copy_(torch.from_numpy(tt))
        self.offsets.copy_(torch.from_numpy(offsets))
        self.cap.copy_(torch.from_numpy(cap))
        self.outer.launch(stream)
        gates = self.dec.cpu().numpy().T.astype(bool)  # (B, L); waits for the graph
        return self.logits.cpu().numpy(), gates

    def close(self) -> None:
        if self.outer is not None:
            self.outer.close()
            self.outer = None


class DeviceGates:
    """Outer graphs by (batch, seq, mode) for one model; see the module docstring. `api`, `capture`, `arch` and
    `stream` are cuda-bindings, the unit capture, the compute capability and the launch stream (tests pass
    stand-ins); by default those of `device`."""

    def __init__(self, units: Units, device: torch.device | str, mode: str = "dense", *, api=None, capture=None,
                 arch: tuple[int, int] | None = None, stream: Callable[[], int] | None = None,
                 limit: int = GRAPH_LIMIT, max_tokens: int | None = None, compaction: str = "cumsum"):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if compaction not in COMPACTIONS:
            raise ValueError(f"unknown compaction {compaction!r}; choose one of {', '.join(COMPACTIONS)}")
        self.units, self.device = units, torch.device(device)
        self.mode, self.limit, self.max_tokens, self.compaction = mode, limit, max_tokens, compaction
        self.api = api if api is not None else load_bindings()
        self.capture = capture or (lambda: TorchCapture(self.device))
        self.stream = stream or (lambda: torch.cuda.current_stream(self.device).cuda_stream)
        self.arch = arch or torch.cuda.get_device_capability(self.device)
        self.shapes: dict[tuple, _Shape] = {}
        self.seen: set[tuple] = set()
        self.failed: dict[tuple, str] = {}
        self.kernel: GateKernel | None = None
        self.builds = self.launches = 0

    def _context(self):
        d = self.api.driver
        _call(d, "cuInit", 0)
        ctx = _call(d, "cuCtxGetCurrent")
        if not int(ctx):
            raise ConditionalGraphError("no current CUDA context on this thread (torch has not used the device)")
        return ctx

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray,
            gate_offset: float | np.ndarray = 0.0, max_layers: int | np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray] | None:
        """(logits (B, C) float32, gates (B, L) bool) of one trimmed, right-padded batch through its outer graph,
        or None where the host path must run it: first sight of a shape (as hadskip.modeling.cuda_graphs), more
        tokens than max_tokens, the limit, or a build that failed."""
        b, t = input_ids.shape
        mode = "dense" if b == 1 else self.mode
        key = (b, t, mode)
        shape = self.shapes.get(key)
        if shape is None:
            if key in self.failed or len(self.shapes) >= self.limit or \
                    (self.max_tokens is not None and b * t > self.max_tokens):
                return None
            if key not in self.seen:
                self.seen.add(key)
                return None
            shape = None
            try:
                with torch.inference_mode():
                    shape = _Shape(self.units, self.device, b, t, mode, self.compaction)  # torch makes the context
                    ctx = self._context()  # current on this thread, which the driver calls below need
                    if self.kernel is None:
                        self.kernel = GateKernel(self.api, self.arch)
                    shape.build(self.api, self.kernel.func, ctx, self.capture())
            except Exception as exc:  # noqa: BLE001 - any build failure means: this shape takes the host path
                self._give_up(key, shape, "not built", exc)
                return None
            self.shapes[key] = shape
            self.builds += 1
        n_layers = len(self.units.layers)
        offsets = np.array(np.broadcast_to(np.asarray(gate_offset, dtype=np.float64), (b,)))
        cap = np.full(b, n_layers + 1, dtype=np.int32) if max_layers is None else \
            np.array(np.broadcast_to(np.minimum(np.asarray(max_layers), n_layers + 1), (b,)), dtype=np.int32)
        try:
            with torch.inference_mode():
                out = shape.run(np.ascontiguousarray(input_ids, np.int64),
                                np.ascontiguousarray(attention_mask, np.int64),
                                np.ascontiguousarray(token_type_ids, np.int64), offsets, cap, self.stream())
        except ConditionalGraphError as exc:
            del self.shapes[key]
            self._give_up(key, shape, "failed to launch", exc)
            return None
        self.launches += 1
        return out

    def _give_up(self, key: tuple, shape: _Shape | None, what: str, exc: BaseException) -> None:
        """A shape whose graph failed: released, remembered, and said in one line; the host path runs it."""
        if shape is not None:
            shape.close()
        if self.device.type == "cuda":
            try:  # leave no error pending on the device
                torch.cuda.synchronize(self.device)
            except RuntimeError:
                pass
        self.failed[key] = _first_line(exc)
        print(f"[hadskip] gates of batch {key[0]} x seq {key[1]} stay on the host ({key[2]} graph {what}): "
              f"{self.failed[key]}", file=sys.stderr)

    def close(self) -> None:
        for shape in self.shapes.values():
            shape.close()
        self.shapes.clear()
        self.seen.clear()
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None
