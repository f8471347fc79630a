"""Latency benchmark: the full model vs our per-row routing, in one process, interleaved
(docs/architecture.md: Benchmarks, JSON outputs).

For each (batch, seq) the engines below run round-robin, one call each per repeat (the starting engine
rotates), so machine noise hits all of them alike; the medians are compared.

    full      the teacher exported by optimum-onnx (manifest units["baseline"]) on onnxruntime with the same
              session options and provider; without one, our chained graphs with every gate forced open
    hadskip   our runtime with the trained gates (at the dial's offset with `budget=`; k is then that budget)
    forced    K of L layers open for every row, for each K (the same K layers for all rows)
    random    a fixed random per-row pattern, 50% open (exercises gather/scatter)

A static model (a budgeted-exit export) or an early-exit model has no gates: it gets the full and hadskip rows
only (hadskip: its K layers, or its exit rule at the budget), and no gate part; an early-exit model's full
anchor without a baseline is every layer and the head, no exit head run.

Parts (embeddings, one layer, one gate, the head) are timed in the same rounds and give the ideal ratio
(emb + K*layer + head) / (emb + L*layer + head) next to each measured ratio to full.
Several model dirs (e.g. the fp32 and the int8 export of one run) run in the same rounds: every row says its
precision, and speedup_vs_full gives its throughput over each dir's full model (int8 hadskip vs fp32 full and
vs int8 full in one run). Inputs are synthetic: random token ids of exactly `seq` tokens, full mask (the same
for every dir); or, with `inputs=` (`hadskip bench --input FILE`), real traffic: the texts tokenised and cut into
batches of `batch` in file order (cycling), round r running batch r mod n on every engine, each padded to its
longest row (`seq` is then the mean padded length). Not included: tokenisation time. The hadskip row's
avg_layers is that of the rows it routed; a note says when it misses the budget (`k`) by more than 0.25 layers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from hadskip.errors import HadSkipError
from hadskip.runtime.core import Runtime
from hadskip.runtime.dial import budget_gap
from hadskip.runtime.hub import resolve_model
from hadskip.runtime.router import route

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
    precision: str = ""  # the model dir's manifest precision: "fp32" | "fp16" | "int8"
    model: str = ""  # the model dir, when several are compared
    speedup_vs_full: dict = field(default_factory=dict)  # {label of a dir's full: its median / this median}


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
    models: list[dict] = field(default_factory=list)  # per model dir: path, precision, label, full_source

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


@dataclass
class _Subject:
    """One model dir under test: its runtime, its full-model anchor and how rows are labelled."""

    path: Path
    rt: Runtime
    baseline: Callable | None
    full_source: str
    precision: str
    label: str = ""  # the precision, or "precision:dir" where two model dirs share one


def _open_subject(model_dir: Path, backend: str, threads: int | None, load_options: dict) -> _Subject:
    rt = Runtime.load(model_dir, backend=backend, threads=threads, **load_options)
    try:
        baseline = _baseline_session(rt, model_dir, threads)
    except BaseException:
        rt.close()
        raise
    manifest = rt.info.manifest
    precision = manifest.precision if manifest is not None else "fp32"
    source = "baseline (optimum-onnx)" if baseline is not None else "chained, all gates open"
    return _Subject(model_dir, rt, baseline, source, precision)


def _run_of(manifest) -> tuple[str, str]:
    """(name, weights sha256) of the run a model dir was exported from: export.run; a manifest written before
    it has export.run_dir (an absolute build path) instead."""
    export = manifest.export or {}
    run = export.get("run")
    if isinstance(run, dict):
        return str(run.get("name")), str(run.get("weights_sha256"))
    return str(export.get("run_dir")), ""


def run_bench(model_dir: str | Path | Sequence[str | Path], batches=(1, 8, 32), seqs=(64, 128), repeats: int = 20,
              warmup: int = 2, backend: str = "ort-cpu", threads: int | None = None, ks: list[int] | None = None,
              seed: int = 0, progress: Callable[[str], None] | None = None, inputs: Sequence | None = None,
              revision: str | None = None, **load_options) -> BenchReport:
    """Benchmark a model dir, or several side by side (e.g. the fp32 and the int8 export of one run: every
    engine of every dir runs in the same interleaved rounds); see the module docstring. `ks`: the forced K
    values (default 0..L). Rows carry `precision` and `model`; ratio_to_full is to the same dir's full model,
    speedup_vs_full is the throughput over every dir's full model (keyed by precision). `inputs`: texts (or
    (text, text_pair) tuples) to time instead of synthetic tokens; `seqs` is then unused. A model dir may be a
    hub repo id (fetched at `revision`; hadskip.runtime.hub)."""
    if repeats < 1 or warmup < 0:
        raise HadSkipError("repeats must be >= 1 and warmup >= 0")
    names = [model_dir] if isinstance(model_dir, (str, Path)) else list(model_dir)
    dirs = [resolve_model(d, revision) for d in names]  # a hub repo id: its snapshot (runtime/hub.py)
    if not dirs:
        raise HadSkipError("no model dir to benchmark")
    if len(set(d.resolve() for d in dirs)) != len(dirs):
        raise HadSkipError("the same model dir is given twice")
    subjects: list[_Subject] = []
    try:
        for d in dirs:
            subjects.append(_open_subject(d, backend, threads, load_options))
        return _run(subjects, batches, seqs, repeats, warmup, ks, seed, progress, inputs)
    finally:
        for sub in subjects:
            sub.rt.close()


def _real_batches(subjects: list[_Subject], inputs: Sequence, b: int, repeats: int) -> list[list[tuple]]:
    """Per subject, the (ids, mask, tt) batches of `b` inputs in file order (cycling), at most `repeats` of them."""
    per_subject = []
    for sub in subjects:
        enc = sub.rt.encode(list(inputs))
        keep = [i for i in range(len(enc.ids)) if enc.empty is None or not enc.empty[i]]
        if not keep:
            raise HadSkipError("no input has a token after the tokenizer's normalisation")
        n = min(repeats, -(-len(keep) // b))
        per_subject.append([sub.rt.encoder.pad_batch(enc, [keep[(j * b + r) % len(keep)] for r in range(b)])
                            for j in range(n)])
    return per_subject


def _run(subjects: list[_Subject], batches, seqs, repeats: int, warmup: int, ks, seed: int, progress,
         inputs: Sequence | None = None) -> BenchReport:
    first = subjects[0]
    rt, be = first.rt, first.rt.backend
    n_layers = rt.num_layers
    for sub in subjects[1:]:
        if sub.rt.num_layers != n_layers:
            raise HadSkipError(f"{sub.path} has {sub.rt.num_layers} layers and {first.path} {n_layers}: "
                               "only exports of one model compare side by side")
    labels = [sub.precision for sub in subjects]
    for sub in subjects:
        sub.label = sub.precision if labels.count(sub.precision) == 1 else f"{sub.precision}:{sub.path.name}"
    routes = sorted({sub.rt.route for sub in subjects} - {"gated"})
    if routes and ks:
        raise HadSkipError(f"forced K patterns need a gated model; this is a {routes[0]} model (drop --k)")
    ks = [] if routes else list(range(n_layers + 1)) if ks is None else sorted(set(ks))
    if any(k < 0 or k > n_layers for k in ks):
        raise HadSkipError(f"forced K must be within 0..{n_layers}, got {ks}")
    # the graphs have a dynamic sequence axis: timing is possible up to the position table, even past the
    # length the model was trained (and predict truncates) at
    manifest = rt.info.manifest
    limit = min(int(sub.rt.info.manifest.backbone.get("max_position_embeddings") or sub.rt.max_seq_len)
                if sub.rt.info.manifest else sub.rt.max_seq_len for sub in subjects)
    if inputs is not None:
        inputs = list(inputs)
        if not inputs:
            raise HadSkipError("the input file has no texts to time")
        seqs = []
    for s in seqs:
        if not 1 <= s <= limit:
            raise HadSkipError(f"seq {s} is outside 1..{limit} (the backbone's position table)")
    if any(b < 1 for b in batches):
        raise HadSkipError("batch sizes must be >= 1")
    notes = []
    if any(s > rt.max_seq_len for s in seqs):
        notes.append(f"seq > {rt.max_seq_len} (the model's max_seq_len) is timed on synthetic tokens only; "
                     "predict truncates real inputs to max_seq_len")
    for sub in subjects:
        if sub.baseline is None:
            m = sub.rt.info.manifest
            why = "the model dir has no baseline (export with --with-baseline)" if m is None or \
                not m.units.get("baseline") else f"the baseline runs on onnxruntime, not {be.name}"
            where = f" ({sub.path})" if len(subjects) > 1 else ""
            how = "with every gate forced open" if sub.rt.route == "gated" else "running every layer"
            notes.append(f"full{where} = our chained graphs {how}: {why}")
    runs = {_run_of(sub.rt.info.manifest) for sub in subjects if sub.rt.info.manifest}
    if len(runs) > 1:
        notes.append(f"the model dirs come from different runs ({', '.join(sorted(name for name, _ in runs))})")
    optimization = dict(manifest.optimization) if manifest is not None else {}
    vocabs = [int(sub.rt.info.manifest.backbone.get("vocab_size") or 1000) if sub.rt.info.manifest is not None else
              int(sub.rt.backend.model.config.hf_config.get("vocab_size", 1000)) for sub in subjects]
    rng = np.random.default_rng(seed)
    rows: list[BenchRow] = []
    parts: list[dict] = []
    for b in batches:
        if inputs is not None:
            feeds = _real_batches(subjects, inputs, b, repeats)
            s = round(float(np.mean([f[1].shape[1] for f in feeds[0]])))
            shape_rows, shape_parts = _bench_shape(subjects, b, s, ks, min(vocabs), rng, repeats, warmup, progress,
                                                   feeds)
            rows += shape_rows
            parts += shape_parts
        for s in seqs:
            shape_rows, shape_parts = _bench_shape(subjects, b, s, ks, min(vocabs), rng, repeats, warmup, progress)
            rows += shape_rows
            parts += shape_parts
    if inputs is not None:
        notes.append(f"real traffic: {len(inputs)} inputs from the file, in batches of the given sizes, each padded "
                     "to its longest row (seq = the mean padded length)")
    for r in rows:
        if r.engine == "hadskip" and r.k is not None and budget_gap(r.avg_layers, r.k) is not None:
            notes.append(f"hadskip ran {r.avg_layers:.2f} layers on average at batch {r.batch} seq {r.seq}, "
                         f"not its budget {r.k:g}" + ("" if inputs is not None else " (on synthetic tokens; "
                                                      "--input FILE times real texts)"))
    models = [{"model": str(sub.path), "precision": sub.precision, "label": sub.label, "full_source": sub.full_source,
               "optimization": dict(sub.rt.info.manifest.optimization) if sub.rt.info.manifest else {}}
              for sub in subjects]
    return BenchReport(rows=rows, parts=parts, backend=be.name, num_layers=n_layers, repeats=repeats,
                       full_source=first.full_source, optimization=optimization, notes=notes, models=models)


def _bench_shape(subjects: list[_Subject], b: int, s: int, ks: list[int], vocab: int, rng: np.random.Generator,
                 repeats: int, warmup: int, progress, feeds: list[list[tuple]] | None = None
                 ) -> tuple[list[BenchRow], list[dict]]:
    """Rows and parts of one (batch, seq): every engine of every model dir once per repeat, round-robin.
    `feeds` (real traffic): per subject, the batches (ids, mask, tt) that round r takes in turn (r mod n)."""
    n_layers = subjects[0].rt.num_layers
    if feeds is None:
        ids = rng.integers(min(100, vocab // 2), vocab, size=(b, s), dtype=np.int64)
        feeds = [[(ids, np.ones((b, s), dtype=np.int64), np.zeros((b, s), dtype=np.int64))]] * len(subjects)
    turn = [0]  # the round: which batch of feeds every engine runs now
    random_gates = rng.random((b, n_layers)) < 0.5
    layers_used: dict[str, list[float]] = {}  # key -> [layers summed over every row routed, rows]

    def forced_k(k: int) -> np.ndarray:
        pattern = np.zeros((b, n_layers), dtype=bool)
        pattern[:, :k] = True
        return pattern

    engines: dict[str, Callable[[], object]] = {}
    syncs = []
    for i, sub in enumerate(subjects):
        rt, be, baseline = sub.rt, sub.rt.backend, sub.baseline
        syncs.append(_sync_of(be))
        mine = feeds[i]
        ids, mask, tt = mine[0]
        h = be.run_embeddings(ids, mask, tt)

        def feed(mine=mine) -> tuple:
            return mine[turn[0] % len(mine)]

        def routed(key: str, forced: np.ndarray | None, rt=rt, feed=feed) -> Callable[[], None]:
            def call() -> None:
                used = rt.run_batch(*feed(), forced=forced).layers_used
                total = layers_used.setdefault(key, [0.0, 0])
                total[0] += float(used.sum())
                total[1] += used.size
            return call

        gated = rt.route == "gated"
        if baseline is not None:
            def full(baseline=baseline, feed=feed):
                return baseline(*feed())
        elif gated:
            full = routed(f"{i}/full", forced_k(n_layers))
        else:  # every layer, then the head: the router with every layer forced (no gate or exit head runs)
            def full(be=be, feed=feed):
                return route(be, *feed(), forced=forced_k(n_layers))
        engines.update({
            f"{i}/full": full,
            f"{i}/hadskip": routed(f"{i}/hadskip", None),
            **{f"{i}/forced/{k}": routed(f"{i}/forced/{k}", forced_k(k)) for k in ks},
            **({f"{i}/random": routed(f"{i}/random", random_gates)} if gated else {}),
            f"{i}/part/emb": lambda be=be, f=mine[0]: be.run_embeddings(*f),
            f"{i}/part/layer": lambda be=be, h=h, m=mask: be.run_layer(0, h, m),
            **({f"{i}/part/gate": lambda be=be, h=h, m=mask: be.run_gate(0, h, m)} if gated else {}),
            f"{i}/part/head": lambda be=be, h=h, m=mask: be.run_head(h, m),
        })

    def sync() -> None:
        for f in syncs:
            f()

    names = list(engines)
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:
        for _ in range(warmup):
            engines[n]()
        sync()
    for r in range(repeats):
        turn[0] = r
        if progress is not None:
            progress(f"bench batch={b} seq={s} repeat {r + 1}/{repeats}")
        for n in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            sync()
            t0 = time.perf_counter()
            engines[n]()
            sync()
            times[n].append((time.perf_counter() - t0) * 1e3)
    med = {n: float(np.median(v)) for n, v in times.items()}

    def avg_of(key: str) -> float:
        total, count = layers_used[key]
        return total / count
    fulls = {sub.label: med[f"{i}/full"] for i, sub in enumerate(subjects)}
    rows, parts = [], []
    for i, sub in enumerate(subjects):
        emb, layer, head = med[f"{i}/part/emb"], med[f"{i}/part/layer"], med[f"{i}/part/head"]
        gate_ms = med.get(f"{i}/part/gate")  # None: a model without gates
        parts.append({"batch": b, "seq": s, "emb_ms": round(emb, 4), "layer_ms": round(layer, 4),
                      "gate_ms": None if gate_ms is None else round(gate_ms, 4), "head_ms": round(head, 4),
                      "precision": sub.precision, "model": str(sub.path)})
        model = str(sub.path) if len(subjects) > 1 else ""

        def row(name: str, engine: str, k, avg: float, source: str = "", i=i, sub=sub, emb=emb, layer=layer,
                head=head, model=model) -> BenchRow:
            m = med[f"{i}/{name}"]
            ideal = 1.0 if engine == "full" else (emb + avg * layer + head) / (emb + n_layers * layer + head)
            t = times[f"{i}/{name}"]
            return BenchRow(engine=engine, k=k, batch=b, seq=s, median_ms=round(m, 4),
                            throughput=round(b * 1e3 / m, 2), avg_layers=round(avg, 3),
                            ratio_to_full=round(m / med[f"{i}/full"], 4), ideal_ratio=round(ideal, 4),
                            p10_ms=round(float(np.percentile(t, 10)), 4), p90_ms=round(float(np.percentile(t, 90)), 4),
                            backend=sub.rt.backend.name, source=source, precision=sub.precision, model=model,
                            speedup_vs_full={label: round(f / m, 4) for label, f in fulls.items()})

        rows += [row("full", "full", n_layers, float(n_layers), sub.full_source),
                 row("hadskip", "hadskip", sub.rt.info.budget if sub.rt.budget is None else sub.rt.budget,
                     avg_of(f"{i}/hadskip")),
                 *(row(f"forced/{k}", "forced", k, float(k)) for k in ks),
                 *([row("random", "random", None, avg_of(f"{i}/random"))] if f"{i}/random" in med else [])]
    return rows, parts
