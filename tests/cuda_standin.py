"""A stand-in for cuda-bindings 13.x (`cuda.bindings.driver`, `runtime`, `nvrtc`): what
hadskip.modeling.cuda_conditional calls, recording every call, checking that the calls are well-formed, and
executing the graphs it builds on the host.

Calls return what the real functions return (a tuple whose first item is a CUresult / nvrtcResult), and the
structs refuse fields the real ones do not have. `fail` makes the n-th call (or every call of a name) return an
error, to check that the builder stops and releases what it made. Checked as the calls come (an AssertionError
names the broken rule): nodes are added to a live graph and depend on nodes of that graph; a child graph is a
captured unit graph; a conditional handle is created on the graph (or an ancestor of the graph) that uses it,
before the kernel node that sets it and the conditional node it drives, and drives one node; an IF node has one
body; `phGraph_out` is read only after cuGraphAddNode; a graph is instantiated with every handle in use; body
graphs are never destroyed by hand.

Execution: `register_unit(fn)` gives a unit graph handle (what torch's raw_cuda_graph() is) whose replay calls
fn; cuGraphLaunch walks the outer graph: child graphs replay, the kernel node calls `kernels[name]` (the kernel
source compiled for the host, see tests/test_cuda_conditional.py) with the argument values read through the
node's kernelParams pointer array, as the GPU would, and a conditional node runs its body number `value` (IF:
body 0 when value != 0), value read from `conditional_values` after the kernel set it.
Top-level imports are the standard library only, so the API names can be compared with the real package
(tests/test_cuda_conditional.py, where cuda-bindings is installed).
"""

from __future__ import annotations

import ctypes
import enum
import types
from collections.abc import Callable


class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_OUT_OF_MEMORY = 2
    CUDA_ERROR_NO_DEVICE = 100
    CUDA_ERROR_NOT_SUPPORTED = 801


class nvrtcResult(enum.IntEnum):  # noqa: N801 - the real name
    NVRTC_SUCCESS = 0
    NVRTC_ERROR_COMPILATION = 6


class CUgraphNodeType(enum.IntEnum):
    CU_GRAPH_NODE_TYPE_KERNEL = 0
    CU_GRAPH_NODE_TYPE_GRAPH = 4
    CU_GRAPH_NODE_TYPE_CONDITIONAL = 13


class CUgraphConditionalNodeType(enum.IntEnum):
    CU_GRAPH_COND_TYPE_IF = 0
    CU_GRAPH_COND_TYPE_WHILE = 1
    CU_GRAPH_COND_TYPE_SWITCH = 2


class _Handle:
    """An opaque driver handle (CUgraph, CUgraphNode, ...): built from an int or another handle, int() gives it."""

    def __init__(self, value=0):
        self.value = int(value)

    def __int__(self):
        return self.value

    def __eq__(self, other):
        return type(other) is type(self) and other.value == self.value

    def __hash__(self):
        return hash((type(self).__name__, self.value))

    def __repr__(self):
        return f"<{type(self).__name__} {self.value:#x}>"


def _handle(name: str) -> type:
    return type(name, (_Handle,), {})


CUgraph, CUgraphNode, CUgraphExec, CUmodule, CUfunction, CUcontext, CUstream, CUgraphConditionalHandle = (
    _handle(n) for n in ("CUgraph", "CUgraphNode", "CUgraphExec", "CUmodule", "CUfunction", "CUcontext", "CUstream",
                         "CUgraphConditionalHandle"))
nvrtcProgram = _handle("nvrtcProgram")


class CUDA_KERNEL_NODE_PARAMS:  # noqa: N801 - the real name
    __slots__ = ("func", "gridDimX", "gridDimY", "gridDimZ", "blockDimX", "blockDimY", "blockDimZ",
                 "sharedMemBytes", "kernelParams", "extra", "kern", "ctx")

    def __init__(self):
        for s in self.__slots__:
            setattr(self, s, 0)


class CUDA_CONDITIONAL_NODE_PARAMS:  # noqa: N801
    __slots__ = ("handle", "type", "size", "ctx", "_bodies")

    def __init__(self):
        self.handle, self.type, self.size = CUgraphConditionalHandle(0), 0, 0
        self.ctx, self._bodies = CUcontext(0), None

    @property
    def phGraph_out(self):  # noqa: N802
        assert self._bodies is not None, "phGraph_out read before cuGraphAddNode filled it (a crash on the real one)"
        return list(self._bodies)


