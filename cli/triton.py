"""`hadskip triton-repo MODEL_DIR --out REPO`: a Triton model repository for a model dir (hadskip.triton.write_repo)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from hadskip.cli.options import Revision


class TritonBackend(str, Enum):
    ort_cpu = "ort-cpu"
    ort_cuda = "ort-cuda"
    trt = "trt"


def _ints(value: Optional[str], name: str) -> Optional[tuple[int, ...]]:
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"{name} must be comma-separated integers, got {value!r}") from exc
    if not out:
        raise typer.BadParameter(f"{name} is empty")
    return out


def triton_repo(
    model: Annotated[str, typer.Argument(help="Model dir written by `hadskip export`, or a Hugging Face hub repo "
                                              "id (user/name) holding one.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model repository to write into (REPO/NAME).")],
    name: Annotated[str, typer.Option(help="Model name in Triton (/v2/models/NAME).")] = "hadskip",
    backend: Annotated[TritonBackend, typer.Option(help="Runtime backend inside each instance: ort-cpu "
                                                        "(KIND_CPU), ort-cuda or trt (KIND_GPU).")
                       ] = TritonBackend.ort_cpu,
    instances: Annotated[int, typer.Option(help="Model instances (for ort-cuda/trt: on each GPU).")] = 1,
    gpus: Annotated[Optional[str], typer.Option(help="GPU indices for ort-cuda/trt, e.g. 0,1 (default: every "
                                                     "GPU Triton sees).")] = None,
    max_batch: Annotated[int, typer.Option(help="max_batch_size: most rows per execution.")] = 32,
    preferred_batch: Annotated[Optional[str], typer.Option(help="Preferred batch sizes of the dynamic batcher, "
                                                                "e.g. 8,16 (default: max batch).")] = None,
    max_queue_delay_us: Annotated[int, typer.Option(help="How long the batcher may hold a request to fill a "
                                                         "batch (microseconds).")] = 2000,
    threads: Annotated[Optional[int], typer.Option(help="onnxruntime intra-op threads per instance "
                                                        "(default: ORT's).")] = None,
    reference: Annotated[bool, typer.Option("--reference", help="Point at MODEL by absolute path instead of "
                                                                "copying it into the repository.")] = False,
    python_env: Annotated[Optional[str], typer.Option(help="EXECUTION_ENV_PATH: a Python env (folder or "
                                                           "conda-pack .tar.gz) where hadskip is installed.")
                          ] = None,
    max_text_bytes: Annotated[int, typer.Option(help="A longer TEXT / TEXT_PAIR fails its request.")] = 1 << 20,
    revision: Revision = None,
    force: Annotated[bool, typer.Option("--force", help="Replace REPO/NAME if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (model folder and settings).")
                       ] = False,
) -> None:
    """Write a Triton model repository whose Python-backend model runs the hadskip runtime with per-row
    routing: inputs TEXT (+ optional TEXT_PAIR), outputs LABEL_ID, PROBS, LAYERS."""
    from dataclasses import asdict

    from hadskip.triton.repo import TritonRepoConfig, write_repo

    config = TritonRepoConfig(name=name, backend=backend.value, instances=instances, gpus=_ints(gpus, "--gpus"),
                              max_batch=max_batch, preferred_batch=_ints(preferred_batch, "--preferred-batch"),
                              max_queue_delay_us=max_queue_delay_us, threads=threads, copy=not reference,
                              python_env=python_env, max_text_bytes=max_text_bytes)
    target = write_repo(model, out, config, force=force, revision=revision)
    if as_json:
        typer.echo(json.dumps({"repo": str(Path(out).resolve()), "model": str(target.resolve()),
                               "config": asdict(config)}))
        return
    typer.echo(f"wrote {target} ({config.backend}, {config.instances} x {config.kind}, max batch "
               f"{config.max_batch}); serve it with: tritonserver --model-repository={Path(out).resolve()}")

