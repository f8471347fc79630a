"""Overload run of `hadskip serve-local` on loopback: ~2x its capacity, open-loop, three policies side by side.

    python3 bench/overload.py MODEL_DIR [--seconds 60] [--load 2.0] [--target-ms 500] [--min-budget B]
                              [--budget B] [--inputs 8] [--json docs/results/overload.json]
                              [--plot docs/img/overload.png]

MODEL_DIR is a model dir with a budget dial (`hadskip dial RUN`, then `hadskip export`) trained on
rotten-tomatoes (or on --task); the requests are its test sentences (the offline data, needs the train extra),
`--inputs` per request, and each answered row is scored against its label.
  1. capacity: the server at --budget with no target, a closed loop of --probe-connections clients for
     --probe-s seconds (the first quarter not counted): answered rows per second.
  2. for each policy, a fresh server, and arrivals at --load x capacity requests/s, Poisson (open loop: an
     arrival is sent at its time whatever came back; latency counts from that time), for --seconds; then the
     answers still out are waited for (at most --drain-s):
       queue    no target: every request waits (the queue is unbounded: --max-queue 10^6 rows)
       target   --latency-target-ms T --min-budget B: the queue runs at a lower budget instead
       429      a static queue cap: --max-queue = capacity x T rows (what the server clears within T); the rest
                get 429 at once
It prints per policy: p50/p99 latency of answered requests, % 429, accuracy of the answered rows, mean budget
and mean layers run; writes the figures (and per second: p99, mean budget, % 429 by arrival time) as JSON and a
plot of budget and p99 over time.

Client and server share this machine's cores (and, on a shared box, other jobs'): capacity is measured in the
same conditions as the runs, and only the comparison between the policies carries over. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_process  # noqa: E402
from load_test import Conn  # noqa: E402  (the same minimal HTTP/1.1 client)
from loopback import free_port  # noqa: E402

HOST = "127.0.0.1"
MAX_INFLIGHT = 6000  # connections this client opens at most (arrivals beyond it are counted as dropped)


def log(msg: str) -> None:
    print(f"[overload] {msg}", file=sys.stderr, flush=True)


def test_rows(model: Path, task: str = "rotten-tomatoes") -> tuple[list[str], list[int]]:
    """The task's test sentences and their label ids (the model's: it was trained on the task)."""
    from hadskip.data.sources import load_task

    manifest = json.loads((model / "manifest.json").read_text())
    if manifest.get("dial") is None:
        raise SystemExit(f"{model} has no budget dial: run `hadskip dial RUN` and export again")
    data = load_task(task)
    names = list(data.spec.label_names or [])
    if len(manifest["labels"]) != data.spec.num_labels or (task == "rotten-tomatoes" and names != manifest["labels"]):
        raise SystemExit(f"{model} has labels {manifest['labels']}, not {task}'s {names}")
    return list(data.test.texts), [int(k) for k in data.test.labels]


def requests(texts: list[str], gold: list[int], inputs: int, seed: int = 0) -> list[tuple[bytes, list[int]]]:
    """(body, labels) of requests of `inputs` test sentences each, shuffled, every sentence once."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    out = []
    for i in range(0, len(order) - inputs + 1, inputs):
        rows = order[i:i + inputs]
        out.append((json.dumps({"inputs": [texts[j] for j in rows]}).encode(), [gold[j] for j in rows]))
    return out


def server_options(policy: str, args, capacity_rows: float) -> list[str]:
    common = ["--max-batch", str(args.max_batch), "--max-connections", str(MAX_INFLIGHT + 500),
              "--max-body-connections", str(MAX_INFLIGHT), "--max-body-connections-per-ip", str(MAX_INFLIGHT),
              "--keep-alive-s", "600", "--header-timeout-s", "600", "--max-inputs", str(max(args.inputs, 32))]
    if args.budget is not None:
        common += ["--budget", str(args.budget)]
    if args.threads is not None:
        common += ["--threads", str(args.threads)]
    if policy == "queue":
        return common + ["--max-queue", "1000000"]
    if policy == "target":
        floor = [] if args.min_budget is None else ["--min-budget", str(args.min_budget)]
        return common + ["--max-queue", "1000000", "--latency-target-ms", str(args.target_ms), *floor]
    return common + ["--max-queue", str(max(args.max_batch, int(capacity_rows * args.target_ms / 1000)))]


class Record:
    def __init__(self):
        self.rows: list[dict] = []  # one per request sent: t (arrival, s from start), latency, status, ...

    def add(self, **kw) -> None:
        self.rows.append(kw)


async def closed_loop(port: int, reqs, connections: int, seconds: float) -> float:
    """Rows answered per second by `connections` clients sending back to back (the first quarter not counted)."""
    start = time.perf_counter()
    count_from, end = start + seconds / 4, start + seconds
    rows = 0
    nxt = 0

    async def client():
        nonlocal rows, nxt
        conn = Conn(HOST, port)
        try:
            while time.perf_counter() < end:
                body, gold = reqs[nxt % len(reqs)]
                nxt += 1
                status, _ = await conn.request("POST", "/predict", body)
                if status == 200 and time.perf_counter() >= count_from:
                    rows += len(gold)
        finally:
            await conn.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return rows / (end - count_from)