class CUgraphNodeParams:
    __slots__ = ("type", "conditional", "kernel", "graph")

    def __init__(self):
        self.type, self.conditional = 0, CUDA_CONDITIONAL_NODE_PARAMS()
        self.kernel, self.graph = None, None


class _Graph:
    def __init__(self, gid: int, parent: _Graph | None = None, owner: int | None = None):
        self.id, self.parent, self.owner = gid, parent, owner  # owner: the conditional node of a body graph
        self.nodes: list[dict] = []
        self.handles: set[int] = set()  # conditional handles created on this graph
        self.alive = True

    def ancestors(self):
        g = self
        while g is not None:
            yield g
            g = g.parent


class State:
    """What the stand-in holds: graphs, units, modules, programs, execs, handles, and the call log."""

    def __init__(self):
        self.calls: list[tuple[str, tuple]] = []
        self.next_id = 0x100
        self.graphs: dict[int, _Graph] = {}
        self.units: dict[int, Callable[[], None]] = {}
        self.modules: set[int] = set()
        self.functions: dict[int, str] = {}
        self.programs: set[int] = set()
        self.execs: dict[int, int] = {}  # exec -> graph
        self.handle_graph: dict[int, int] = {}  # conditional handle -> graph it was created on
        self.handle_used: dict[int, str] = {}  # handle -> "kernel" / "conditional" uses seen
        self.conditional_values: dict[int, int] = {}
        self.instantiations = 0
        self.launches = 0

    def new_id(self) -> int:
        self.next_id += 0x10
        return self.next_id

    def live(self) -> dict[str, int]:
        """What would leak if nobody released it (unit graphs belong to torch, body graphs to their nodes)."""
        return {"graphs": sum(1 for g in self.graphs.values() if g.alive and g.owner is None),
                "execs": len(self.execs), "modules": len(self.modules), "programs": len(self.programs)}


