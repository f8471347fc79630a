"""Load test of `hadskip serve-local` on loopback: micro-batching on vs off, in one run.

    python3 bench/load_test.py MODEL_DIR [--requests 2000] [--concurrency 16] [--max-batch 32] [--json]

Starts the server twice as a subprocess on 127.0.0.1 (once with --max-batch N, once with --max-batch 1), sends
the same requests from this process (a separate client: asyncio streams speaking HTTP/1.1 keep-alive, C
connections), and reports per mode: 2xx / 4xx / 5xx / transport errors, p50 and p99 latency, throughput,
rows per runtime call (from /metrics), and the throughput ratio on / off. Exit status 1 when any request got a
5xx or no answer.

Bounded: at most 100,000 requests and 256 connections, each mode stops issuing requests after --time-limit-s,
and a server that is not ready within --start-timeout-s is stopped. Loopback only: any other --host is refused,
so this cannot be pointed at someone else's server. Client and server share this machine's cores, so the
numbers are a lower bound and only the ratio between the modes carries over.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import loopback  # noqa: E402  (bench/, beside this script)
import serve_process  # noqa: E402
from loopback import free_port  # noqa: E402

MAX_REQUESTS, MAX_CONCURRENCY = 100_000, 256
WORDS = ("the a movie film plot acting was is very not quite good great dull fun boring long short story music "
         "scene actor director script ending funny sad slow fast brilliant awful fine charming clever").split()


def log(msg: str) -> None:
    print(f"[load-test] {msg}", file=sys.stderr, flush=True)


def bodies(n: int, inputs: int, seed: int = 0) -> list[bytes]:
    """n request bodies of `inputs` sentences of 3..40 words each (the same in both modes)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(inputs)]
        out.append(json.dumps({"inputs": texts if inputs > 1 else texts[0]}).encode())
    return out


# -- a minimal HTTP/1.1 keep-alive client (less client CPU than a full client library on a shared box) ---------
class Conn:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        data = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:  # the peer went first
                pass
        self.reader = self.writer = None


async def run_load(host: str, port: int, payloads: list[bytes], concurrency: int, time_limit: float) -> dict:
    latencies: list[float] = []
    codes: dict[str, int] = {}
    transport_errors = 0
    next_i = 0
    deadline = time.perf_counter() + time_limit

    async def worker():
        nonlocal next_i, transport_errors
        conn = Conn(host, port)
        try:
            while next_i < len(payloads) and time.perf_counter() < deadline:
                body = payloads[next_i]
                next_i += 1
                t0 = time.perf_counter()
                try:
                    status, _ = await asyncio.wait_for(conn.request("POST", "/predict", body), 30)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                    transport_errors += 1
                    await conn.close()
                    continue
                latencies.append(time.perf_counter() - t0)
                key = f"{status // 100}xx"
                codes[key] = codes.get(key, 0) + 1
                codes[str(status)] = codes.get(str(status), 0) + 1
        finally:
            await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    return {"sent": next_i, "answered": len(lat), "codes": codes, "transport_errors": transport_errors,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "mean_ms": 1000 * sum(lat) / len(lat) if lat else float("nan"),
            "seconds": wall, "throughput": len(lat) / wall if wall > 0 else 0.0,
            "timed_out": next_i < len(payloads)}


async def get(host: str, port: int, path: str) -> tuple[int, bytes]:
    conn = Conn(host, port)
    try:
        return await asyncio.wait_for(conn.request("GET", path), 10)
    finally:
        await conn.close()


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


