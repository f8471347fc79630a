"""Gates decided on the GPU (issue 20): parity and speed of the one-graph routed batch, a step of scripts/gpu_check.sh.

    python3 bench/gpu_routing.py --work DIR --out OUT                 # on a GPU: the Must-show numbers
    python3 bench/gpu_routing.py --work DIR --out OUT --rehearsal     # no GPU: the same code on the CPU, tiny model,
                                                                      # cuda-bindings played by tests/cuda_standin.py
    python3 bench/gpu_routing.py --table OUT                          # print OUT/summary.json's device_gates

support   why_not() for IF (dense) and SWITCH (compact) nodes: which designs can run here, or why not
parity    MiniLM-L6 shape (random weights, the run dir of bench/gpu_bench.py), gpu_bench's padded batches of 1, 8
          and 32 rows at seq 128, each run 3 times (first sight, build, replay): gate decisions of the torch backend
          with device gates (dense; compact; fp16 dense) vs the ort-cpu runtime on its ONNX export (the `onnx`
          package needed; else the PyTorch CPU route, named in the report). fp16 disagreements are counted apart
          where the reference margin is within TIE_MARGIN of the offset.
speed     per shape (minilm, bert-base, bert-large: random weights, sdpa attention), dtype (fp32, fp16), batch (1,
          32), seq 128: the gate offset set so that about half the layers run (bisection on the inputs: the "dial"),
          then interleaved rounds, median ms of
            routed        one graph, gates decided on the device (dense: IF nodes)
            compact       the same with SWITCH row buckets (batch > 1)
            host          today's path: unit graphs, gate logits to the host after every gate
            forced_same   the routed call's own gate matrix forced (no gate is read: what the layers cost)
            anchor        the full HF model (BertModel) as one CUDA graph, same dtype (or torch.compile
                          reduce-overhead with --anchor compile)
          -> routed / forced_same (target <= 1.10) and routed / anchor (target < 1 when <= half the layers run)
Writes OUT/routing.json as it goes and merges {"device_gates": ...} into OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SHAPES = {"minilm": (384, 12, 6, 1536), "bert-base": (768, 12, 12, 3072), "bert-large": (1024, 16, 24, 4096),
          "tiny": (32, 4, 3, 48)}  # hidden, heads, layers, intermediate
TARGET_FORCED = 1.10


def log(msg: str) -> None:
    print(f"[gpu-routing] {msg}", file=sys.stderr, flush=True)


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


class Env:
    """Where the device gates come from: the GPU (cuda-bindings) or, in a rehearsal, the stand-in on the CPU."""

    def __init__(self, rehearsal: bool, work: Path):
        import torch

        self.torch, self.rehearsal = torch, rehearsal
        self.device = torch.device("cpu" if rehearsal else "cuda")
        self.lib = None
        if rehearsal:
            sys.path.insert(0, str(HERE.parent / "tests"))
            import cuda_standin

            self.standin = cuda_standin
            self.lib = cuda_standin.build_host_kernel(tempfile.mkdtemp(dir=work))

    def support(self) -> dict:
        from hadskip.modeling.cuda_conditional import why_not

        if self.rehearsal:
            return {"dense": None, "compact": None, "note": "rehearsal: cuda-bindings played by tests/cuda_standin.py"}
        return {mode: why_not(self.device, mode) for mode in ("dense", "compact")}

    def backend(self, model, dtype: str, gates: str):
        """A TorchBackend on the model: gates "dense" / "compact" decided on the device, or "off" (host)."""
        from hadskip.modeling.torch_backend import TorchBackend

        if not self.rehearsal:
            return TorchBackend(model, "cuda", dtype=dtype, device_gates=gates)
        be = TorchBackend(model, "cpu", dtype=dtype, cuda_graphs="off")
        if gates != "off":
            from hadskip.modeling.cuda_conditional import DeviceGates

            cuda = self.standin.host_cuda(self.lib)
            be.gate_graphs = DeviceGates(be.units(), "cpu", gates, api=cuda, capture=cuda.capture, arch=(9, 0),
                                         stream=lambda: 0)
        return be

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()


# -- parity ----------------------------------------------------------------------------------------------------

def reference_runtime(run: Path, work: Path, want_ort: bool):
    """(Runtime, name): ort-cpu on the run's ONNX export where the export can run here, else torch on the CPU."""
    import importlib.util

    from hadskip.runtime import Runtime

    if want_ort and importlib.util.find_spec("onnx") is not None:
        from hadskip.export import export_model

        out = work / "model-ort"
        try:
            if not (out / "manifest.json").is_file():
                t0 = time.perf_counter()
                export_model(run, out, engine="onnx", validate=False, progress=False)
                log(f"exported {out} in {time.perf_counter() - t0:.0f}s")
            return Runtime.load(out, backend="ort-cpu"), "ort-cpu (ONNX export of the run)"
        except Exception as exc:  # noqa: BLE001 - the torch reference still checks the rule
            log(f"no ort-cpu reference ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    return Runtime.load(run, backend="torch", device="cpu"), "torch on the CPU, fp32 (the ONNX export could not run)"


def parity(env: Env, run: Path, work: Path, seq: int, dtypes: list[str], want_ort: bool) -> dict:
    from gpu_bench import synthetic_batches

    from hadskip.modeling.checkpoint import load_run
    from hadskip.modeling.torch_backend import TIE_MARGIN
    from hadskip.runtime.router import route
    from hadskip.testing import GateMargins

    ref, ref_name = reference_runtime(run, work, want_ort)
    margins = GateMargins(ref.backend)
    report = {"reference": ref_name, "seq": seq, "cases": []}
    try:
        vocab = int(load_run(run)[0].config.hf_config["vocab_size"])
        batches = list(synthetic_batches(vocab, seq))
        refs = []
        for ids, mask, tt in batches:
            margins.seen.clear()
            r = ref.run_batch(ids, mask, tt)
            refs.append((r, np.stack(margins.seen, axis=1)))
        for dtype in dtypes:
            for mode in (("dense", "compact") if dtype in ("fp32", "bf16") or env.rehearsal else ("dense",)):
                be = env.backend(load_run(run)[0].eval(), dtype, mode)
                launches0 = getattr(be.gate_graphs, "launches", 0)
                rows = disagree = outside = 0
                worst = 0.0
                for (ids, mask, tt), (r, m) in zip(batches, refs, strict=True):
                    for _ in range(3):
                        got = route(be, ids, mask, tt)
                        differ = (got.gates != r.gates).any(axis=1)
                        rows += len(ids)
                        disagree += int(differ.sum())
                        for row in np.flatnonzero(differ):
                            first = int(np.argmax(got.gates[row] != r.gates[row]))
                            outside += int(abs(m[row, first]) > TIE_MARGIN[dtype])
                        if (~differ).any():
                            worst = max(worst, float(np.abs(got.logits[~differ] - r.logits[~differ]).max()))
                gg = be.gate_graphs
                case = {"dtype": dtype, "mode": mode, "rows_checked": rows, "gate_disagreements": disagree,
                        "disagreements_outside_tie_margin": outside, "tie_margin": TIE_MARGIN[dtype],
                        "max_abs_logit_diff": worst,
                        "graph_launches": (gg.launches - launches0) if gg is not None else 0,
                        "host_fallback": None if gg is not None and not gg.failed else
                        (be.device_gates_why or (gg.failed if gg is not None else None))}
                report["cases"].append(case)
                log(f"parity {dtype} {mode}: {disagree}/{rows} gate disagreements ({outside} outside the tie margin)"
                    f", max |dlogit| {worst:.3g}, {case['graph_launches']} graph launches")
                be.close()
    finally:
        ref.close()
    return report


# -- speed -----------------------------------------------------------------------------------------------------

def build_model(env: Env, shape: str, attn: str, seed: int = 0):
    """(GatedEncoder, its HF BertModel) of random weights, built on the device, gates scaled as gpu_bench does."""
    import torch
    from transformers import BertConfig, BertModel

    from hadskip.modeling.encoder import GatedEncoder, ModelConfig

    hidden, heads, layers, inter = SHAPES[shape]
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=inter, max_position_embeddings=512, pad_token_id=0, attn_implementation=attn)
    with torch.device(env.device):
        hf = BertModel(cfg)
        config = ModelConfig(backbone=f"random-{shape}", model_type="bert", num_layers=layers, hidden_size=hidden,
                             num_heads=heads, num_labels=2, gate_hidden=64, hf_config=hf.config.to_dict())
        model = GatedEncoder(config, hf)
    with torch.no_grad():
        for gate in model.gates:
            gate.fc1.weight.mul_(12)
            gate.fc2.weight.mul_(12)
            gate.fc2.bias.zero_()
    return model.eval(), hf.eval()


