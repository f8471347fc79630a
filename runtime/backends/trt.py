"""`trt`: TensorRT engines (one per unit, listed in manifest units["engines"]) on pre-allocated device buffers.

    units["engines"] = {"embeddings": path, "layers": [paths], "gates": [paths], "head": path,   (plans)
                        "exits": [paths] (early-exit models)}

Every execution context shares one activation scratch buffer (user-managed device memory): the units run one
after another on one stream, so 2L+2 engines cost the scratch of the largest, not the sum. Hidden states
never leave the GPU; gate logits (B, 2) and the head's logits are the only copies to the host.

CUDA graphs per shape bucket: with cuda_graphs="auto" a unit call of at most GRAPH_TOKENS tokens (where
kernel-launch overhead dominates) gets its own context, is run once plainly (TensorRT must see a shape
before capture), captured the second time, and replayed after that; bigger calls run plainly.
Needs the `trt` extra and an NVIDIA GPU; never imported unless backend="trt".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hadskip.errors import HadSkipError, require
from hadskip.runtime.backends.device import DeviceTensor, PointerBackend
from hadskip.runtime.manifest import Manifest

NP_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_,
            "INT8": np.int8, "UINT8": np.uint8}
GRAPH_TOKENS = 4096  # batch*seq up to which a captured graph beats plain enqueue (launch-bound regime)
GRAPH_LIMIT = 512  # captured graphs kept per backend (each holds a context and a graph exec)


def np_dtype(trt, dtype) -> np.dtype:
    """numpy dtype of a TensorRT DataType (by its name, so no helper of one TensorRT version is needed)."""
    name = getattr(dtype, "name", None) or str(dtype).rsplit(".", 1)[-1]
    if name in NP_TYPES:
        return np.dtype(NP_TYPES[name])
    return np.dtype(trt.nptype(dtype))  # anything rarer: TensorRT's own mapping


class TrtBackend(PointerBackend):
    name = "trt"

    def __init__(self, model_dir: str | Path, manifest: Manifest, device_id: int = 0, max_batch: int = 32,
                 cuda_graphs: str = "auto", *, trt=None, memory=None):
        """`trt` and `memory` replace the tensorrt module and CudaMemory(device_id) (tests use stand-ins)."""
        trt = trt if trt is not None else require("tensorrt", "trt", "the trt backend")

        if cuda_graphs not in ("auto", "on", "off"):
            raise HadSkipError(f"cuda_graphs must be auto, on or off, got {cuda_graphs!r}")
        engines = manifest.units.get("engines") or {}
        if not engines:
            raise HadSkipError(f"{model_dir} has no TensorRT engines: export it with --engine trt on a GPU machine")
        try:
            paths = {("embeddings", 0): engines["embeddings"], ("head", 0): engines["head"]}
            paths.update({("layer", i): p for i, p in enumerate(engines["layers"])})
            paths.update({("gate", i): p for i, p in enumerate(engines["gates"])})
            paths.update({("exit", i): p for i, p in enumerate(engines.get("exits") or [])})
        except (KeyError, TypeError) as exc:
            raise HadSkipError(f"manifest units['engines'] of {model_dir} is malformed ({exc!r})") from exc
        self.trt = trt
        if memory is None:
            from hadskip.runtime.backends.memory import CudaMemory

            memory = CudaMemory(device_id)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engines = {}
        for key, rel in paths.items():
            engine = self._runtime.deserialize_cuda_engine((Path(model_dir) / rel).read_bytes())
            if engine is None:
                raise HadSkipError(f"TensorRT cannot load {Path(model_dir) / rel} (built by another TensorRT "
                                   f"version or for another GPU? rebuild it with hadskip export --engine trt)")
            self.engines[key] = engine
        self.io = {k: self._io(e) for k, e in self.engines.items()}  # name -> (is_input, numpy dtype)
        self._scratch_size = max(self._device_memory_size(e) for e in self.engines.values())
        self._scratch = memory.alloc(self._scratch_size)
        self.contexts = {k: self._context(e) for k, e in self.engines.items()}
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple, int] = {}  # (unit, shapes, pointers) -> graph exec
        self._graph_ctx: dict[tuple, object] = {}  # same key -> its own context, configured once
        self._no_graph: set[tuple] = set()  # keys whose capture failed: run plainly
        dt = {
            "hidden": self.io[("layer", 0)]["hidden_out"][1], "mask": self.io[("layer", 0)]["attention_mask"][1],
            "ids": self.io[("embeddings", 0)]["input_ids"][1],
            "gate": self.io[("gate", 0)]["gate_logits"][1] if ("gate", 0) in self.io
            else np.float32,  # no gates: a static or early-exit model
            "head": self.io[("head", 0)]["logits"][1],
        }
        super().__init__(memory, num_layers=manifest.num_layers, hidden_size=int(manifest.backbone["hidden_size"]),
                         num_labels=len(manifest.labels), dtypes=dt, max_batch=max_batch,
                         max_seq_len=manifest.max_seq_len)

    def _io(self, engine) -> dict[str, tuple[bool, np.dtype]]:
        trt = self.trt
        out = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            out[name] = (engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                         np_dtype(trt, engine.get_tensor_dtype(name)))
        return out

    @staticmethod
    def _device_memory_size(engine) -> int:
        # device_memory_size_v2 since TensorRT 10.1; device_memory_size is gone in 11 (and may be 0 where
        # v2 is right, so v2 wins whenever it exists, even at 0)
        size = getattr(engine, "device_memory_size_v2", None)
        return int(size if size is not None else engine.device_memory_size)

    def _context(self, engine):
        strategy = getattr(self.trt, "ExecutionContextAllocationStrategy", None)
        if strategy is not None:  # TensorRT >= 10
            ctx = engine.create_execution_context(strategy.USER_MANAGED)
        else:
            ctx = engine.create_execution_context_without_device_memory()
        if ctx is None:
            raise HadSkipError("TensorRT could not create an execution context (out of GPU memory?)")
        if hasattr(ctx, "set_device_memory"):
            ctx.set_device_memory(self._scratch, self._scratch_size)
        else:
            ctx.device_memory = self._scratch
        return ctx

    def _configure(self, ctx, key, inputs: dict[str, DeviceTensor], outputs: dict[str, DeviceTensor]) -> None:
        io = self.io[key]
        for name, t in inputs.items():
            if name not in io:
                continue  # the engine does not use this input
            if not ctx.set_input_shape(name, t.shape):
                raise HadSkipError(f"shape {t.shape} of {name} is outside the optimization profile of the {key[0]} "
                                   f"engine (rebuild the engines with a larger max batch / max_seq_len)")
            ctx.set_tensor_address(name, t.ptr)
        for name, t in outputs.items():
            ctx.set_tensor_address(name, t.ptr)

    def _execute(self, ctx, key) -> None:
        if not ctx.execute_async_v3(self.mem.stream):
            raise HadSkipError(f"TensorRT failed to run the {key[0]} engine {key[1]} (see its log above)")

    def _run_unit(self, key, inputs: dict[str, DeviceTensor], outputs: dict[str, DeviceTensor]) -> None:
        used = [(n, t) for n, t in inputs.items() if n in self.io[key]]
        tokens = int(np.prod(used[0][1].shape[:2]))
        gkey = (key, tuple((n, t.shape) for n, t in used),
                tuple(t.ptr for _, t in used) + tuple(t.ptr for t in outputs.values()))
        graph_ok = self.cuda_graphs == "on" or (self.cuda_graphs == "auto" and tokens <= GRAPH_TOKENS)
        if not graph_ok or gkey in self._no_graph or (gkey not in self._graph_ctx and
                                                      len(self._graph_ctx) >= GRAPH_LIMIT):
            ctx = self.contexts[key]
            self._configure(ctx, key, inputs, outputs)
            self._execute(ctx, key)
            return
        exe = self._graphs.get(gkey)
        if exe is not None:
            self.mem.launch_graph(exe)
            return
        ctx = self._graph_ctx.get(gkey)
        if ctx is None:  # first sight of this shape: its own context, one plain run (TensorRT's setup)
            ctx = self._graph_ctx[gkey] = self._context(self.engines[key])
            self._configure(ctx, key, inputs, outputs)
            self._execute(ctx, key)
            return
        exe = self._capture(ctx)
        if exe is None:
            self._no_graph.add(gkey)  # this engine does not capture at this shape: stay plain for it
            self._execute(ctx, key)
            return
        self._graphs[gkey] = exe
        self.mem.launch_graph(exe)

    def _capture(self, ctx) -> int | None:
        """Capture one enqueue of `ctx` into a graph exec; None (nothing left behind) when it fails."""
        self.mem.begin_capture()
        try:
            ok = bool(ctx.execute_async_v3(self.mem.stream))
        except BaseException:
            self.mem.abort_capture()
            raise
        if not ok:  # TensorRT refused to enqueue: instantiate nothing, destroy what was captured
            self.mem.abort_capture()
            return None
        return self.mem.end_capture()  # None when CUDA invalidated the capture (cleaned up there)

    def _on_realloc(self) -> None:
        for exe in getattr(self, "_graphs", {}).values():
            self.mem.destroy_graph(exe)
        if hasattr(self, "_graphs"):
            self._graphs.clear()
            self._graph_ctx.clear()
            self._no_graph.clear()

    def close(self) -> None:
        self.mem.synchronize()
        self._on_realloc()
        self.contexts.clear()
        super().close()
        self.mem.free(self._scratch)
