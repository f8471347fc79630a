"""Load test on loopback: the same model dir behind Triton (hadskip triton-repo) and behind serve-local, in one run.

    python3 bench/triton_load.py MODEL_DIR [--requests 2000] [--concurrency 16] [--max-batch 32] [--json]

Starts tritonserver (the nvidia-pytriton wheel's, hadskip.triton.LocalTriton) on a repository written for the
model dir, then `hadskip serve-local` on the same model dir, and sends each the same requests (one text per
request) from this process: C client threads, each with its own keep-alive connection (stdlib http.client, JSON
bodies: Triton's KServe v2 JSON form and serve-local's /predict; the same client cost for both). Reports per
server: answered / errors / no answer, p50 and p99 latency, throughput, rows per model execution (Triton's
execution_count vs inference_count; serve-local's runtime calls from /metrics), and whether every answer's label
and layers equal `Runtime.predict` on the text alone (probabilities within --atol: a text batched with others is
padded differently). Exit status 1 on any error or mismatch.

Bounded: at most 100,000 requests and 256 threads, each server stops getting new requests after --time-limit-s,
servers bind 127.0.0.1 only and are stopped by PID. Client and servers share this machine's cores: the numbers
are a lower bound and the comparison, not the absolute rate, is what carries over.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_process  # noqa: E402  (bench/, beside this script)

MAX_REQUESTS, MAX_CONCURRENCY = 100_000, 256
WORDS = ("the a movie film plot acting was is very not quite good great dull fun boring long short story music "
         "scene actor director script ending funny sad slow fast brilliant awful fine charming clever").split()


def log(msg: str) -> None:
    print(f"[triton-load] {msg}", file=sys.stderr, flush=True)


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(n)]


class Target:
    """How to ask one server for one text and read the answer as (label_id, layers 0/1 list, probs)."""

    def __init__(self, name: str, port: int, path: str, body, parse):
        self.name, self.port, self.path, self.body, self.parse = name, port, path, body, parse


def triton_target(port: int, model: str) -> Target:
    def body(text: str) -> bytes:
        return json.dumps({"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}
                          ).encode()

    def parse(data: bytes):
        out = {o["name"]: o["data"] for o in json.loads(data)["outputs"]}
        return int(out["LABEL_ID"][0]), [int(x) for x in out["LAYERS"]], out["PROBS"]

    return Target("triton", port, f"/v2/models/{model}/infer", body, parse)


def serve_local_target(port: int, labels: list[str], num_layers: int) -> Target:
    def body(text: str) -> bytes:
        return json.dumps({"inputs": text}).encode()

    def parse(data: bytes):
        p = json.loads(data)["predictions"][0]
        layers = [0] * num_layers
        for i in p["layers"]:
            layers[i] = 1
        return int(p["label_id"]), layers, [p["probs"][name] for name in labels]

    return Target("serve-local", port, "/predict", body, parse)


def run_load(target: Target, items: list[str], concurrency: int, time_limit: float) -> dict:
    """Send every text once from `concurrency` threads; collect latencies, errors and answers by index."""
    lock = threading.Lock()
    state = {"next": 0}
    latencies: list[float] = []
    answers: dict[int, tuple] = {}
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + time_limit

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
        try:
            while time.perf_counter() < deadline:
                with lock:
                    i = state["next"]
                    if i >= len(items):
                        return
                    state["next"] = i + 1
                body = target.body(items[i])
                t0 = time.perf_counter()
                try:
                    conn.request("POST", target.path, body, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    with lock:
                        errors["no answer"] = errors.get("no answer", 0) + 1
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    if resp.status == 200:
                        latencies.append(dt)
                        answers[i] = target.parse(data)
                    else:
                        errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
        finally:
            conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    return {"sent": state["next"], "answered": len(lat), "errors": errors, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "seconds": wall, "throughput": len(lat) / wall if wall > 0 else 0.0,
            "timed_out": state["next"] < len(items), "answers": answers}


def check(answers: dict, reference, atol: float) -> dict:
    """Answers vs Runtime.predict of each text alone: labels and layers exactly, probabilities within atol."""
    labels = layers = probs = 0
    for i, (label_id, row_layers, row_probs) in answers.items():
        labels += label_id != int(reference.label_ids[i])
        layers += row_layers != reference.gates[i].astype(int).tolist()
        probs += not np.allclose(np.asarray(row_probs, dtype=np.float64), reference.probabilities[i], atol=atol)
    return {"checked": len(answers), "label_mismatches": int(labels), "layer_mismatches": int(layers),
            "prob_mismatches": int(probs)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def measure(target: Target, items: list[str], args, counters) -> dict:
    warm = items[: max(args.concurrency * 4, 64)]
    run_load(target, warm, args.concurrency, args.time_limit_s)
    before = counters()
    log(f"{target.name}: {len(items)} requests at concurrency {args.concurrency}")
    res = run_load(target, items, args.concurrency, args.time_limit_s)
    after = counters()
    executions, rows = after[0] - before[0], after[1] - before[1]
    res.update(server=target.name, executions=int(executions),
               rows_per_execution=rows / executions if executions else 0.0)
    return res


def run_triton(args, items: list[str], workdir: Path) -> dict:
    from hadskip.triton import LocalTriton, TritonRepoConfig, write_repo

    repo = workdir / "repo"
    write_repo(args.model, repo, TritonRepoConfig(backend=args.backend, instances=args.instances,
                                                  max_batch=args.max_batch, threads=args.threads,
                                                  max_queue_delay_us=int(args.max_wait_ms * 1000)))
    log("triton: starting tritonserver")
    with LocalTriton(repo, gpu=args.backend != "ort-cpu", log=workdir / "triton.log") as server:
        port = int(server.http_url.rsplit(":", 1)[1])

        def counters():
            stats = json.loads(get(port, "/v2/models/hadskip/stats")[1])["model_stats"][0]
            return stats["execution_count"], stats["inference_count"]

        res = measure(triton_target(port, "hadskip"), items, args, counters)
    res["stopped_cleanly"] = not any(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
    return res


def run_serve_local(args, items: list[str], workdir: Path, labels: list[str], num_layers: int) -> dict:
    port = free_port()
    options = ["--backend", args.backend, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    if args.threads:
        options += ["--threads", str(args.threads)]
    log(f"serve-local: starting on 127.0.0.1:{port}")
    proc = serve_process.start(args.model, "127.0.0.1", port, options, workdir / "serve-local.log",
                               args.start_timeout_s)
    try:
        def counters():
            text = get(port, "/metrics")[1].decode()
            return metric(text, "hadskip_batch_size_count"), metric(text, "hadskip_batch_size_sum")

        res = measure(serve_local_target(port, labels, num_layers), items, args, counters)
    finally:
        code = serve_process.stop(proc)  # by PID; graceful: in-flight requests finish
    res["stopped_cleanly"] = code == 0
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="model dir written by `hadskip export`")
    p.add_argument("--requests", type=int, default=2000, help=f"per server (at most {MAX_REQUESTS})")
    p.add_argument("--concurrency", type=int, default=16, help=f"client threads (at most {MAX_CONCURRENCY})")
    p.add_argument("--max-batch", type=int, default=32, help="rows per execution, both servers")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="batching delay, both servers")
    p.add_argument("--backend", default="ort-cpu", choices=("ort-cpu", "ort-cuda", "trt"))
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads per session")
    p.add_argument("--instances", type=int, default=1, help="Triton model instances")
    p.add_argument("--atol", type=float, default=1e-5, help="probability tolerance of the answer check")
    p.add_argument("--time-limit-s", type=float, default=300.0, help="per server; then no new requests")
    p.add_argument("--start-timeout-s", type=float, default=120.0)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS or not 1 <= args.concurrency <= MAX_CONCURRENCY:
        p.error(f"--requests must be in [1, {MAX_REQUESTS}] and --concurrency in [1, {MAX_CONCURRENCY}]")
    if not (args.model / "manifest.json").is_file():
        p.error(f"{args.model} is not a model dir (no manifest.json)")

    from hadskip.runtime import Runtime

    items = texts(args.requests)
    with Runtime.load(args.model, backend=args.backend, threads=args.threads) as rt:
        reference = rt.predict(items, batch_size=1)  # each text alone
        labels, num_layers = rt.labels, rt.num_layers
    with tempfile.TemporaryDirectory(prefix="hadskip-triton-load-") as tmp:
        rows = [run_triton(args, items, Path(tmp)), run_serve_local(args, items, Path(tmp), labels, num_layers)]
    for r in rows:
        r.update(check(r.pop("answers"), reference, args.atol))
    failed = any(r["errors"] or r["answered"] != args.requests or r["label_mismatches"] or r["layer_mismatches"]
                 for r in rows)
    report = {"model": str(args.model), "backend": args.backend, "requests": args.requests,
              "concurrency": args.concurrency, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
              "instances": args.instances, "cpus": os.cpu_count(), "avg_layers": float(reference.avg_layers),
              "num_layers": num_layers, "rows": rows,
              "throughput_ratio_triton_to_serve_local": (rows[0]["throughput"] / rows[1]["throughput"]
                                                         if rows[1]["throughput"] else float("nan")),
              "ok": not failed}
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 1 if failed else 0


def print_table(report: dict) -> None:
    cols = ("server", "sent", "answered", "errors", "p50 ms", "p99 ms", "req/s", "rows/exec", "answers = runtime")
    lines = [cols]
    for r in report["rows"]:
        same = (f"{r['checked'] - max(r['label_mismatches'], r['layer_mismatches'])}/{r['checked']}"
                + (f" (probs off: {r['prob_mismatches']})" if r["prob_mismatches"] else ""))
        lines.append((r["server"], str(r["sent"]), str(r["answered"]), str(sum(r["errors"].values())),
                      f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['throughput']:.1f}",
                      f"{r['rows_per_execution']:.2f}", same))
    widths = [max(len(line[i]) for line in lines) for i in range(len(cols))]
    for n, line in enumerate(lines):
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths,
                                                                                          strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\n{report['model']}: {report['requests']} requests (1 text each) at concurrency {report['concurrency']}, "
          f"{report['backend']}, max batch {report['max_batch']}, wait {report['max_wait_ms']} ms, "
          f"{report['avg_layers']:.2f} of {report['num_layers']} layers on average, {report['cpus']} CPUs shared by "
          f"client and servers")
    print(f"throughput Triton / serve-local: {report['throughput_ratio_triton_to_serve_local']:.2f}x; "
          f"all answered and equal to the runtime: {'yes' if report['ok'] else 'NO'}")


if __name__ == "__main__":
    sys.exit(main())
