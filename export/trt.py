"""TensorRT engines from the exported (unfused, fp32) ONNX graphs: one plan per unit under MODEL/engines/.

One optimisation profile per engine spanning batch 1..max_batch and seq 1..max_seq_len (opt at a typical
serving size), TF32 off where the flag exists (so fp32 plans meet the fp32 tolerance), and one timing cache
shared by every build (and kept under ~/.cache/hadskip/ for the next export on the same GPU). Each plan is
checked against PyTorch on the GPU.

Precision comes from the graph, never from builder flags: every network is strongly typed, and an fp16 plan
is built from an fp16 copy of the ONNX graph with LayerNorm and softmax kept fp32 (TensorRT issues
2781 / 2564: fp16 LN overflows); gates always fp32. TensorRT 11 removed the weak-typing API
(BuilderFlag.FP16, OBEY_PRECISION_CONSTRAINTS, layer precision / set_output_type) and 10 has strong typing
too, so one path serves TensorRT 10 and 11.

tensorrt is imported lazily; without it, or without a CUDA GPU, `require_tensorrt` raises one line
naming what is missing. Not included: INT8, multiple profiles, CUDA graphs (the runtime's business).
"""

from __future__ import annotations

import os
from pathlib import Path

from hadskip.export.spec import TOLERANCES, ExportError, ExportSpec, ShapeError, check_close


class TRTUnavailableError(ExportError):
    """TensorRT engines cannot be built here (package or GPU missing); the message says which."""