async def open_loop(port: int, reqs, rate: float, seconds: float, drain_s: float, seed: int = 1) -> Record:
    """Poisson arrivals at `rate` requests/s for `seconds`; each on an idle connection (or a new one)."""
    rec, idle, tasks = Record(), [], set()
    rng = random.Random(seed)
    dropped = 0
    start = time.perf_counter()

    async def send(t_arrival: float, body: bytes, gold: list[int]) -> None:
        conn = idle.pop() if idle else Conn(HOST, port)
        try:
            status, data = await asyncio.wait_for(conn.request("POST", "/predict", body), drain_s + seconds)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            await conn.close()
            rec.add(t=t_arrival, status=0, error=type(exc).__name__)
            return
        done = time.perf_counter() - start
        row = {"t": t_arrival, "status": status, "latency": done - t_arrival, "done": done}
        if status == 200:
            preds = json.loads(data)["predictions"]
            row.update(correct=sum(p["label_id"] == g for p, g in zip(preds, gold, strict=True)), n=len(preds),
                       layers=sum(p["num_layers"] for p in preds),
                       budgets=[p.get("budget") for p in preds])
        rec.add(**row)
        idle.append(conn)

    async def scrape() -> None:  # the server's hadskip_budget gauge, once a second
        conn = Conn(HOST, port)
        try:
            while True:
                status, data = await conn.request("GET", "/metrics")
                found = re.search(rb"^hadskip_budget (\S+)$", data, re.M) if status == 200 else None
                if found:
                    rec.gauge.append((round(time.perf_counter() - start, 2), float(found.group(1))))
                await asyncio.sleep(1.0)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            await conn.close()

    rec.gauge = []
    scraper = asyncio.ensure_future(scrape())
    t, i = 0.0, 0
    while t < seconds:
        t += rng.expovariate(rate)
        delay = start + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= MAX_INFLIGHT:
            dropped += 1
            continue
        body, gold = reqs[i % len(reqs)]
        i += 1
        task = asyncio.ensure_future(send(t, body, gold))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks), timeout=drain_s)
    for task in [*tasks, scraper]:
        task.cancel()
    rec.unanswered = len(tasks)
    rec.dropped = dropped
    for conn in idle:
        await conn.close()
    return rec


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]


def summarize(rec: Record, default_budget: float | None, seconds: float) -> dict:
    ok = [r for r in rec.rows if r["status"] == 200]
    lat = [r["latency"] for r in ok]
    budgets = [default_budget if b is None else b for r in ok for b in r["budgets"]]
    budgets = [b for b in budgets if b is not None]
    n_rows = sum(r["n"] for r in ok)
    sent = len(rec.rows) + rec.unanswered
    out = {"sent": sent, "answered": len(ok), "p50_ms": _ms(percentile(lat, 50)), "p99_ms": _ms(percentile(lat, 99)),
           "pct_429": round(100 * sum(r["status"] == 429 for r in rec.rows) / max(sent, 1), 2),
           "other_errors": sum(r["status"] not in (200, 429) for r in rec.rows), "unanswered": rec.unanswered,
           "dropped_by_client": rec.dropped,
           "accuracy": round(sum(r["correct"] for r in ok) / n_rows, 4) if n_rows else None,
           "mean_budget": round(sum(budgets) / len(budgets), 3) if budgets else None,
           "mean_layers": round(sum(r["layers"] for r in ok) / n_rows, 3) if n_rows else None,
           "answered_rows_per_s": round(n_rows / max(r["done"] for r in ok), 1) if ok else None,
           "budget_gauge": [[t, None if math.isnan(v) else v] for t, v in rec.gauge]}
    series = []
    for s in range(int(math.ceil(seconds))):
        sent_s = [r for r in rec.rows if s <= r["t"] < s + 1]
        ok_s = [r for r in sent_s if r["status"] == 200]
        b = [default_budget if x is None else x for r in ok_s for x in r["budgets"]]
        b = [x for x in b if x is not None]
        series.append({"t": s, "sent": len(sent_s), "p99_ms": _ms(percentile([r["latency"] for r in ok_s], 99)),
                       "mean_budget": round(sum(b) / len(b), 3) if b else None,
                       "pct_429": round(100 * sum(r["status"] == 429 for r in sent_s) / len(sent_s), 1)
                       if sent_s else None})
    out["per_second"] = series
    return out


