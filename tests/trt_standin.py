"""A stand-in for the `tensorrt` module in its TensorRT 10 and TensorRT 11 API shapes, recording every call.

Only what hadskip uses is there, and each shape has exactly what that version's Python API has (per NVIDIA's
10.x -> 11.x migration guide): 11 has no BuilderFlag.FP16 / OBEY_PRECISION_CONSTRAINTS, no layer
`precision` / `set_output_type`, no ICudaEngine.device_memory_size; so code that touches a removed API
raises AttributeError here as it would there.

Engines "run" on host memory (hadskip.runtime.backends.memory.HostMemory pointers) with small numpy
functions standing in for the units, so the trt backend's routing, buffers and CUDA-graph bookkeeping
can be checked against a numpy reference. `GraphMemory` adds stream capture: a captured enqueue is
recorded, not run, and replayed by launch_graph.
"""

from __future__ import annotations

import ctypes
import enum
import types

import numpy as np

from hadskip.runtime.backends.memory import HostMemory

HIDDEN = 4


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    INT64 = 5
    BOOL = 4


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


def make_trt(major: int, calls: list) -> types.SimpleNamespace:
    """A `tensorrt` module of the given major version (10 or 11) appending (what, details) to `calls`."""
    assert major in (10, 11)

    class BuilderFlag(enum.IntEnum):
        TF32 = 0
        if major == 10:
            FP16 = 1
            OBEY_PRECISION_CONSTRAINTS = 2

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 1

    class Layer:
        type = "NORMALIZATION"
        num_outputs = 1

        def __setattr__(self, name, value):
            if major == 11 and name == "precision":
                raise AttributeError("'ILayer' object has no attribute 'precision' (TensorRT 11)")
            calls.append(("layer." + name, value))
            object.__setattr__(self, name, value)

        if major == 10:
            def set_output_type(self, i, t):
                calls.append(("layer.set_output_type", (i, t)))

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return types.SimpleNamespace(name=self.inputs[i])

        num_layers = 1

        def get_layer(self, i):
            return Layer()

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            import onnx

            calls.append(("parse", path))
            self.network.inputs = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
            return True

    class TimingCache:
        def serialize(self):
            return b"cache"

    class Config:
        def __init__(self):
            self.flags = set()

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", size))

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))

        def create_timing_cache(self, blob):
            return TimingCache()

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile", profile.shapes))

        def set_flag(self, flag):
            calls.append(("set_flag", flag.name))
            self.flags.add(flag.name)

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag.name))
            self.flags.discard(flag.name)

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build", {"flags": network.flags, "config_flags": sorted(config.flags)}))
            return b"plan"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Strategy(enum.Enum):
        STATIC = 0
        ON_PROFILE_CHANGE = 1
        USER_MANAGED = 2

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            kind, _, index = blob.decode().partition(":")
            return Engine(kind, int(index), major, calls)

    return types.SimpleNamespace(
        __version__=f"{major}.0.0", BuilderFlag=BuilderFlag,
        NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"), Logger=Logger, Builder=Builder,
        OnnxParser=Parser, Runtime=Runtime, DataType=DataType, TensorIOMode=TensorIOMode,
        ExecutionContextAllocationStrategy=Strategy,
    )


IO = {  # unit kind -> [(name, is_input, dtype)]
    "embeddings": [("input_ids", True, DataType.INT64), ("attention_mask", True, DataType.INT64),
                   ("token_type_ids", True, DataType.INT64), ("hidden", False, DataType.FLOAT)],
    "layer": [("hidden", True, DataType.FLOAT), ("attention_mask", True, DataType.INT64),
              ("hidden_out", False, DataType.FLOAT)],
    "gate": [("hidden", True, DataType.FLOAT), ("attention_mask", True, DataType.INT64),
             ("gate_logits", False, DataType.FLOAT)],
    "head": [("hidden", True, DataType.FLOAT), ("logits", False, DataType.FLOAT)],  # the mask is not used
    "exit": [("hidden", True, DataType.FLOAT), ("logits", False, DataType.FLOAT)],  # an early-exit model's
}