# -- one mode: start a server, warm it up, load it, read /metrics, stop it ------------------------------------
def run_mode(args, mode: str, max_batch: int, payloads: list[bytes], workdir: Path) -> dict:
    port = args.port or free_port(args.host)
    options = ["--backend", args.backend, "--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--max-inputs", str(max(32, args.inputs_per_request))]
    if args.threads:
        options += ["--threads", str(args.threads)]
    logfile = workdir / f"server-{mode}.log"
    log(f"{mode}: starting the server (max_batch {max_batch}) on {args.host}:{port}")
    proc = serve_process.start(args.model, args.host, port, options, logfile, args.start_timeout_s)
    try:
        warm = max(args.concurrency * 2, min(200, len(payloads) // 10))
        asyncio.run(run_load(args.host, port, payloads[:warm], args.concurrency, args.time_limit_s))
        _, before = asyncio.run(get(args.host, port, "/metrics"))
        log(f"{mode}: {len(payloads)} requests at concurrency {args.concurrency}")
        res = asyncio.run(run_load(args.host, port, payloads, args.concurrency, args.time_limit_s))
        _, after = asyncio.run(get(args.host, port, "/metrics"))
    finally:
        serve_process.stop(proc)  # graceful: in-flight requests finish
    b, a = before.decode(), after.decode()
    calls = (metric(a, "hadskip_batch_size_count") or 0) - (metric(b, "hadskip_batch_size_count") or 0)
    rows = (metric(a, "hadskip_batch_size_sum") or 0) - (metric(b, "hadskip_batch_size_sum") or 0)
    res.update(mode=mode, max_batch=max_batch, runtime_calls=int(calls), rows_per_call=rows / calls if calls else 0,
               skip_rate=metric(a, "hadskip_skip_rate"), server_exit=proc.returncode,
               stopped_gracefully=proc.returncode == 0 and "Application shutdown complete" in logfile.read_text())
    return res


def main(argv: list[str] | None = None) -> int:
    p = loopback.parser(__doc__, tiny_default=False)
    p.add_argument("--requests", type=int, default=2000, help=f"per mode (at most {MAX_REQUESTS})")
    p.add_argument("--concurrency", type=int, default=16, help=f"connections (at most {MAX_CONCURRENCY})")
    p.add_argument("--inputs-per-request", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=32, help="the batching mode's --max-batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--backend", default="ort-cpu")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.add_argument("--time-limit-s", type=float, default=300.0, help="per mode; then no new requests")
    args = loopback.parse(p, argv, start_timeout_s=120.0)
    if not 1 <= args.requests <= MAX_REQUESTS or not 1 <= args.concurrency <= MAX_CONCURRENCY:
        p.error(f"--requests must be in [1, {MAX_REQUESTS}] and --concurrency in [1, {MAX_CONCURRENCY}]")
    payloads = bodies(args.requests, args.inputs_per_request)
    with tempfile.TemporaryDirectory(prefix="hadskip-load-") as tmp:
        rows = [run_mode(args, "batching", args.max_batch, payloads, Path(tmp)),
                run_mode(args, "no batching", 1, payloads, Path(tmp))]
    on, off = rows
    ratio = on["throughput"] / off["throughput"] if off["throughput"] else float("nan")
    bad = sum(r["codes"].get("5xx", 0) + r["transport_errors"] for r in rows)
    report = {"model": str(args.model), "backend": args.backend, "requests": args.requests,
              "concurrency": args.concurrency, "inputs_per_request": args.inputs_per_request,
              "max_wait_ms": args.max_wait_ms, "cpus": os.cpu_count(), "rows": rows,
              "throughput_ratio": ratio, "zero_5xx": bad == 0}
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0 if bad == 0 else 1


def print_table(report: dict) -> None:
    cols = ("mode", "max_batch", "sent", "2xx", "4xx", "5xx", "no answer", "p50 ms", "p99 ms", "req/s", "rows/call")
    lines = [cols]
    for r in report["rows"]:
        c = r["codes"]
        lines.append((r["mode"], str(r["max_batch"]), str(r["sent"]), str(c.get("2xx", 0)), str(c.get("4xx", 0)),
                      str(c.get("5xx", 0)), str(r["transport_errors"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['throughput']:.1f}", f"{r['rows_per_call']:.2f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(cols))]
    for n, line in enumerate(lines):
        cells = (v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths, strict=True)))
        print("  ".join(cells))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\n{report['requests']} requests x {report['inputs_per_request']} input(s) at concurrency "
          f"{report['concurrency']}, {report['backend']}, {report['cpus']} CPUs shared by client and server")
    print(f"throughput ratio batching / no batching: {report['throughput_ratio']:.2f}x; "
          f"zero 5xx: {'yes' if report['zero_5xx'] else 'NO'}")
    for r in report["rows"]:
        if not r["stopped_gracefully"]:
            print(f"{r['mode']}: the server did not shut down gracefully on SIGTERM (exit {r['server_exit']})")
        if r["timed_out"]:
            print(f"{r['mode']}: stopped by --time-limit-s after {r['sent']} requests")


if __name__ == "__main__":
    sys.exit(main())