def _ms(s: float | None) -> float | None:
    return None if s is None else round(s * 1000, 1)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for policy, style in (("queue", "-"), ("target", "-"), ("429", "--")):
        rows = result["policies"][policy]["per_second"]
        t = [r["t"] for r in rows]
        line, = top.plot(t, [math.nan if r["mean_budget"] is None else r["mean_budget"] for r in rows], style,
                         label=policy)
        if policy == "target":  # what /metrics said (hadskip_budget), scraped once a second
            gauge = result["policies"][policy]["budget_gauge"]
            top.plot([g[0] for g in gauge], [math.nan if g[1] is None else g[1] for g in gauge], ":",
                     color=line.get_color(), lw=1, label="target: /metrics hadskip_budget")
        bottom.plot(t, [math.nan if r["p99_ms"] is None else r["p99_ms"] for r in rows], style, label=policy)
    top.set_ylabel("mean budget (layers)")
    bottom.set_ylabel("p99 latency (ms)")
    bottom.set_yscale("log")
    bottom.axhline(result["settings"]["target_ms"], color="grey", lw=0.8, ls=":", label="target")
    bottom.set_xlabel("arrival time (s)")
    top.legend(loc="lower left")
    bottom.legend(loc="upper left")
    s = result["settings"]
    top.set_title(f"{s['load']:g}x capacity ({s['capacity_rows_per_s']:.0f} rows/s), {s['inputs']} sentences a "
                  f"request, target {s['target_ms']:g} ms")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--seconds", type=float, default=60.0, help="arrival window per policy")
    ap.add_argument("--load", type=float, default=2.0, help="arrival rate as a multiple of the measured capacity")
    ap.add_argument("--target-ms", type=float, default=500.0)
    ap.add_argument("--min-budget", type=float, default=None, help="the floor (default: the dial's lowest)")
    ap.add_argument("--budget", type=float, default=None, help="the servers' --budget (default: trained gates)")
    ap.add_argument("--inputs", type=int, default=8, help="sentences per request")
    ap.add_argument("--task", default="rotten-tomatoes", help="the labelled test sentences (a task the model "
                                                               "was trained on: a registry name or a folder)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--probe-s", type=float, default=20.0)
    ap.add_argument("--probe-connections", type=int, default=16)
    ap.add_argument("--drain-s", type=float, default=90.0, help="how long answers still out are waited for")
    ap.add_argument("--policies", default="queue,target,429")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    if not 1 <= args.seconds <= 600 or not 0.1 <= args.load <= 10:
        raise SystemExit("--seconds must be in [1, 600] and --load in [0.1, 10]")
    serve_process.raise_fd_limit(MAX_INFLIGHT + 1000)
    texts, gold = test_rows(args.model, args.task)
    reqs = requests(texts, gold, args.inputs)
    log(f"{len(texts)} test sentences, {len(reqs)} requests of {args.inputs}")
    logs = Path(tempfile.mkdtemp(prefix="overload-"))

    def serve(policy: str, capacity_rows: float):
        port = free_port(HOST)
        options = server_options(policy, args, capacity_rows)
        log(f"serve-local {policy}: {' '.join(options)}")
        return serve_process.start(args.model, HOST, port, options, logs / f"{policy}.log", 120), port

    proc, port = serve("queue", 0)
    try:
        capacity = asyncio.run(closed_loop(port, reqs, args.probe_connections, args.probe_s))
    finally:
        serve_process.stop(proc)
    rate = args.load * capacity / args.inputs
    log(f"capacity {capacity:.1f} rows/s; arrivals at {rate:.2f} requests/s ({args.load:g}x)")
    result = {"settings": {"model": args.model.name, "seconds": args.seconds, "load": args.load,
                           "target_ms": args.target_ms, "min_budget": args.min_budget, "budget": args.budget,
                           "inputs": args.inputs, "max_batch": args.max_batch, "capacity_rows_per_s":
                           round(capacity, 1), "arrivals_per_s": round(rate, 2), "probe_s": args.probe_s,
                           "static_max_queue": max(args.max_batch, int(capacity * args.target_ms / 1000))},
              "policies": {}}
    for policy in args.policies.split(","):
        proc, port = serve(policy, capacity)
        try:
            rec = asyncio.run(open_loop(port, reqs, rate, args.seconds, args.drain_s))
        finally:
            serve_process.stop(proc)
        result["policies"][policy] = s = summarize(rec, args.budget, args.seconds)
        log(f"{policy}: " + ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("per_second", "budget_gauge")))
    print(f"{'policy':8} {'p50 ms':>9} {'p99 ms':>9} {'% 429':>6} {'accuracy':>8} {'budget':>6} {'layers':>6} "
          f"{'answered':>8} {'sent':>6}")
    for policy, s in result["policies"].items():
        print(f"{policy:8} {_fmt(s['p50_ms']):>9} {_fmt(s['p99_ms']):>9} {s['pct_429']:>6.1f} "
              f"{_fmt(s['accuracy'], 4):>8} {_fmt(s['mean_budget'], 2):>6} {_fmt(s['mean_layers'], 2):>6} "
              f"{s['answered']:>8} {s['sent']:>6}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot and {"queue", "target", "429"} <= set(result["policies"]):
        plot(result, args.plot)
    return 0


def _fmt(x, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


if __name__ == "__main__":
    raise SystemExit(main())
