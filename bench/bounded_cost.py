"""Bounded cost per request of `hadskip serve-local`, on loopback: long inputs cost what inputs of max_seq_len
cost, and idle connections cannot lock clients out.

    python3 bench/bounded_cost.py [MODEL_DIR] [--requests 500] [--idle 2000] [--json]

Starts the server as a subprocess on 127.0.0.1 (without MODEL_DIR: a tiny random model dir built the way the
tests build theirs, max length 64; needs the train and export extras) and measures, in one run:
  1. `--requests` normal requests (`--max-inputs` inputs that about fill max_seq_len, half of them pairs), then
     `--requests` maximum-size requests (bodies of about --max-body-bytes: half long pairs, half long texts, each
     text tens of kB): status codes (goal: zero 5xx), median time per request and its ratio long / normal
     (goal <= 2), and the server's resident memory before and after the long requests (goal: grows < 200 MB);
  2. `--idle` connections opened and left silent, then one normal client: its answer time (goal < 1 s), and how
     long the server takes to close the silent ones (goal: all within its header timeout + 2 s).
Bounded: at most 5,000 requests and 10,000 idle connections, each phase stops after --time-limit-s. Loopback
only. This process raises its own open-file limit for the idle connections (the server raises its own).
Exit status 1 when a request got a 5xx or no answer, or the normal client got none.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loopback  # noqa: E402
import serve_process  # noqa: E402
from load_test import WORDS, run_load  # noqa: E402  (the same client as the load test)
from loopback import free_port, tiny_model_dir  # noqa: E402

MAX_REQUESTS, MAX_IDLE = 5_000, 10_000


def log(msg: str) -> None:
    print(f"[bounded-cost] {msg}", file=sys.stderr, flush=True)


VOCAB = list(WORDS)  # replaced by the words that are one token each for the model's tokenizer (vocab_words)


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def vocab_words(model: Path) -> list[str]:
    """Words of the load test and of the tiny test models that the model's tokenizer keeps as one token, so
    that long and normal texts are alike, only longer."""
    from tokenizers import Tokenizer

    from hadskip.testing import WORDS as TINY_WORDS

    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    tok.no_truncation()
    found = [w for w in sorted(set(WORDS) | set(TINY_WORDS)) if len(tok.encode(w, add_special_tokens=False).ids) == 1]
    return found or list(WORDS)


def fitting_words(model: Path, max_seq_len: int) -> int:
    """The most words per input (a text, or a pair of two halves) that the model's tokenizer never truncates."""
    from hadskip.runtime.text import TextEncoder

    enc, rng = TextEncoder(model / "tokenizer.json", max_seq_len), random.Random(2)
    for k in range(max_seq_len, 1, -1):
        sample = [words(rng, k) for _ in range(20)] + [(words(rng, k // 2), words(rng, k // 2)) for _ in range(20)]
        if not enc.encode(sample).truncated.any():
            return k
    return 1


def normal_bodies(n: int, inputs: int, k: int, seed: int = 0) -> list[bytes]:
    """Inputs of k words (they about fill max_seq_len, untruncated); every other one a pair of two halves."""
    rng = random.Random(seed)
    return [json.dumps({"inputs": [words(rng, k) if i % 2 else [words(rng, k // 2), words(rng, k // 2)]
                                   for i in range(inputs)]}).encode() for _ in range(n)]


def long_bodies(n: int, inputs: int, max_body: int, seed: int = 1) -> list[bytes]:
    """Bodies just under max_body bytes: every other one all long pairs, the rest all long texts."""
    rng, variants = random.Random(seed), []

    def text(chars: int) -> str:
        return (words(rng, chars // 4) + " ")[:chars]

    for v in range(8):  # a few different bodies, reused
        chars = (max_body - 64 * inputs - 64) // (inputs * (2 if v % 2 == 0 else 1))
        items = [[text(chars), text(chars)] if v % 2 == 0 else text(chars) for _ in range(inputs)]
        body = json.dumps({"inputs": items}).encode()
        assert len(body) <= max_body, len(body)
        variants.append(body)
    return [variants[i % len(variants)] for i in range(n)]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(args, model: Path, port: int, logfile: Path) -> subprocess.Popen:
    return serve_process.start(model, args.host, port, ["--max-inputs", str(args.max_inputs), "--max-body-bytes",
                                                        str(args.max_body_bytes), "--header-timeout-s",
                                                        str(args.header_timeout_s)], logfile, args.start_timeout_s)


def idle_phase(args, port: int, payload: bytes) -> dict:
    """Open `args.idle` silent connections, time one normal request, then wait for the server to close them."""
    limit = serve_process.raise_fd_limit(args.idle + 256)
    n = min(args.idle, limit - 128)
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect((args.host, port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            continue
        socks.append(s)
    opened_at = time.monotonic()
    time.sleep(0.5)  # let them land in the server
    t0 = time.perf_counter()
    try:
        status, _ = asyncio.run(asyncio.wait_for(_one(args.host, port, payload), args.header_timeout_s + 5))
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        status = None
    answer_ms = (time.perf_counter() - t0) * 1000
    open_socks, closed_at = set(socks), []
    deadline = opened_at + args.header_timeout_s + 10
    while open_socks and time.monotonic() < deadline:
        for s in list(open_socks):
            try:
                if s.recv(1) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                continue
            except OSError:
                open_socks.discard(s)
                closed_at.append(time.monotonic() - opened_at)
        time.sleep(0.05)
    for s in socks:
        s.close()
    return {"connections": len(socks), "fd_limit": limit, "normal_client_status": status,
            "normal_client_ms": answer_ms, "closed_by_server": len(closed_at), "still_open": len(open_socks),
            "all_closed_s": max(closed_at) if closed_at and not open_socks else None,
            "header_timeout_s": args.header_timeout_s}


async def _one(host: str, port: int, body: bytes):
    from load_test import Conn

    conn = Conn(host, port)
    try:
        return await conn.request("POST", "/predict", body)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    p = loopback.parser(__doc__, tiny_default=True)
    p.add_argument("--requests", type=int, default=500, help=f"per kind (at most {MAX_REQUESTS})")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-inputs", type=int, default=32)
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--idle", type=int, default=2000, help=f"silent connections (at most {MAX_IDLE})")
    p.add_argument("--header-timeout-s", type=float, default=10.0, help="the server's")
    p.add_argument("--time-limit-s", type=float, default=300.0, help="per phase")
    args = loopback.parse(p, argv, start_timeout_s=180.0)
    if not 1 <= args.requests <= MAX_REQUESTS or not 0 <= args.idle <= MAX_IDLE or not 1 <= args.concurrency <= 64:
        p.error(f"--requests in [1, {MAX_REQUESTS}], --idle in [0, {MAX_IDLE}], --concurrency in [1, 64]")
    with tempfile.TemporaryDirectory(prefix="hadskip-bounded-") as tmp:
        model = args.model or tiny_model_dir(Path(tmp))
        max_seq_len = json.loads((model / "manifest.json").read_text())["max_seq_len"]
        port = free_port(args.host)
        log(f"serving {model} (max_seq_len {max_seq_len}) on {args.host}:{port}")
        proc = start_server(args, model, port, Path(tmp) / "server.log")
        try:
            VOCAB[:] = vocab_words(model)
            normal = normal_bodies(args.requests, args.max_inputs, fitting_words(model, max_seq_len))
            long = long_bodies(args.requests, args.max_inputs, args.max_body_bytes)
            asyncio.run(run_load(args.host, port, normal[:20], args.concurrency, args.time_limit_s))  # warm up
            log(f"{args.requests} normal requests")
            norm = asyncio.run(run_load(args.host, port, normal, args.concurrency, args.time_limit_s))
            rss_before = rss_mb(proc.pid)
            log(f"{args.requests} maximum-size requests ({len(long[0]) // 1024} kB bodies)")
            lng = asyncio.run(run_load(args.host, port, long, args.concurrency, args.time_limit_s))
            rss_after = rss_mb(proc.pid)
            log(f"{args.idle} idle connections")
            idle = idle_phase(args, port, normal[0]) if args.idle else None
        finally:
            serve_process.stop(proc, 60)
        server_exit = proc.returncode
    bad = sum(r["codes"].get("5xx", 0) + r["transport_errors"] for r in (norm, lng))
    ratio = lng["p50_ms"] / norm["p50_ms"] if norm["p50_ms"] else float("nan")
    report = {"model": str(args.model or "tiny random (max length 64)"), "max_seq_len": max_seq_len,
              "requests": args.requests, "concurrency": args.concurrency, "inputs_per_request": args.max_inputs,
              "long_body_bytes": len(long[0]), "normal_body_bytes": len(normal[0]), "normal": norm, "long": lng,
              "ratio_p50": ratio, "rss_before_mb": rss_before, "rss_after_mb": rss_after,
              "rss_growth_mb": rss_after - rss_before, "zero_5xx": bad == 0, "idle": idle, "server_exit": server_exit}
    report["goals"] = {
        "zero 5xx": bad == 0,
        "long/normal time per request <= 2": ratio <= 2.0,
        "RSS growth < 200 MB": report["rss_growth_mb"] < 200,
        "normal client answered < 1 s with idle connections": bool(idle and idle["normal_client_status"] == 200
                                                                    and idle["normal_client_ms"] < 1000),
        "idle connections closed within the header timeout (+2 s)": bool(
            idle and idle["all_closed_s"] is not None and idle["all_closed_s"] <= args.header_timeout_s + 2),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0 if bad == 0 and (idle is None or idle["normal_client_status"] == 200) else 1


def print_table(r: dict) -> None:
    print(f"\nmodel {r['model']}, max_seq_len {r['max_seq_len']}, {r['requests']} requests per kind x "
          f"{r['inputs_per_request']} inputs, concurrency {r['concurrency']}")
    print(f"{'kind':<8} {'body kB':>8} {'2xx':>5} {'4xx':>5} {'5xx':>5} {'no answer':>9} {'p50 ms':>9} {'p99 ms':>9}")
    for kind, row, size in (("normal", r["normal"], r["normal_body_bytes"]), ("long", r["long"], r["long_body_bytes"])):
        c = row["codes"]
        print(f"{kind:<8} {size / 1024:>8.0f} {c.get('2xx', 0):>5} {c.get('4xx', 0):>5} {c.get('5xx', 0):>5} "
              f"{row['sent'] - row['answered']:>9} {row['p50_ms']:>9.1f} {row['p99_ms']:>9.1f}")
    print(f"time per request long / normal (p50): {r['ratio_p50']:.2f}x")
    print(f"server RSS: {r['rss_before_mb']:.0f} MB before the long requests, {r['rss_after_mb']:.0f} MB after "
          f"(+{r['rss_growth_mb']:.0f} MB)")
    if r["idle"]:
        i = r["idle"]
        print(f"{i['connections']} idle connections: a normal client got {i['normal_client_status']} in "
              f"{i['normal_client_ms']:.0f} ms; the server closed {i['closed_by_server']} of them "
              f"(all within {i['all_closed_s']} s; header timeout {i['header_timeout_s']} s)")
    for goal, ok in r["goals"].items():
        print(f"  [{'ok' if ok else 'MISSED'}] {goal}")


if __name__ == "__main__":
    sys.exit(main())
