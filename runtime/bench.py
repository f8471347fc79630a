"""Latency benchmark: the full model vs our per-row routing, in one process, interleaved
(docs/architecture.md: Benchmarks, JSON outputs).

For each (batch, seq) the engines below run round-robin, one call each per repeat (the starting engine
rotates), so machine noise hits all of them alike; the medians are compared.

    full      the teacher exported by optimum-onnx (manifest units["baseline"]) on onnxruntime with the same
              session options and provider; without one, our chained graphs with every gate forced open
    hadskip   our runtime with the trained gates (at the dial's offset with `budget=`; k is then that budget)
    forced    K of L layers open for every row, for each K (the same K layers for all rows)
    random    a fixed random per-row pattern, 50% open (exercises gather/scatter)

Parts (embeddings, one layer, one gate, the head) are timed in the same rounds and give the ideal ratio
(emb + K*layer + head) / (emb + L*layer + head) next to each measured ratio to full.
Inputs are synthetic: random token ids of exactly `seq` tokens, full mask. Not included: tokenisation time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from hadskip.errors import HadSkipError
from hadskip.runtime.core import Runtime

ENGINES = ("full", "hadskip", "forced", "random")


@dataclass
class BenchRow:
    engine: str  # "full" | "hadskip" | "forced" | "random"
    k: float | None  # layers forced open (forced), L (full), the trained budget (hadskip), None (random)
    batch: int
    seq: int
    median_ms: float
    throughput: float  # rows per second at the median
    avg_layers: float
    ratio_to_full: float  # median_ms / full's median_ms
    ideal_ratio: float  # (emb + avg_layers*layer + head) / (emb + L*layer + head) from the parts
    p10_ms: float = 0.0
    p90_ms: float = 0.0
    backend: str = ""
    source: str = ""  # for "full": "baseline (optimum-onnx)" or "chained, all gates open"


@dataclass
class BenchReport:
    rows: list[BenchRow]
    parts: list[dict]  # per (batch, seq): median ms of emb, layer, gate, head
    backend: str
    num_layers: int
    repeats: int
    full_source: str
    optimization: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows"] = [asdict(r) for r in self.rows]
        return d


def _sync_of(backend) -> Callable[[], None]:
    sync = getattr(backend, "synchronize", None)
    return sync if sync is not None else (lambda: None)


def _baseline_session(rt: Runtime, model_dir: Path, threads: int | None):
    """(callable(ids, mask, tt), source) for the optimum-onnx full model, or None when unusable here."""
    manifest = rt.info.manifest
    rel = manifest.units.get("baseline") if manifest is not None else None
    if not rel or rt.backend_name not in ("ort-cpu", "ort-cuda"):
        return None
    path = model_dir / rel
    if path.is_dir():
        path = path / "model.onnx"
    from hadskip.runtime.backends.ort import cuda_provider, open_session, session_options

    if rt.backend_name == "ort-cuda":
        providers = [cuda_provider(int(getattr(rt.backend, "device_id", 0)))]
    else:
        providers = ["CPUExecutionProvider"]
    sess = open_session(path, session_options(threads), providers)
    names = {i.name for i in sess.get_inputs()}

    def run(ids, mask, tt):
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}
        return sess.run(None, {k: v for k, v in feed.items() if k in names})[0]

    return run


def run_bench(model_dir: str | Path, batches=(1, 8, 32), seqs=(64, 128), repeats: int = 20, warmup: int = 2,
              backend: str = "ort-cpu", threads: int | None = None, ks: list[int] | None = None, seed: int = 0,
              progress: Callable[[str], None] | None = None, **load_options) -> BenchReport:
    """Benchmark a model dir; see the module docstring. `ks`: the forced K values (default 0..L)."""
    if repeats < 1 or warmup < 0:
        raise HadSkipError("repeats must be >= 1 and warmup >= 0")
    model_dir = Path(model_dir)
    rt = Runtime.load(model_dir, backend=backend, threads=threads, **load_options)
    n_layers, be = rt.num_layers, rt.backend
    ks = list(range(n_layers + 1)) if ks is None else sorted(set(ks))
    if any(k < 0 or k > n_layers for k in ks):
        raise HadSkipError(f"forced K must be within 0..{n_layers}, got {ks}")
    # the graphs have a dynamic sequence axis: timing is possible up to the position table, even past the
    # length the model was trained (and predict truncates) at
    manifest = rt.info.manifest
    limit = int(manifest.backbone.get("max_position_embeddings") or rt.max_seq_len) if manifest else rt.max_seq_len
    for s in seqs:
        if not 1 <= s <= limit:
            raise HadSkipError(f"seq {s} is outside 1..{limit} (the backbone's position table)")
    if any(b < 1 for b in batches):
        raise HadSkipError("batch sizes must be >= 1")
    baseline = _baseline_session(rt, model_dir, threads)
    full_source = "baseline (optimum-onnx)" if baseline is not None else "chained, all gates open"
    notes = []
    if any(s > rt.max_seq_len for s in seqs):
        notes.append(f"seq > {rt.max_seq_len} (the model's max_seq_len) is timed on synthetic tokens only; "
                     "predict truncates real inputs to max_seq_len")
    if baseline is None:
        why = "the model dir has no baseline (export with --with-baseline)" if rt.info.manifest is None or \
            not rt.info.manifest.units.get("baseline") else f"the baseline runs on onnxruntime, not {be.name}"
        notes.append(f"full = our chained graphs with every gate forced open: {why}")
    optimization = dict(manifest.optimization) if manifest is not None else {}
    vocab = int(manifest.backbone.get("vocab_size") or 1000) if manifest is not None else \
        int(be.model.config.hf_config.get("vocab_size", 1000))
    rng = np.random.default_rng(seed)
    rows: list[BenchRow] = []
    parts: list[dict] = []
    try:
        for b in batches:
            for s in seqs:
                shape_rows, shape_parts = _bench_shape(rt, baseline, full_source, b, s, ks, vocab, rng, repeats,
                                                       warmup, progress)
                rows += shape_rows
                parts.append(shape_parts)
    finally:
        rt.close()
    return BenchReport(rows=rows, parts=parts, backend=be.name, num_layers=n_layers, repeats=repeats,
                       full_source=full_source, optimization=optimization, notes=notes)


def _bench_shape(rt: Runtime, baseline, full_source: str, b: int, s: int, ks: list[int], vocab: int,
                 rng: np.random.Generator, repeats: int, warmup: int, progress) -> tuple[list[BenchRow], dict]:
    """Rows and parts of one (batch, seq): every engine once per repeat, round-robin."""
    be, n_layers = rt.backend, rt.num_layers
    sync = _sync_of(be)
    ids = rng.integers(min(100, vocab // 2), vocab, size=(b, s), dtype=np.int64)
    mask = np.ones((b, s), dtype=np.int64)
    tt = np.zeros((b, s), dtype=np.int64)
    h = be.run_embeddings(ids, mask, tt)
    layers_used: dict[str, float] = {}

    def routed(key: str, forced: np.ndarray | None) -> Callable[[], None]:
        def call() -> None:
            layers_used[key] = float(rt.run_batch(ids, mask, tt, forced=forced).layers_used.mean())
        return call

    def forced_k(k: int) -> np.ndarray:
        pattern = np.zeros((b, n_layers), dtype=bool)
        pattern[:, :k] = True
        return pattern

    engines: dict[str, Callable[[], object]] = {
        "full": (lambda: baseline(ids, mask, tt)) if baseline is not None else routed("full", forced_k(n_layers)),
        "hadskip": routed("hadskip", None),
        **{f"forced/{k}": routed(f"forced/{k}", forced_k(k)) for k in ks},
        "random": routed("random", rng.random((b, n_layers)) < 0.5),
        "part/emb": lambda: be.run_embeddings(ids, mask, tt),
        "part/layer": lambda: be.run_layer(0, h, mask),
        "part/gate": lambda: be.run_gate(0, h, mask),
        "part/head": lambda: be.run_head(h, mask),
    }
    names = list(engines)
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:
        for _ in range(warmup):
            engines[n]()
        sync()
    for r in range(repeats):
        if progress is not None:
            progress(f"bench batch={b} seq={s} repeat {r + 1}/{repeats}")
        for n in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            sync()
            t0 = time.perf_counter()
            engines[n]()
            sync()
            times[n].append((time.perf_counter() - t0) * 1e3)
    med = {n: float(np.median(v)) for n, v in times.items()}
    emb, layer, head = med["part/emb"], med["part/layer"], med["part/head"]
    parts = {"batch": b, "seq": s, "emb_ms": round(emb, 4), "layer_ms": round(layer, 4),
             "gate_ms": round(med["part/gate"], 4), "head_ms": round(head, 4)}

    def row(name: str, engine: str, k, avg: float, source: str = "") -> BenchRow:
        m = med[name]
        ideal = 1.0 if engine == "full" else (emb + avg * layer + head) / (emb + n_layers * layer + head)
        return BenchRow(engine=engine, k=k, batch=b, seq=s, median_ms=round(m, 4), throughput=round(b * 1e3 / m, 2),
                        avg_layers=round(avg, 3), ratio_to_full=round(m / med["full"], 4),
                        ideal_ratio=round(ideal, 4), p10_ms=round(float(np.percentile(times[name], 10)), 4),
                        p90_ms=round(float(np.percentile(times[name], 90)), 4), backend=be.name, source=source)

    rows = [row("full", "full", n_layers, float(n_layers), full_source),
            row("hadskip", "hadskip", rt.info.budget if rt.budget is None else rt.budget, layers_used["hadskip"]),
            *(row(f"forced/{k}", "forced", k, float(k)) for k in ks),
            row("random", "random", None, layers_used["random"])]
    return rows, parts