def build_host_kernel(folder) -> ctypes.CDLL:
    """The gate kernel's source (hadskip.modeling.cuda_conditional) built for the host with the system C++
    compiler: hadskip_gate_open, hadskip_gate_rows, hadskip_gate (argtypes set) and `values`, where the host
    cudaGraphSetConditional stores. RuntimeError without a compiler. No -ffast-math: the GPU build keeps IEEE
    comparisons too (-ftz=false, -fmad=false)."""
    import shutil
    import subprocess
    from pathlib import Path

    from hadskip.modeling import cuda_conditional as cc

    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++, c++, clang++) to build the gate kernel for the host")
    src, lib = Path(folder) / "hadskip_gate.cpp", Path(folder) / "libhadskip_gate.so"
    src.write_text(cc.kernel_source(cc.HOST_PREAMBLE))
    subprocess.run([cxx, "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    so = ctypes.CDLL(str(lib))
    so.hadskip_gate_open.argtypes = [ctypes.c_float, ctypes.c_float, ctypes.c_double]
    so.hadskip_gate_open.restype = ctypes.c_int
    so.hadskip_gate_rows.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 6 + [ctypes.c_int]
    so.hadskip_gate_rows.restype = ctypes.c_uint
    so.hadskip_gate.argtypes = list(cc.KERNEL_ARGTYPES)
    so.hadskip_gate.restype = None
    so.values = (ctypes.c_uint * 4096).in_dll(so, "hadskip_conditional_value")
    return so


class UnitCapture:
    """The stand-in's unit capture (what hadskip.modeling.cuda_conditional.device_gates.TorchCapture is on a
    GPU): a unit "graph" is its function, replayed when the stand-in launches a graph holding it."""

    def __init__(self, register: Callable[[Callable[[], None]], int]):
        self.register = register
        self.captured: list = []

    def __call__(self, fn) -> int:
        self.captured.append(fn)
        return self.register(fn)


def make_cuda(kernels: dict[str, Callable] | None = None, *, fail: int | str | None = None,
              driver_version: int = 13000, runtime_version: int = 13000, conditional_values=None
              ) -> types.SimpleNamespace:
    """SimpleNamespace(driver, runtime, nvrtc, version, state, register_unit). `kernels`: kernel name -> host
    callable taking the kernel's arguments (ctypes argtypes set); `fail`: the call number (from 0) or the name
    of the call(s) that return an error; `conditional_values`: where the host kernel puts the values it sets
    (indexable by handle), read when a conditional node runs."""
    st = State()
    kernels = kernels or {}
    E = CUresult

    def recorded(name: str, fn: Callable, error=CUresult.CUDA_ERROR_INVALID_VALUE) -> Callable:
        def call(*args):
            index = len(st.calls)
            st.calls.append((name, args))
            if fail == index or fail == name:
                return (error, None) if _returns_value(name) else (error,)
            return fn(*args)
        call.__name__ = name
        return call

    def graph_of(h, what="graph") -> _Graph:
        g = st.graphs.get(int(h))
        assert g is not None and g.alive, f"{what} {h!r} is not a live graph"
        return g

    def check_deps(g: _Graph, deps, n):
        deps = list(deps or [])
        assert len(deps) == n, f"numDependencies {n} but {len(deps)} dependencies"
        ids = {node["id"] for node in g.nodes}
        for dep in deps:
            assert isinstance(dep, CUgraphNode), f"dependency {dep!r} is not a CUgraphNode"
            assert int(dep) in ids, f"dependency {dep!r} is not a node of graph {g.id:#x}"
        return [int(x) for x in deps]

    def add(g: _Graph, kind: str, deps: list[int], **info) -> CUgraphNode:
        nid = st.new_id()
        g.nodes.append({"id": nid, "kind": kind, "deps": deps, **info})
        return CUgraphNode(nid)

    # -- driver
    def cuInit(flags):
        return (E.CUDA_SUCCESS,)

    def cuDriverGetVersion():
        return E.CUDA_SUCCESS, driver_version

    ctx = CUcontext(0xC0)

    def cuCtxGetCurrent():
        return E.CUDA_SUCCESS, ctx

    def cuGraphCreate(flags):
        assert flags == 0
        gid = st.new_id()
        st.graphs[gid] = _Graph(gid)
        return E.CUDA_SUCCESS, CUgraph(gid)

    def cuGraphDestroy(h):
        g = graph_of(h)
        assert g.owner is None, "a conditional node's body graph is destroyed with its node, not by hand"
        for sub in st.graphs.values():
            if any(a is g for a in sub.ancestors()):
                sub.alive = False
        return (E.CUDA_SUCCESS,)

    def cuGraphAddChildGraphNode(h, deps, n, child):
        g = graph_of(h)
        d = check_deps(g, deps, n)
        assert isinstance(child, CUgraph), f"child {child!r} is not a CUgraph"
        assert int(child) in st.units, f"child graph {child!r} is not a captured unit graph"
        return E.CUDA_SUCCESS, add(g, "child", d, unit=int(child))

    def cuGraphConditionalHandleCreate(h, c, default, flags):
        g = graph_of(h)
        assert c == ctx, "the handle's context is not the current one"
        hid = st.new_id() // 0x10  # small: the host kernel stores values at [handle % 4096]
        st.handle_graph[hid] = g.id
        g.handles.add(hid)
        return E.CUDA_SUCCESS, CUgraphConditionalHandle(hid)

    def _handle_ok(g: _Graph, hid: int, use: str):
        assert hid in st.handle_graph, f"conditional handle {hid} used by a {use} before it was created"
        assert any(a.id == st.handle_graph[hid] for a in g.ancestors()), \
            f"conditional handle {hid} belongs to another graph than the {use} using it"

    def cuGraphAddKernelNode(h, deps, n, kp):
        g = graph_of(h)
        d = check_deps(g, deps, n)
        assert isinstance(kp, CUDA_KERNEL_NODE_PARAMS)
        assert int(kp.func) in st.functions, "the kernel node's function was not loaded from a module"
        assert kp.kernelParams, "the kernel node has no kernelParams"
        name = st.functions[int(kp.func)]
        fn = kernels.get(name)
        args = None
        if fn is not None:  # read the arguments now, as the driver copies them when the node is added
            ptrs = (ctypes.c_void_p * len(fn.argtypes)).from_address(int(kp.kernelParams))
            args = [t.from_address(ptrs[j]).value for j, t in enumerate(fn.argtypes)]
            _handle_ok(g, int(args[0]), "kernel node")
            st.handle_used.setdefault(int(args[0]), "")
            st.handle_used[int(args[0])] += "k"
        return E.CUDA_SUCCESS, add(g, "kernel", d, name=name, args=args,
                                   grid=(kp.gridDimX, kp.gridDimY, kp.gridDimZ),
                                   block=(kp.blockDimX, kp.blockDimY, kp.blockDimZ))

    def cuGraphAddNode(h, deps, edge_data, n, params):
        g = graph_of(h)
        d = check_deps(g, deps, n)
        assert edge_data is None, "no edge data is used"
        assert params.type == CUgraphNodeType.CU_GRAPH_NODE_TYPE_CONDITIONAL, "only conditional nodes come here"
        c = params.conditional
        hid = int(c.handle)
        _handle_ok(g, hid, "conditional node")
        assert "c" not in st.handle_used.get(hid, ""), f"conditional handle {hid} drives two nodes"
        st.handle_used[hid] = st.handle_used.get(hid, "") + "c"
        assert c.ctx == ctx, "the conditional node's context is not the current one"
        assert c.size >= 1 and (c.type != CUgraphConditionalNodeType.CU_GRAPH_COND_TYPE_IF or c.size == 1), \
            f"{c.type!r} with {c.size} bodies"
        node = add(g, "conditional", d, handle=hid, type=c.type, bodies=[])
        for _ in range(c.size):
            bid = st.new_id()
            st.graphs[bid] = _Graph(bid, parent=g, owner=int(node))
            g.nodes[-1]["bodies"].append(bid)
        c._bodies = [CUgraph(b) for b in g.nodes[-1]["bodies"]]
        return E.CUDA_SUCCESS, node

    def cuGraphInstantiate(h, flags):
        g = graph_of(h)
        assert g.owner is None, "only the outer graph is instantiated"
        for sub in st.graphs.values():
            if sub.alive and any(a is g for a in sub.ancestors()):
                for hid in sub.handles:
                    assert st.handle_used.get(hid, "").count("c") == 1, f"handle {hid} drives no conditional node"
        st.instantiations += 1
        eid = st.new_id()
        st.execs[eid] = g.id
        return E.CUDA_SUCCESS, CUgraphExec(eid)

    def cuGraphExecDestroy(e):
        assert int(e) in st.execs, f"exec {e!r} is not live"
        del st.execs[int(e)]
        return (E.CUDA_SUCCESS,)

    def run_graph(g: _Graph):
        done: set[int] = set()
        for node in g.nodes:
            assert all(dep in done for dep in node["deps"]), "a node runs before what it depends on"
            if node["kind"] == "child":
                st.units[node["unit"]]()
            elif node["kind"] == "kernel":
                assert node["args"] is not None, f"no host build of kernel {node['name']}"
                kernels[node["name"]](*node["args"])
            else:
                value = int(conditional_values[node["handle"] % 4096])
                if node["type"] == CUgraphConditionalNodeType.CU_GRAPH_COND_TYPE_IF:
                    if value:  # IF: its body when the value is non-zero
                        run_graph(st.graphs[node["bodies"][0]])
                elif value < len(node["bodies"]):  # SWITCH: body number `value`, none when out of range
                    run_graph(st.graphs[node["bodies"][value]])
            done.add(node["id"])

    def cuGraphLaunch(e, stream):
        assert int(e) in st.execs, f"exec {e!r} is not live"
        assert isinstance(stream, CUstream)
        g = st.graphs[st.execs[int(e)]]
        assert g.alive, "the exec's graph was destroyed (the real exec would still run; ours keeps it for replay)"
        st.launches += 1
        run_graph(g)
        return (E.CUDA_SUCCESS,)

    def cuModuleLoadData(image):
        assert isinstance(image, int) and image, "the module image is passed as an address"
        mid = st.new_id()
        st.modules.add(mid)
        return E.CUDA_SUCCESS, CUmodule(mid)

    def cuModuleGetFunction(m, name):
        assert int(m) in st.modules, "function of an unloaded module"
        fid = st.new_id()
        st.functions[fid] = name.decode()
        return E.CUDA_SUCCESS, CUfunction(fid)

    def cuModuleUnload(m):
        assert int(m) in st.modules, "module unloaded twice"
        st.modules.discard(int(m))
        return (E.CUDA_SUCCESS,)

    def cuGetErrorName(err):
        return E.CUDA_SUCCESS, CUresult(err).name.encode()

    driver = types.SimpleNamespace(
        CUresult=CUresult, CUgraphNodeType=CUgraphNodeType, CUgraphConditionalNodeType=CUgraphConditionalNodeType,
        CUgraph=CUgraph, CUgraphNode=CUgraphNode, CUgraphExec=CUgraphExec, CUmodule=CUmodule, CUfunction=CUfunction,
        CUcontext=CUcontext, CUstream=CUstream, CUgraphConditionalHandle=CUgraphConditionalHandle,
        CUDA_KERNEL_NODE_PARAMS=CUDA_KERNEL_NODE_PARAMS, CUgraphNodeParams=CUgraphNodeParams)
    for fn in (cuInit, cuDriverGetVersion, cuCtxGetCurrent, cuGraphCreate, cuGraphDestroy, cuGraphAddChildGraphNode,
               cuGraphConditionalHandleCreate, cuGraphAddKernelNode, cuGraphAddNode, cuGraphInstantiate,
               cuGraphExecDestroy, cuGraphLaunch, cuModuleLoadData, cuModuleGetFunction, cuModuleUnload,
               cuGetErrorName):
        setattr(driver, fn.__name__, recorded(fn.__name__, fn))

    # -- runtime
    def cudaRuntimeGetVersion():
        return E.CUDA_SUCCESS, runtime_version

    def cudaDriverGetVersion():
        return E.CUDA_SUCCESS, driver_version

    runtime = types.SimpleNamespace()
    for fn in (cudaRuntimeGetVersion, cudaDriverGetVersion):
        setattr(runtime, fn.__name__, recorded(fn.__name__, fn))

    # -- nvrtc
    N = nvrtcResult
    sources: dict[int, bytes] = {}

    def nvrtcVersion():
        return N.NVRTC_SUCCESS, 13, 0

    def nvrtcCreateProgram(src, name, n_headers, headers, names):
        assert isinstance(src, bytes) and isinstance(name, bytes) and n_headers == len(headers) == len(names)
        pid = st.new_id()
        st.programs.add(pid)
        sources[pid] = src
        return N.NVRTC_SUCCESS, nvrtcProgram(pid)

    def nvrtcCompileProgram(prog, n, opts):
        assert int(prog) in st.programs and n == len(opts) and all(isinstance(o, bytes) for o in opts)
        assert any(o.startswith(b"--gpu-architecture=sm_") for o in opts), "a cubin needs a real architecture"
        return (N.NVRTC_SUCCESS,)

    def nvrtcGetProgramLogSize(prog):
        return N.NVRTC_SUCCESS, 1

    def nvrtcGetProgramLog(prog, buf):
        return (N.NVRTC_SUCCESS,)

    def nvrtcGetCUBINSize(prog):
        assert int(prog) in st.programs
        return N.NVRTC_SUCCESS, 16

    def nvrtcGetCUBIN(prog, buf):
        assert int(prog) in st.programs and isinstance(buf, bytes) and len(buf) == 16
        return (N.NVRTC_SUCCESS,)

    def nvrtcDestroyProgram(prog):
        assert int(prog) in st.programs, "program destroyed twice"
        st.programs.discard(int(prog))
        return (N.NVRTC_SUCCESS,)

    def nvrtcGetErrorString(result):
        return N.NVRTC_SUCCESS, nvrtcResult(result).name.encode()

    nvrtc = types.SimpleNamespace(nvrtcResult=nvrtcResult, nvrtcProgram=nvrtcProgram)
    for fn in (nvrtcVersion, nvrtcCreateProgram, nvrtcCompileProgram, nvrtcGetProgramLogSize, nvrtcGetProgramLog,
               nvrtcGetCUBINSize, nvrtcGetCUBIN, nvrtcDestroyProgram, nvrtcGetErrorString):
        setattr(nvrtc, fn.__name__, recorded(fn.__name__, fn, N.NVRTC_ERROR_COMPILATION))

    def register_unit(fn: Callable[[], None]) -> int:
        uid = st.new_id()
        st.units[uid] = fn
        return uid

    return types.SimpleNamespace(driver=driver, runtime=runtime, nvrtc=nvrtc, version="13.5.0", state=st,
                                 sources=sources, register_unit=register_unit,
                                 capture=lambda: UnitCapture(register_unit))


def host_cuda(lib: ctypes.CDLL, **kwargs) -> types.SimpleNamespace:
    """make_cuda executing the host build of the gate kernel (build_host_kernel)."""
    return make_cuda({"hadskip_gate": lib.hadskip_gate}, conditional_values=lib.values, **kwargs)


_VALUE_CALLS = {"cuDriverGetVersion", "cuCtxGetCurrent", "cuGraphCreate", "cuGraphAddChildGraphNode",
                "cuGraphConditionalHandleCreate", "cuGraphAddKernelNode", "cuGraphAddNode", "cuGraphInstantiate",
                "cuModuleLoadData", "cuModuleGetFunction", "cuGetErrorName", "cudaRuntimeGetVersion",
                "cudaDriverGetVersion", "nvrtcCreateProgram", "nvrtcGetProgramLogSize", "nvrtcGetCUBINSize",
                "nvrtcGetErrorString"}


def _returns_value(name: str) -> bool:
    return name in _VALUE_CALLS


# the names the stand-in offers, per module: all must exist in the real cuda-bindings 13.x
API = {
    "driver": ["CUresult", "CUgraphNodeType", "CUgraphConditionalNodeType", "CUgraph", "CUgraphNode", "CUgraphExec",
               "CUmodule", "CUfunction", "CUcontext", "CUstream", "CUgraphConditionalHandle",
               "CUDA_KERNEL_NODE_PARAMS", "CUgraphNodeParams", "cuInit", "cuDriverGetVersion", "cuCtxGetCurrent",
               "cuGraphCreate", "cuGraphDestroy", "cuGraphAddChildGraphNode", "cuGraphConditionalHandleCreate",
               "cuGraphAddKernelNode", "cuGraphAddNode", "cuGraphInstantiate", "cuGraphExecDestroy", "cuGraphLaunch",
               "cuModuleLoadData", "cuModuleGetFunction", "cuModuleUnload", "cuGetErrorName"],
    "runtime": ["cudaRuntimeGetVersion", "cudaDriverGetVersion"],
    "nvrtc": ["nvrtcResult", "nvrtcProgram", "nvrtcVersion", "nvrtcCreateProgram", "nvrtcCompileProgram",
              "nvrtcGetProgramLogSize", "nvrtcGetProgramLog", "nvrtcGetCUBINSize", "nvrtcGetCUBIN",
              "nvrtcDestroyProgram", "nvrtcGetErrorString"],
}
STRUCT_FIELDS = {  # struct -> fields hadskip sets
    "CUDA_KERNEL_NODE_PARAMS": ["func", "gridDimX", "gridDimY", "gridDimZ", "blockDimX", "blockDimY", "blockDimZ",
                                "sharedMemBytes", "kernelParams"],
    "CUgraphNodeParams": ["type", "conditional"],
}
CONDITIONAL_FIELDS = ["handle", "type", "size", "ctx", "phGraph_out"]


def compare_with_real() -> list[str]:
    """What the stand-in has that the installed cuda-bindings lacks (run where cuda-bindings 13.x imports)."""
    from cuda.bindings import driver, nvrtc, runtime

    real = {"driver": driver, "runtime": runtime, "nvrtc": nvrtc}
    missing = [f"{m}.{n}" for m, names in API.items() for n in names if not hasattr(real[m], n)]
    for struct, names in STRUCT_FIELDS.items():
        obj = getattr(driver, struct)()
        missing += [f"{struct}.{f}" for f in names if f not in dir(obj)]
    cond = driver.CUgraphNodeParams().conditional
    missing += [f"CUgraphNodeParams.conditional.{f}" for f in CONDITIONAL_FIELDS if f not in dir(cond)]
    for enum_name, member in (("CUgraphNodeType", "CU_GRAPH_NODE_TYPE_CONDITIONAL"),
                              ("CUgraphConditionalNodeType", "CU_GRAPH_COND_TYPE_IF"),
                              ("CUgraphConditionalNodeType", "CU_GRAPH_COND_TYPE_SWITCH")):
        if not hasattr(getattr(driver, enum_name), member):
            missing.append(f"{enum_name}.{member}")
    for name, params in (("cuGraphAddNode", "dependencyData"), ("cuGraphConditionalHandleCreate", "ctx")):
        if params not in (getattr(driver, name).__doc__ or "").splitlines()[0]:
            missing.append(f"{name}({params}=...): another signature")
    return missing


if __name__ == "__main__":
    gaps = compare_with_real()
    print("stand-in names all in cuda-bindings" if not gaps else "missing in cuda-bindings: " + ", ".join(gaps))
    raise SystemExit(1 if gaps else 0)