def anchor_call(env: Env, hf, ids: np.ndarray, how: str):
    """(callable, what it is): the full HF model on `ids` (full rows: no mask) as one CUDA graph, torch.compile's
    reduce-overhead mode, or eager (the rehearsal, or when a capture fails)."""
    torch = env.torch
    x = torch.from_numpy(ids).to(env.device)
    tt = torch.zeros_like(x)

    def forward():
        return hf(input_ids=x, token_type_ids=tt).last_hidden_state

    with torch.inference_mode():
        if env.rehearsal:
            return forward, "eager (rehearsal on the CPU)"
        if how == "compile":
            try:
                compiled = torch.compile(hf, mode="reduce-overhead")
                for _ in range(3):
                    compiled(input_ids=x, token_type_ids=tt)
                return lambda: compiled(input_ids=x, token_type_ids=tt), "torch.compile(mode='reduce-overhead')"
            except Exception as exc:  # noqa: BLE001
                log(f"torch.compile anchor failed ({type(exc).__name__}); trying one CUDA graph")
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    forward()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                forward()
            return graph.replay, "one CUDA graph of the HF model"
        except Exception as exc:  # noqa: BLE001
            torch.cuda.synchronize()
            log(f"CUDA graph anchor failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "timing it eagerly")
            return forward, "eager (the capture failed)"


def calibrate_offset(backend, ids, mask, tt, target: float, steps: int = 16) -> tuple[float, float]:
    """(offset, avg layers) with avg layers as near `target` as bisection finds (more offset: fewer layers)."""
    from hadskip.runtime.router import route

    lo, hi = -64.0, 64.0
    best = (0.0, float(route(backend, ids, mask, tt).gates.sum(1).mean()))
    for _ in range(steps):
        mid = (lo + hi) / 2
        avg = float(route(backend, ids, mask, tt, gate_offset=mid).gates.sum(1).mean())
        if abs(avg - target) < abs(best[1] - target) or (abs(avg - target) == abs(best[1] - target)
                                                          and abs(mid) < abs(best[0])):
            best = (mid, avg)
        if avg > target:
            lo = mid
        else:
            hi = mid
    return best


def time_engines(env: Env, engines: dict, repeats: int, warmup: int = 3) -> dict:
    """Median ms of each engine, interleaved round-robin (the starting engine rotates)."""
    names = list(engines)
    for n in names:
        for _ in range(warmup):
            engines[n]()
        env.sync()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            env.sync()
            t0 = time.perf_counter()
            engines[n]()
            env.sync()
            times[n].append((time.perf_counter() - t0) * 1e3)
    return {n: round(float(np.median(v)), 4) for n, v in times.items()}


def make_engines(dev, devc, host, batch: tuple, offset: float, gates: np.ndarray, call_anchor) -> dict:
    """The timed calls of one (shape, dtype, batch); see the module docstring."""
    from hadskip.runtime.router import route

    engines = {
        "routed": lambda: route(dev, *batch, gate_offset=offset),
        "host": lambda: route(host, *batch, gate_offset=offset),
        "forced_same": lambda: route(host, *batch, forced=gates),
        "anchor": call_anchor,
    }
    if devc is not None:
        engines["compact"] = lambda: route(devc, *batch, gate_offset=offset)
    return engines


def speed(env: Env, shape: str, dtypes: list[str], batches: list[int], seq: int, repeats: int, anchor: str,
          attn: str, emit) -> None:
    from hadskip.runtime.router import route

    model, hf = build_model(env, shape, attn)
    n_layers = model.num_layers
    rng = np.random.default_rng(0)
    for dtype in dtypes:  # fp32 first: the half-precision backends convert the model in place
        dev = env.backend(model, dtype, "dense")
        devc = env.backend(model, dtype, "compact") if max(batches) > 1 else None
        host = env.backend(model, dtype, "off")
        if dtype != "fp32":
            hf.pooler.to(dev.hidden_dtype)  # the anchor's pooler (our head copied its weights at build)
        for b in batches:
            row = {"shape": shape, "dtype": dtype, "batch": b, "seq": seq, "num_layers": n_layers, "attn": attn}
            try:
                ids = rng.integers(1000, 30000, size=(b, seq), dtype=np.int64)
                mask, tt = np.ones_like(ids), np.zeros_like(ids)
                offset, avg = calibrate_offset(host, ids, mask, tt, n_layers / 2)
                gates = route(host, ids, mask, tt, gate_offset=offset).gates
                row.update(gate_offset=offset, avg_layers=round(avg, 3))
                call_anchor, row["anchor"] = anchor_call(env, hf, ids, anchor)
                launches0 = dev.gate_graphs.launches if dev.gate_graphs is not None else 0
                engines = make_engines(dev, devc if b > 1 else None, host, (ids, mask, tt), offset, gates,
                                       call_anchor)
                with env.torch.inference_mode():
                    ms = time_engines(env, engines, repeats)
                same = [np.array_equal(route(be, ids, mask, tt, gate_offset=offset).gates, gates)
                        for be in (dev, devc) if be is not None and (be is dev or b > 1)]
                row.update({f"{k}_ms": v for k, v in ms.items()})
                row["routed_gates_equal_host"] = all(same)
                row["device_graph_used"] = dev.gate_graphs is not None and dev.gate_graphs.launches > launches0
                row["host_fallback"] = dev.device_gates_why or (dev.gate_graphs.failed or None
                                                               if dev.gate_graphs is not None else None)
                row["routed_over_forced_same"] = round(ms["routed"] / ms["forced_same"], 4)
                row["host_over_forced_same"] = round(ms["host"] / ms["forced_same"], 4)
                row["routed_over_anchor"] = round(ms["routed"] / ms["anchor"], 4)
                if "compact_ms" in row:
                    row["compact_over_forced_same"] = round(ms["compact"] / ms["forced_same"], 4)
                    row["compact_over_routed"] = round(ms["compact"] / ms["routed"], 4)
                row["meets_forced_target"] = row["routed_over_forced_same"] <= TARGET_FORCED
                row["beats_anchor"] = row["routed_over_anchor"] < 1.0 if avg <= n_layers / 2 else None
                row["status"] = "ok"
            except Exception as exc:  # noqa: BLE001 - one failed row; the others still run
                row["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            emit(row)
        for be in (dev, devc, host):
            if be is not None:
                be.close()
    del model, hf
    if env.device.type == "cuda":
        env.torch.cuda.empty_cache()


# -- report ----------------------------------------------------------------------------------------------------

COLUMNS = [("shape", "shape"), ("dtype", "dtype"), ("batch", "B"), ("avg_layers", "layers"), ("num_layers", "L"),
           ("routed_ms", "routed ms"), ("compact_ms", "compact"), ("host_ms", "host"), ("forced_same_ms", "forced"),
           ("anchor_ms", "anchor"), ("routed_over_forced_same", "routed/forced"),
           ("routed_over_anchor", "routed/anchor"), ("device_graph_used", "graph"), ("status", "status")]


def print_table(out: Path) -> int:
    path = out / "summary.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    dg = data.get("device_gates")
    if not dg:
        print("no device_gates section in summary.json (the gpu_routing step did not run or finish)")
        return 1
    print(f"device gates: {dg.get('device')}; support: {dg.get('support')}")
    for case in (dg.get("parity") or {}).get("cases", []):
        print(f"  parity vs {dg['parity']['reference']}: {case['dtype']} {case['mode']}: "
              f"{case['gate_disagreements']}/{case['rows_checked']} gate disagreements "
              f"({case['disagreements_outside_tie_margin']} outside the tie margin {case['tie_margin']}), "
              f"max |dlogit| {case['max_abs_logit_diff']:.3g}, graph launches {case['graph_launches']}")
    rows = [[str(r.get(k, "")) if not isinstance(r.get(k), float) else f"{r[k]:.4g}" for k, _ in COLUMNS]
            for r in dg.get("rows", [])]
    lines = [[h for _, h in COLUMNS]] + rows
    widths = [max(len(x[i]) for x in lines) for i in range(len(COLUMNS))]
    for line in lines:
        print("  " + "  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
    print(f"  targets: routed/forced <= {TARGET_FORCED} (forced: the same layers, no gate read); routed/anchor < 1 "
          "where <= half the layers run (anchor: the full HF model in one graph, same dtype)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--rehearsal", action="store_true", help="no GPU: CPU, tiny shape, the cuda-bindings stand-in")
    p.add_argument("--shapes", default=None, help="comma-separated (default minilm,bert-base,bert-large; tiny in a "
                                                  "rehearsal)")
    p.add_argument("--dtypes", default=None, help="default fp32,fp16 (fp32,bf16 in a rehearsal)")
    p.add_argument("--batch", default="1,32")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--anchor", choices=("graph", "compile"), default="graph")
    p.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa")
    p.add_argument("--no-ort", action="store_true", help="parity against the PyTorch CPU route, not ort-cpu")
    p.add_argument("--table", type=Path, metavar="OUT", help="print OUT/summary.json's device_gates and exit")
    a = p.parse_args(argv)
    if a.table is not None:
        return print_table(a.table)
    if a.work is None:
        p.error("--work is needed (or --table OUT)")
    out = a.out or a.work
    out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    import torch

    if not a.rehearsal and not torch.cuda.is_available():
        print("SKIP device gates: torch sees no CUDA GPU (--rehearsal runs the code on the CPU)", flush=True)
        return 0
    env = Env(a.rehearsal, a.work)
    shapes = (a.shapes or ("tiny" if a.rehearsal else "minilm,bert-base,bert-large")).split(",")
    dtypes = (a.dtypes or ("fp32,bf16" if a.rehearsal else "fp32,fp16")).split(",")
    batches = [int(x) for x in a.batch.split(",")]
    report = {"device": "CPU rehearsal (numbers mean nothing about GPUs)" if a.rehearsal else
              torch.cuda.get_device_name(), "support": env.support(), "rows": [], "parity": None,
              "settings": {"seq": a.seq, "repeats": a.repeats, "anchor": a.anchor, "attn": a.attn}}

    def save() -> None:
        write_json(out / "routing.json", report)
        path = out / "summary.json"
        data = json.loads(path.read_text()) if path.is_file() else {"rows": []}
        data["device_gates"] = report
        write_json(path, data)

    log(f"support: {report['support']}")
    save()
    from gpu_bench import build_run

    run = a.work / f"run-{'tiny' if a.rehearsal else 'minilm'}"
    if not (run / "run.json").is_file():
        build_run(run, "tiny" if a.rehearsal else "minilm", max_len=a.seq)
    try:
        report["parity"] = parity(env, run, a.work, a.seq, dtypes, not a.no_ort)
    except Exception as exc:  # noqa: BLE001 - speed still runs
        report["parity"] = {"status": f"failed: {type(exc).__name__}: {exc}"}
        log(f"parity failed: {type(exc).__name__}: {exc}")
    save()

    def emit(row: dict) -> None:
        report["rows"].append(row)
        log(" ".join(f"{k}={row[k]}" for k in ("shape", "dtype", "batch", "avg_layers", "routed_ms", "forced_same_ms",
                                                "anchor_ms", "routed_over_forced_same", "status") if k in row))
        save()

    for shape in shapes:
        try:
            speed(env, shape, dtypes, batches, a.seq, a.repeats, a.anchor, a.attn, emit)
        except Exception as exc:  # noqa: BLE001 - the next shape may still fit
            emit({"shape": shape, "status": f"failed: {type(exc).__name__}: {exc}"})
    return 0 if all(r.get("status") == "ok" for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
