"""`hadskip predict | bench`: run an exported model dir (parse, then call hadskip.runtime)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from hadskip.cli.options import Backend, Budget, Json, Revision

Model = Annotated[str, typer.Argument(help="Model dir written by `hadskip export` (a run dir for --backend torch), "
                                           "or a Hugging Face hub repo id (user/name) holding one.")]
Threads = Annotated[Optional[int], typer.Option(min=1, max=1024,
                                                help="Intra-op threads per onnxruntime session (default: ORT's).")]
DeviceId = Annotated[int, typer.Option(min=0, max=1024, help="GPU index for ort-cuda / trt.")]
Device = Annotated[Optional[str], typer.Option(help="torch backend device: cpu, cuda, cuda:1 (default: CUDA if any).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress lines on stderr.")]
Dtype = Annotated[str, typer.Option(help="torch backend precision: fp32, fp16 (CUDA) or bf16; gates and head stay "
                                         "fp32 (an exported model dir has its own: hadskip export --fp16).")]
MaxLayers = Annotated[Optional[int], typer.Option(
    help="A hard cap: no input runs more than this many layers (0..L; default: none), next to the average "
         "--budget.")]


MAX_BENCH_BATCH = 4096  # rows per benchmarked call; beyond this the synthetic inputs alone take gigabytes


def _ints(value: str, name: str, low: int = 1, high: int | None = None) -> list[int]:
    """Comma-separated integers, each between `low` and `high`."""
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"{name} must be comma-separated integers, got {value!r}") from exc
    if not out:
        raise typer.BadParameter(f"{name} is empty")
    for v in out:
        if v < low or (high is not None and v > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise typer.BadParameter(f"{name} values must be {bounds}, got {v}")
    return out


def _load_options(backend: str, threads: Optional[int], device_id: int, device: Optional[str],
                  budget: Optional[float] = None, revision: Optional[str] = None, dtype: str = "fp32") -> dict:
    opts: dict = {"threads": threads, "budget": budget, "revision": revision}
    if dtype != "fp32":
        opts["dtype"] = dtype  # Runtime.load refuses it for a backend other than torch
    if backend in ("ort-cuda", "trt"):
        opts["device_id"] = device_id
    if backend == "torch":
        opts["device"] = device
    return opts


def predict(
    model: Model,
    input: Annotated[str, typer.Option("--input", "-i", help="JSONL ({'text', 'text_pair'?, 'id'?}), .txt lines, "
                                       "or - for stdin. 'index' in the output is the input's line number from 0; "
                                       "a blank .txt line (or a JSONL record with blank text) gives "
                                       "{'index', 'error': 'empty text'} instead of a prediction, and blank "
                                       "JSONL lines give nothing.")],
    output: Annotated[str, typer.Option("--output", "-o", help="JSONL file to write, or - for stdout.")] = "-",
    backend: Backend = "ort-cpu",
    batch_size: Annotated[int, typer.Option(min=1, max=1 << 20, help="Inputs per batch (sorted by length first).")
                          ] = 32,
    fmt: Annotated[str, typer.Option("--format", help="auto (by suffix / first line), jsonl or txt.")] = "auto",
    threads: Threads = None,
    device_id: DeviceId = 0,
    device: Device = None,
    budget: Budget = None,
    max_layers: MaxLayers = None,
    revision: Revision = None,
    dtype: Dtype = "fp32",
    quiet: Quiet = False,
) -> None:
    """Classify texts: one JSON line per input with label, probabilities and the layers it used."""
    from hadskip.runtime.jsonl import predict_file

    summary = predict_file(model, input, output, backend=backend, batch_size=batch_size, fmt=fmt,
                           max_layers=max_layers,
                           **_load_options(backend, threads, device_id, device, budget, revision, dtype))
    if not quiet:
        empty = f", {summary['empty']} empty (error entries)" if summary["empty"] else ""
        at = "" if summary["budget"] is None else f" (budget {summary['budget']:g})"
        typer.echo(f"{summary['inputs']} inputs on {summary['backend']}: {summary['avg_layers']:.2f} layers on "
                   f"average{at}, {summary['truncated']} truncated{empty}", err=True)


def bench(
    model: Annotated[list[str], typer.Argument(help="Model dir(s) written by `hadskip export` (a run dir for "
                                               "--backend torch) or hub repo ids (user/name); several "
                                               "(e.g. the fp32 and the int8 export of "
                                               "one run) are timed side by side in the same rounds.")],
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,8,32",
    seq: Annotated[str, typer.Option(help="Sequence lengths (exact, synthetic tokens), comma-separated.")] = "64,128",
    repeats: Annotated[int, typer.Option(min=1, max=100_000,
                                         help="Timed rounds; every engine runs once per round, interleaved.")] = 20,
    warmup: Annotated[int, typer.Option(min=0, max=1000, help="Untimed calls per engine before the rounds.")] = 2,
    k: Annotated[Optional[str], typer.Option(help="Forced K values, comma-separated (default 0..L).")] = None,
    input: Annotated[Optional[str], typer.Option(
        "--input", "-i", help="Time real traffic: texts from a .txt (a line each) or .jsonl ({'text', "
                              "'text_pair'?}) file, cut into batches of --batch in file order, instead of "
                              "synthetic tokens (--seq is then unused).")] = None,
    backend: Backend = "ort-cpu",
    threads: Threads = None,
    device_id: DeviceId = 0,
    device: Device = None,
    budget: Budget = None,
    revision: Revision = None,
    dtype: Dtype = "fp32",
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Latency of the full model vs HadSkip routing, forced K-of-L and random patterns, with ideal ratios.

    `hadskip bench models/h3 models/h3-int8` compares full fp32, full int8, hadskip fp32 and hadskip int8 in one
    run: the `x full ...` columns are throughput over each model dir's full model."""
    from hadskip.runtime.bench import run_bench
    from hadskip.runtime.jsonl import read_input_file

    progress = None if quiet else (lambda msg: typer.echo(msg, err=True))
    report = run_bench(model, batches=_ints(batch, "--batch", high=MAX_BENCH_BATCH),
                       seqs=_ints(seq, "--seq"), repeats=repeats,
                       inputs=None if input is None else read_input_file(input),
                       warmup=warmup, backend=backend, ks=_ints(k, "--k", low=0) if k else None, progress=progress,
                       **_load_options(backend, threads, device_id, device, budget, revision, dtype))
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    print_bench(report)


