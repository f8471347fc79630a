"""The outer graph of one shape, assembled with cuda-bindings: the gate kernel compiled by NVRTC, and a chain of
child-graph nodes (the units, captured elsewhere), kernel nodes and IF/SWITCH conditional nodes:

    embeddings -> gate 0 -> kernel 0 -> IF/SWITCH 0 -> gate 1 -> kernel 1 -> ... -> head      (a chain)
                                          body: layer 0's graph (a child-graph node)
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from types import SimpleNamespace

from hadskip.modeling.cuda_conditional.bindings import ConditionalGraphError, call
from hadskip.modeling.cuda_conditional.rule import KERNEL_ARGTYPES, KERNEL_NAME, KERNEL_SOURCE


class GateKernel:
    """The gate kernel, compiled by NVRTC for the device's architecture and loaded as a module."""

    def __init__(self, api: SimpleNamespace, arch: tuple[int, int]):
        self.api = api
        nvrtc, driver = api.nvrtc, api.driver
        prog = call(nvrtc, "nvrtcCreateProgram", KERNEL_SOURCE.encode(), b"hadskip_gate.cu", 0, [], [])
        try:
            opts = [f"--gpu-architecture=sm_{arch[0]}{arch[1]}".encode(), b"-ftz=false", b"-fmad=false"]
            status = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
            if int(status) != 0:
                size = call(nvrtc, "nvrtcGetProgramLogSize", prog)
                log = b" " * size
                call(nvrtc, "nvrtcGetProgramLog", prog, log)
                first = (log.decode(errors="replace").strip().splitlines() or [""])[0]
                raise ConditionalGraphError(f"nvrtcCompileProgram failed ({getattr(status, 'name', status)}): {first}")
            size = call(nvrtc, "nvrtcGetCUBINSize", prog)
            cubin = b" " * size
            call(nvrtc, "nvrtcGetCUBIN", prog, cubin)
        finally:
            nvrtc.nvrtcDestroyProgram(prog)
        image = ctypes.create_string_buffer(cubin, len(cubin))
        self.module = call(driver, "cuModuleLoadData", ctypes.addressof(image))
        try:
            self.func = call(driver, "cuModuleGetFunction", self.module, KERNEL_NAME.encode())
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
        call(d, "cuGraphLaunch", self.exec, d.CUstream(stream))

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
    graph = call(d, "cuGraphCreate", 0)
    keep: list = []
    try:
        node = call(d, "cuGraphAddChildGraphNode", graph, [], 0, d.CUgraph(embeddings))
        for step in steps:
            node = call(d, "cuGraphAddChildGraphNode", graph, [node], 1, d.CUgraph(step.gate))
            handle = call(d, "cuGraphConditionalHandleCreate", graph, ctx, 0, 0)
            args = KernelArgs(int(handle), step.logits, step.offsets, step.used, step.cap, step.decisions,
                              step.rows, step.buckets, step.nbuckets)
            keep.append(args)
            kp = d.CUDA_KERNEL_NODE_PARAMS()
            kp.func = func
            kp.gridDimX = kp.gridDimY = kp.gridDimZ = 1
            kp.blockDimX = kp.blockDimY = kp.blockDimZ = 1
            kp.sharedMemBytes = 0
            kp.kernelParams = args.address
            node = call(d, "cuGraphAddKernelNode", graph, [node], 1, kp)
            cp = d.CUgraphNodeParams()
            cp.type = d.CUgraphNodeType.CU_GRAPH_NODE_TYPE_CONDITIONAL
            cp.conditional.handle = handle
            cp.conditional.type = (d.CUgraphConditionalNodeType.CU_GRAPH_COND_TYPE_SWITCH if step.nbuckets
                                   else d.CUgraphConditionalNodeType.CU_GRAPH_COND_TYPE_IF)
            cp.conditional.size = len(step.bodies)
            cp.conditional.ctx = ctx
            node = call(d, "cuGraphAddNode", graph, [node], None, 1, cp)
            bodies = list(cp.conditional.phGraph_out)[:len(step.bodies)]  # owned by the conditional node
            for body, child in zip(bodies, step.bodies, strict=True):
                call(d, "cuGraphAddChildGraphNode", body, [], 0, d.CUgraph(child))
        call(d, "cuGraphAddChildGraphNode", graph, [node], 1, d.CUgraph(head))
        exe = call(d, "cuGraphInstantiate", graph, 0)
    except BaseException:
        d.cuGraphDestroy(graph)
        raise
    return OuterGraph(api, graph, exe, keep)