def unit(kind: str, index: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """What the stand-in engine of a unit computes (and the numpy reference uses)."""
    if kind == "embeddings":
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        return (ids[..., None] * 0.01 + np.arange(HIDDEN) * 0.1) * mask[..., None]  # (B, T, H)
    if kind == "layer":
        h, mask = inputs["hidden"], inputs["attention_mask"]
        return (h * 0.9 + (index + 1) * 0.05) * mask[..., None]
    if kind == "gate":
        h, mask = inputs["hidden"], inputs["attention_mask"]
        mean = (h * mask[..., None]).sum((1, 2)) / (np.maximum(mask.sum(1), 1) * h.shape[2])
        threshold = 0.47 + 0.01 * index  # near the typical row mean: rows split
        return np.stack([np.full_like(mean, threshold), mean], axis=1)  # open when the mean is above it
    if kind == "exit":  # (B, 2): confidence grows with the first token's id; exit 1 is timid, so rows that go on
        h = inputs["hidden"][:, 0, 0]  # after exit 0 mostly pass exit 1 and leave at exit 2
        return np.stack([h * (2.0, 0.3, 4.0)[index % 3], np.zeros_like(h)], axis=1)
    return inputs["hidden"][:, 0, :2] * 3.0  # head: (B, 2)


class Engine:
    def __init__(self, kind, index, major, calls):
        self.kind, self.index, self.calls = kind, index, calls
        self.io = IO[kind]
        self.num_io_tensors = len(self.io)
        self.device_memory_size_v2 = 1024
        if major == 10:
            self.device_memory_size = 0  # what a v1 query may say where v2 knows better

    def get_tensor_name(self, i):
        return self.io[i][0]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if dict((n, m) for n, m, _ in self.io)[name] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return {n: d for n, _, d in self.io}[name]

    def create_execution_context(self, strategy):
        self.calls.append(("create_execution_context", strategy.name))
        return Context(self)


NP = {DataType.FLOAT: np.float32, DataType.INT64: np.int64}


class Context:
    memory: GraphMemory | None = None  # set by the test: where captures are recorded

    def __init__(self, engine):
        self.engine = engine
        self.shapes, self.addresses = {}, {}
        self.fail_enqueue_when_capturing = False

    def set_device_memory(self, ptr, size):
        self.engine.calls.append(("set_device_memory", size))

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def _run(self):
        e = self.engine
        ins = {}
        for name, is_in, dt in e.io:
            if is_in:
                shape = self.shapes[name]
                n = int(np.prod(shape)) * np.dtype(NP[dt]).itemsize
                ins[name] = np.frombuffer((ctypes.c_char * n).from_address(self.addresses[name]), NP[dt]).reshape(shape)
        out = unit(e.kind, e.index, ins).astype(np.float32)
        (name, _, _), = [x for x in e.io if not x[1]]
        ctypes.memmove(self.addresses[name], np.ascontiguousarray(out).ctypes.data, out.nbytes)

    def execute_async_v3(self, stream):
        mem = Context.memory
        if mem is not None and mem.capturing:
            if self.fail_enqueue_when_capturing or mem.fail_enqueue:
                return False
            addresses, shapes = dict(self.addresses), dict(self.shapes)

            def replay():
                self.addresses, self.shapes = dict(addresses), dict(shapes)
                self._run()

            mem.captured.append(replay)
            return True
        self._run()
        return True


class GraphMemory(HostMemory):
    """HostMemory plus recorded stream capture: begin/end/abort_capture, launch/destroy_graph."""

    def __init__(self):
        super().__init__()
        self.capturing = False
        self.captured: list = []
        self.execs: dict[int, list] = {}
        self.events: list[str] = []
        self.invalidate_capture = False  # end_capture reports an invalidated capture
        self.fail_enqueue = False  # every enqueue during capture returns False
        self._next = 1

    def begin_capture(self):
        assert not self.capturing
        self.capturing, self.captured = True, []
        self.events.append("begin")

    def end_capture(self):
        self.capturing = False
        if self.invalidate_capture:
            self.events.append("end:invalidated")
            return None
        exe, self._next = self._next, self._next + 1
        self.execs[exe] = self.captured
        self.events.append(f"instantiate:{exe}")
        return exe

    def abort_capture(self):
        self.capturing = False
        self.events.append("abort")

    def launch_graph(self, exe):
        for fn in self.execs[exe]:
            fn()

    def destroy_graph(self, exe):
        self.events.append(f"destroy:{exe}")
        del self.execs[exe]