def print_bench(report) -> None:
    """The bench report as a rich table on stdout, then the parts."""
    from rich.console import Console
    from rich.table import Table

    models = report.models or [{"model": "", "precision": "", "label": "", "full_source": report.full_source,
                                "optimization": report.optimization}]
    captions = []
    for m in models:
        opt = m.get("optimization") or {}
        graphs = f"layer graphs: {opt.get('layers', 'none')}"
        if m["full_source"].startswith("baseline"):
            graphs += f", baseline graph: {(opt.get('baseline') or {}).get('mode', 'none')}"
        where = f" ({m['label']}: {m['model']})" if len(models) > 1 else ""
        captions.append(f"full{where} = {m['full_source']}; {graphs}")
    several = len(models) > 1
    table = Table(title=f"hadskip bench ({report.backend}, {report.repeats} interleaved rounds, median)",
                  caption="\n".join(captions + list(report.notes)))
    cols = ["engine", *(["precision"] if several else []), "k", "batch", "seq", "median ms", "rows/s", "avg layers",
            "ratio to full", "ideal", *([f"x full {m['label']}" for m in models] if several else [])]
    for col in cols:
        table.add_column(col, justify="left" if col in ("engine", "precision") else "right")
    for r in report.rows:
        k = "" if r.k is None else (f"{r.k:g}" if isinstance(r.k, float) else str(r.k))
        speedups = [f"{r.speedup_vs_full.get(m['label'], float('nan')):.2f}" for m in models] if several else []
        label = next((m["label"] for m in models if m["model"] == r.model), r.precision)
        table.add_row(r.engine, *([label] if several else []), k, str(r.batch), str(r.seq),
                      f"{r.median_ms:.3f}", f"{r.throughput:.1f}", f"{r.avg_layers:.2f}", f"{r.ratio_to_full:.3f}",
                      f"{r.ideal_ratio:.3f}", *speedups)
    console = Console()
    if several:  # the speedup columns need room even when stdout is a pipe (rich then assumes 80 columns)
        console = Console(width=max(console.width, 150))
    console.print(table)
    for p in report.parts:
        which = f" ({next((m['label'] for m in models if m['model'] == p.get('model')), '')})" if several else ""
        console.print(f"parts at batch {p['batch']} seq {p['seq']}{which}: embeddings {p['emb_ms']:.3f} ms, "
                      f"layer {p['layer_ms']:.3f} ms, "
                      + ("" if p["gate_ms"] is None else f"gate {p['gate_ms']:.3f} ms, ")
                      + f"head {p['head_ms']:.3f} ms")