def require_tensorrt():
    """The tensorrt module, or TRTUnavailableError naming the missing piece."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TRTUnavailableError("--engine trt needs tensorrt: pip install 'hadskip[trt]'") from exc
    import torch

    if not torch.cuda.is_available():
        raise TRTUnavailableError("--engine trt needs a CUDA GPU: no CUDA GPU is visible to torch "
                                  "(TensorRT builds each engine on the GPU that will run it)")
    return trt


def profile_shapes(max_batch: int, max_seq_len: int) -> dict[str, list[int]]:
    """min / opt / max of the one profile: opt at a typical serving size."""
    return {"batch": [1, min(max_batch, 16), max_batch], "seq": [1, min(max_seq_len, 128), max_seq_len]}


def _cache_file(trt, device_name: str) -> Path:
    root = Path(os.environ.get("HADSKIP_CACHE", Path.home() / ".cache" / "hadskip")) / "trt"
    gpu = device_name.replace(" ", "_").replace("/", "_")
    return root / f"timing-{trt.__version__}-{gpu}.cache"


def network_flags(trt) -> int:
    """create_network flags: strongly typed (TensorRT 10 opts in with the flag; 11 is always strongly typed
    and ignores it, or may drop it)."""
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None else 0


class EngineBuilder:
    """Builds plans one by one, sharing one builder and one timing cache.

    `trt` and `device_name` replace the tensorrt module and the GPU's name (tests use a stand-in)."""

    def __init__(self, max_batch: int, max_seq_len: int, hidden_size: int, workspace_gb: float = 2.0, *,
                 trt=None, device_name: str | None = None):
        self.trt = trt = trt if trt is not None else require_tensorrt()
        if device_name is None:
            import torch

            device_name = torch.cuda.get_device_name()
        self.device_name = device_name
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.builder = trt.Builder(self.logger)
        self.shapes = profile_shapes(max_batch, max_seq_len)
        self.hidden_size = hidden_size
        self.workspace = int(workspace_gb * (1 << 30))
        self.cache_path = _cache_file(trt, device_name)
        blob = self.cache_path.read_bytes() if self.cache_path.is_file() else b""
        self.timing_cache = self.builder.create_builder_config().create_timing_cache(blob)

    def _dims(self, name: str, which: int) -> tuple[int, ...]:
        b, t = self.shapes["batch"][which], self.shapes["seq"][which]
        return (b, t, self.hidden_size) if name == "hidden" else (b, t)

    def build(self, onnx_path: str | Path, plan_path: str | Path, fp16: bool) -> dict:
        """Parse, build and write one plan from the fp32 graph at `onnx_path` (an fp16 copy is made beside it
        when `fp16`); returns {"fp32_layers": LayerNorm/softmax nodes kept fp32 in that copy}."""
        trt = self.trt
        pinned = 0
        if fp16:
            from hadskip.export.optimize import FP32_OPS, op_counts, to_fp16

            half = Path(onnx_path).with_name(Path(onnx_path).stem + ".trt-fp16.onnx")
            to_fp16(onnx_path, half)  # io stays fp32; LayerNorm and softmax stay fp32
            pinned = sum(n for op, n in op_counts(half).items() if op in FP32_OPS)
            onnx_path = half
        network = self.builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT cannot parse {Path(onnx_path).name}: {errors}")
        config = self.builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        config.set_timing_cache(self.timing_cache, ignore_mismatch=False)
        profile = self.builder.create_optimization_profile()
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            profile.set_shape(name, self._dims(name, 0), self._dims(name, 1), self._dims(name, 2))
        config.add_optimization_profile(profile)
        tf32 = getattr(trt.BuilderFlag, "TF32", None)
        if tf32 is not None:
            config.clear_flag(tf32)  # TF32 matmuls miss the 1e-4 fp32 tolerance (and fp16 plans keep fp32 parts)
        plan = self.builder.build_serialized_network(network, config)
        if plan is None:
            raise ExportError(f"TensorRT failed to build an engine from {Path(onnx_path).name} (see its log above)")
        Path(plan_path).parent.mkdir(parents=True, exist_ok=True)
        Path(plan_path).write_bytes(bytes(plan))
        return {"fp32_layers": pinned}

    def save_cache(self) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        self.cache_path.write_bytes(bytes(self.timing_cache.serialize()))

    def validate(self, spec: ExportSpec, plan_path: str | Path, cases: list[tuple[int, int]], fp16: bool) -> float:
        """Max abs diff of the plan vs the PyTorch module (on CPU, fp32) over `cases` (spec.check_close's rule)."""
        import torch

        trt = self.trt
        dt = trt.DataType
        dtypes = {dt.FLOAT: torch.float32, dt.HALF: torch.float16, dt.INT32: torch.int32, dt.INT64: torch.int64,
                  dt.BOOL: torch.bool}
        engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(plan_path).read_bytes())
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        atol, rtol = TOLERANCES["fp16" if fp16 else "fp32"]
        g = torch.Generator().manual_seed(0)
        stream = torch.cuda.Stream()
        worst = 0.0
        for batch, seq in cases:
            args = spec.sample(batch, seq, g)
            with torch.no_grad():
                ref = spec.module(*args).float()
            keep = []
            for name, arg in zip(spec.inputs, args, strict=True):
                if name not in inputs:
                    continue
                t = arg.to("cuda", dtypes[engine.get_tensor_dtype(name)]).contiguous()
                keep.append(t)
                context.set_input_shape(name, tuple(t.shape))
                context.set_tensor_address(name, t.data_ptr())
            out = torch.empty(tuple(context.get_tensor_shape(outputs[0])),
                              dtype=dtypes[engine.get_tensor_dtype(outputs[0])], device="cuda")
            context.set_tensor_address(outputs[0], out.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise ExportError(f"TensorRT engine of {spec.name} failed to run at batch {batch}, seq {seq}")
            stream.synchronize()
            got = out.float().cpu()
            if tuple(got.shape) != tuple(ref.shape):
                raise ShapeError(spec.name + " (TensorRT)", tuple(ref.shape), tuple(got.shape))
            worst = max(worst, check_close(spec.name + " (TensorRT)", got.numpy(), ref.cpu().numpy(), atol, rtol,
                                           (batch, seq), gate=spec.kind == "gate"))
        return worst


def build_engines(specs: list[ExportSpec], onnx_paths: dict[str, Path], model_dir: Path, *, max_batch: int,
                  max_seq_len: int, hidden_size: int, fp16: bool, cases: list[tuple[int, int]],
                  step=None) -> tuple[dict, dict[str, float]]:
    """Build and check a plan per unit into model_dir/engines/; returns (manifest units["engines"],
    {unit: max abs diff}). `step(name)` is called before each unit (progress)."""
    builder = EngineBuilder(max_batch, max_seq_len, hidden_size)
    trt = builder.trt
    engines: dict = {"layers": [], "gates": []}
    diffs: dict[str, float] = {}
    pinned = 0
    for spec in specs:
        if step is not None:
            step(f"TensorRT {spec.name}")
        half = fp16 and spec.kind != "gate"  # gates always fp32
        rel = "engines/" + spec.path.removesuffix(".onnx") + ".plan"
        pinned += builder.build(onnx_paths[spec.name], model_dir / rel, half)["fp32_layers"]
        diffs[spec.name] = builder.validate(spec, model_dir / rel, cases, half)
        if spec.kind in ("layer", "gate", "exit"):  # exits: an early-exit model's exit heads
            engines.setdefault(spec.kind + "s", []).append(rel)
        else:
            engines[spec.kind] = rel
    builder.save_cache()
    engines.update(profile=builder.shapes, precision="fp16" if fp16 else "fp32", gates_precision="fp32",
                   fp32_pinned_layers=pinned, typing="strong", tensorrt=trt.__version__,
                   device=builder.device_name)
    return engines, diffs
