"""The openers of the built-in backends (registered by name in hadskip.runtime.backends): a model dir ->
(backend, hadskip.runtime.model_info.ModelInfo). Each imports its backend module, and so its heavy dependency
(onnxruntime-gpu's CUDA, TensorRT), only when that backend is opened."""

from __future__ import annotations

import logging
from pathlib import Path

from hadskip.runtime.backends import BackendOptions
from hadskip.runtime.manifest import Manifest, load_manifest
from hadskip.runtime.model_info import ModelInfo, info_from_manifest, precision_note

log = logging.getLogger("hadskip.runtime")  # unconfigured logging prints a warning as one bare line on stderr


def read_model_dir(path: Path, options: BackendOptions, backend: str) -> tuple[Manifest, ModelInfo]:
    """The checked manifest of a model dir and its ModelInfo; warns when its precision suits `backend` badly."""
    manifest = load_manifest(path, verify=options.verify)
    info = info_from_manifest(path, manifest)
    note = precision_note(manifest.precision, backend)
    if note:
        log.warning(f"warning: {path}: {note}")
    return manifest, info


def open_ort_cpu(path: Path, options: BackendOptions):
    manifest, info = read_model_dir(path, options, "ort-cpu")
    if manifest.units.get("gate_form") == "fused":
        from hadskip.runtime.backends.ort_fused import OrtCpuFusedBackend

        return OrtCpuFusedBackend(path, manifest, threads=options.threads, optimization=options.optimization), info
    from hadskip.runtime.backends.ort import OrtCpuBackend

    return OrtCpuBackend(path, manifest, threads=options.threads, optimization=options.optimization), info


def open_ort_cuda(path: Path, options: BackendOptions):
    manifest, info = read_model_dir(path, options, "ort-cuda")
    from hadskip.runtime.backends.ort import OrtDeviceBackend

    return OrtDeviceBackend(path, manifest, device="cuda", device_id=options.device_id, threads=options.threads,
                            max_batch=options.max_batch, optimization=options.optimization), info


def open_trt(path: Path, options: BackendOptions):
    manifest, info = read_model_dir(path, options, "trt")
    from hadskip.runtime.backends.trt import TrtBackend

    return TrtBackend(path, manifest, device_id=options.device_id, max_batch=options.max_batch,
                      cuda_graphs=options.cuda_graphs), info
