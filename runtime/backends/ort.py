"""onnxruntime backends: `ort-cpu` (numpy in and out) and `ort-cuda` (IOBinding on device pointers).

One InferenceSession per graph. They run one after another, so each is sequential with inter_op 1 and
non-spinning intra-op threads: a first try with per-session spinning pools on 2 cores cost 3x
(docs/architecture.md, Benchmarks; https://onnxruntime.ai/docs/performance/tune-performance/threading.html).
`OrtDeviceBackend(device="cpu")` runs the ort-cuda code path on host pointers, which is how it is tested
without a GPU. Not included: ORT's own CUDA graphs (they need fixed shapes per session); see the trt backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from hadskip.errors import HadSkipError, MissingExtraError
from hadskip.runtime.backends import OPTIMIZATIONS
from hadskip.runtime.backends.device import DeviceTensor, PointerBackend
from hadskip.runtime.manifest import IO, MANIFEST, Manifest, ManifestError

ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(double)": np.float64}


def session_options(threads: int | None = None, optimization: str = "all") -> ort.SessionOptions:
    """Options for one of many small sessions run in sequence (threads None/0: onnxruntime's default)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or 0)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    levels = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    so.graph_optimization_level = dict(zip(OPTIMIZATIONS, levels, strict=True))[optimization]
    so.log_severity_level = 3  # errors only: unused-initializer warnings are noise here
    return so


def cuda_provider(device_id: int = 0, stream: int | None = None) -> tuple[str, dict]:
    """The CUDA execution provider with TF32 off: onnxruntime's CUDA EP uses TF32 for fp32 matmuls by default,
    while torch and our fp32 TensorRT plans do not (parity would depend on the GPU generation otherwise).
    `stream`: a cudaStream_t for ORT to enqueue on, so its kernels stay in order with our copies."""
    options = {"device_id": str(device_id), "use_tf32": "0"}
    if stream:
        options["user_compute_stream"] = str(stream)
    return ("CUDAExecutionProvider", options)


def open_session(path: Path, options: ort.SessionOptions, providers: list) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types, not importable stably
        raise HadSkipError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from exc


def unit_paths(model_dir: Path, manifest: Manifest) -> dict[tuple[str, int], Path]:
    u = manifest.units
    paths = {("embeddings", 0): model_dir / u["embeddings"], ("head", 0): model_dir / u["head"]}
    paths.update({("layer", i): model_dir / p for i, p in enumerate(u["layers"])})
    paths.update({("gate", i): model_dir / p for i, p in enumerate(u["gates"])})
    paths.update({("exit", i): model_dir / p for i, p in enumerate(u.get("exits") or [])})
    return paths


REQUIRED_INPUT = {"embeddings": "input_ids", "layer": "hidden", "gate": "hidden", "head": "hidden", "exit": "hidden"}


def check_io(model_dir: Path, manifest: Manifest, sessions: dict) -> None:
    """Each opened graph against its role (manifest.IO): its inputs among the role's (the role's main input
    present), its first output the role's, and the sizes it fixes (hidden size; 2 gate logits; one logit per
    label) equal to the manifest's. A graph in the wrong place (the head's file as the embeddings) is a
    ManifestError naming the unit, not an onnxruntime error at the first request."""
    paths = unit_paths(Path(model_dir), manifest)
    hidden = manifest.backbone["hidden_size"]
    last_dim = {"embeddings": hidden, "layer": hidden, "gate": 2, "head": len(manifest.labels),
                "exit": len(manifest.labels)}
    for key, session in sessions.items():
        role = key[0]
        want = IO[role]
        where = f"{model_dir / MANIFEST}: the {role} unit {paths[key].relative_to(model_dir)}"
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = session.get_outputs()
        extra = sorted(set(inputs) - set(want["inputs"]))
        if extra or REQUIRED_INPUT[role] not in inputs:
            raise ManifestError(f"{where} takes inputs {', '.join(sorted(inputs)) or 'none'}; {role} graphs "
                                f"take {', '.join(want['inputs'])} (is it another unit's graph?)")
        if not outputs or outputs[0].name != want["outputs"][0]:
            raise ManifestError(f"{where} outputs {', '.join(o.name for o in outputs) or 'nothing'}; {role} graphs "
                                f"output {want['outputs'][0]} first (is it another unit's graph?)")
        hid = inputs.get("hidden")
        for what, shape, n in (("input hidden", hid.shape if hid is not None else None, hidden),
                               (f"output {outputs[0].name}", outputs[0].shape, last_dim[role])):
            if shape and isinstance(shape[-1], int) and shape[-1] != n:
                raise ManifestError(f"{where} has {what} of size {shape[-1]} in its last axis; the manifest "
                                    f"says {n}")


class OrtCpuBackend:
    """Hidden states are numpy arrays; gather/scatter are numpy indexing."""

    name = "ort-cpu"
    gate_graphs = True  # False: the gates are computed by other graphs (ort_fused), their own are not opened

    def __init__(self, model_dir: str | Path, manifest: Manifest, threads: int | None = None,
                 optimization: str = "all"):
        so = session_options(threads, optimization)
        self.sessions = {k: open_session(p, so, ["CPUExecutionProvider"])
                         for k, p in unit_paths(Path(model_dir), manifest).items()
                         if self.gate_graphs or k[0] != "gate"}
        check_io(Path(model_dir), manifest, self.sessions)
        # a graph may drop an input it does not use (embeddings: attention_mask; head: attention_mask)
        self.inputs = {k: {i.name for i in s.get_inputs()} for k, s in self.sessions.items()}
        self.num_layers = manifest.num_layers

    def _run_all(self, key: tuple[str, int], feed: dict) -> list[np.ndarray]:
        """Every output of one graph, fed only the inputs it declares."""
        names = self.inputs[key]
        return self.sessions[key].run(None, {k: v for k, v in feed.items() if k in names})

    def _run(self, key: tuple[str, int], feed: dict) -> np.ndarray:
        return self._run_all(key, feed)[0]

    def run_embeddings(self, input_ids, attention_mask, token_type_ids) -> np.ndarray:
        return self._run(("embeddings", 0), {"input_ids": input_ids, "attention_mask": attention_mask,
                                             "token_type_ids": token_type_ids})

    def run_gate(self, i, h, attention_mask) -> np.ndarray:
        return self._run(("gate", i), {"hidden": h, "attention_mask": attention_mask})  # (B, 2)

    def run_layer(self, i, h, attention_mask) -> np.ndarray:
        return self._run(("layer", i), {"hidden": h, "attention_mask": attention_mask})

    def gather(self, h, rows, t) -> np.ndarray:
        return np.ascontiguousarray(h[rows, :t])

    def scatter(self, h, rows, sub) -> np.ndarray:
        if not h.flags.writeable:
            h = h.copy()
        h[rows, : sub.shape[1]] = sub
        return h

    def run_head(self, h, attention_mask) -> np.ndarray:
        return self._run(("head", 0), {"hidden": h, "attention_mask": attention_mask})

    def run_exit(self, i, h, attention_mask) -> np.ndarray:
        """Exit head i (after layer i) of an early-exit model: (B, num_labels) logits."""
        return self._run(("exit", i), {"hidden": h, "attention_mask": attention_mask})

    def close(self) -> None:
        self.sessions.clear()


class OrtDeviceBackend(PointerBackend):
    """ort-cuda: every graph reads and writes pre-allocated device buffers through IOBinding."""

    name = "ort-cuda"

    def __init__(self, model_dir: str | Path, manifest: Manifest, device: str = "cuda", device_id: int = 0,
                 threads: int | None = None, max_batch: int = 32, optimization: str = "all"):
        from hadskip.runtime.backends.memory import CudaMemory, HostMemory

        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise MissingExtraError("onnxruntime-gpu", "gpu", "the ort-cuda backend")
            if hasattr(ort, "preload_dlls"):  # onnxruntime >= 1.21: CUDA/cuDNN from the nvidia-* wheels
                ort.preload_dlls()
            memory = CudaMemory(device_id)
            providers = [cuda_provider(device_id, memory.stream)]
        else:
            memory, providers = HostMemory(), ["CPUExecutionProvider"]
            self.name = "ort-device-cpu"
        so = session_options(threads, optimization)
        self.sessions = {k: open_session(p, so, providers) for k, p in unit_paths(Path(model_dir), manifest).items()}
        check_io(Path(model_dir), manifest, self.sessions)
        if device == "cuda":
            lost = [str(k) for k, s in self.sessions.items() if "CUDAExecutionProvider" not in s.get_providers()]
            if lost:
                raise HadSkipError("onnxruntime-gpu could not start CUDA for these graphs (CUDA/cuDNN libraries "
                                   f"missing?): {', '.join(lost[:3])}")
        self.inputs = {k: {i.name: i for i in s.get_inputs()} for k, s in self.sessions.items()}
        self.device, self.device_id = memory.device, device_id
        self._bindings = {k: s.io_binding() for k, s in self.sessions.items()}
        layer0 = self.sessions[("layer", 0)]
        gate0, head = self.sessions.get(("gate", 0)), self.sessions[("head", 0)]  # no gates: a static/exit model
        emb_in = self.inputs[("embeddings", 0)]
        dtypes = {
            "hidden": ORT_TYPES[layer0.get_outputs()[0].type],
            "mask": ORT_TYPES[self.inputs[("layer", 0)]["attention_mask"].type],
            "ids": ORT_TYPES[emb_in["input_ids"].type],
            "gate": ORT_TYPES[gate0.get_outputs()[0].type] if gate0 is not None else np.float32,
            "head": ORT_TYPES[head.get_outputs()[0].type],
        }
        num_labels = len(manifest.labels)
        super().__init__(memory, num_layers=manifest.num_layers, hidden_size=int(manifest.backbone["hidden_size"]),
                         num_labels=num_labels, dtypes=dtypes, max_batch=max_batch, max_seq_len=manifest.max_seq_len)

    def _run_unit(self, key, inputs: dict[str, DeviceTensor], outputs: dict[str, DeviceTensor]) -> None:
        binding, names = self._bindings[key], self.inputs[key]
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, t in inputs.items():
            if name in names:
                binding.bind_input(name, self.device, self.device_id, t.dtype, list(t.shape), t.ptr)
        for name, t in outputs.items():
            binding.bind_output(name, self.device, self.device_id, t.dtype, list(t.shape), t.ptr)
        self.sessions[key].run_with_iobinding(binding)

    def close(self) -> None:
        super().close()
        self._bindings.clear()
        self.sessions.clear()
