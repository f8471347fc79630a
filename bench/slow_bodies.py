"""A normal client's latency while slow bodies attack `hadskip serve-local`, on loopback.

    python3 bench/slow_bodies.py [MODEL_DIR] [--slow 2100] [--requests 300] [--json]

Starts the server as a subprocess on 127.0.0.1 (without MODEL_DIR: a tiny random model dir built the way the
tests build theirs; needs the train and export extras), then keeps `--slow` connections that each send a POST's
headers with `Content-Length: --content-length` and one body byte (the attack of issue 23: ~2,100 of them once
locked every new client out for ~30 s); with `--reopen`, each one the server closes is reopened at once (a
connection flood on top, which costs the server an accept and a close per connection). Meanwhile one normal client sends
`--requests` requests one after another, each on a fresh connection, and its latencies are reported (p50, p99,
max) with their status codes, next to the same client's latencies before the attack. Loopback only; this
process raises its own open-file limit. Exit status 1 when the normal client got anything but 200.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loopback  # noqa: E402
import serve_process  # noqa: E402
from loopback import free_port  # noqa: E402

MAX_SLOW, MAX_REQUESTS = 10_000, 5_000
BODY = json.dumps({"inputs": ["a fine movie", ["the plot was thin", "the acting saved it"]]}).encode()


def log(msg: str) -> None:
    print(f"[slow-bodies] {msg}", file=sys.stderr, flush=True)


def normal_client(host: str, port: int, n: int, time_limit_s: float = 1e9) -> dict:
    """`n` POST /predict (fewer if `time_limit_s` runs out), each on a fresh connection: latencies (ms) and
    status codes (0: no answer)."""
    times, codes = [], {}
    end = time.monotonic() + time_limit_s
    for _ in range(n):
        if time.monotonic() > end:
            break
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            conn.request("POST", "/predict", BODY, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            code = r.status
        except OSError:
            code = 0
        finally:
            conn.close()
        times.append((time.perf_counter() - t0) * 1000)
        codes[str(code)] = codes.get(str(code), 0) + 1
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    return {"requests": len(times), "codes": codes, "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": times[-1]}


async def attacker(host: str, port: int, head: bytes, stop: asyncio.Event, stats: dict, reopen: bool) -> None:
    """A slow body (headers and one byte, then hold the connection until the server ends it), and with `reopen`
    another at once each time the server closes one (a connection flood on top)."""
    first = True
    while not stop.is_set() and (first or reopen):
        first = False
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats["refused"] += 1
            await asyncio.sleep(0.05)
            continue
        stats["opened"] += 1
        stats["holding"] += 1
        try:
            writer.write(head)
            await writer.drain()
            read = asyncio.ensure_future(reader.read(65536))
            stopped = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if read in done:
                read.exception()  # a reset is a close too (retrieved, so asyncio does not report it)
                stats["closed_by_server"] += 1
            else:
                read.cancel()
        except OSError:
            stats["closed_by_server"] += 1
        finally:
            stats["holding"] -= 1
            writer.close()


async def attack(args, port: int, result: dict) -> None:
    head = (f"POST /predict HTTP/1.1\r\nHost: {args.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {args.content_length}\r\n\r\n{{").encode()
    stop = asyncio.Event()
    stats = {"opened": 0, "refused": 0, "closed_by_server": 0, "holding": 0}
    tasks = []
    for _ in range(args.slow):
        tasks.append(asyncio.ensure_future(attacker(args.host, port, head, stop, stats, args.reopen)))
        await asyncio.sleep(0)
    deadline = time.monotonic() + 60
    while stats["opened"] < args.slow and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    log(f"{stats['opened']} slow bodies opened ({stats['holding']} held now); the normal client starts")
    loop = asyncio.get_running_loop()
    during = await loop.run_in_executor(None, normal_client, args.host, port, args.requests, args.time_limit_s)
    result.update(during=during, attack={**stats, "slow": args.slow, "content_length": args.content_length,
                                         "reopen": args.reopen})
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    p = loopback.parser(__doc__, tiny_default=True)
    p.add_argument("--slow", type=int, default=2100, help=f"slow-body connections kept open (at most {MAX_SLOW})")
    p.add_argument("--requests", type=int, default=300, help=f"normal requests (at most {MAX_REQUESTS})")
    p.add_argument("--content-length", type=int, default=1000, help="what the slow bodies announce")
    p.add_argument("--server-option", action="append", default=[], help="extra serve-local option (repeat)")
    p.add_argument("--reopen", action="store_true", help="reopen each slow body the server closes, at once")
    p.add_argument("--time-limit-s", type=float, default=120.0, help="for the normal client during the attack")
    args = loopback.parse(p, argv, start_timeout_s=180.0)
    if not 0 <= args.slow <= MAX_SLOW or not 1 <= args.requests <= MAX_REQUESTS:
        p.error(f"--slow in [0, {MAX_SLOW}], --requests in [1, {MAX_REQUESTS}]")
    fd_limit = serve_process.raise_fd_limit(args.slow + 512)
    if fd_limit < args.slow + 64:
        p.error(f"the open-file limit ({fd_limit}) is too low for --slow {args.slow}")
    with tempfile.TemporaryDirectory(prefix="hadskip-slow-bodies-") as tmp:
        model = args.model or loopback.tiny_model_dir(Path(tmp))
        port = free_port(args.host)
        log(f"serving {model} on {args.host}:{port}")
        proc = serve_process.start(model, args.host, port, [o for opt in args.server_option for o in opt.split()],
                                   Path(tmp) / "server.log", args.start_timeout_s)
        result: dict = {}
        try:
            normal_client(args.host, port, 20)  # warm up
            result["before"] = normal_client(args.host, port, args.requests)
            log(f"before the attack: p99 {result['before']['p99_ms']:.1f} ms")
            thread = threading.Thread(target=lambda: asyncio.run(attack(args, port, result)))
            thread.start()
            thread.join()
        finally:
            result["server_exit"] = serve_process.stop(proc, 60)
    ok = set(result["before"]["codes"]) == {"200"} and set(result["during"]["codes"]) == {"200"}
    report = {"model": str(args.model or "tiny random"), **result, "all_200": ok}
    if args.json:
        print(json.dumps(report))
    else:
        a, b, d = report["attack"], report["before"], report["during"]
        print(f"\n{a['slow']} slow bodies (Content-Length {a['content_length']}, one byte sent, "
              f"{'reopened at once when closed' if a['reopen'] else 'not reopened'}; {a['opened']} opened in all, "
              f"{a['closed_by_server']} closed by the server, {a['refused']} refused)")
        print(f"{'normal client':<16} {'requests':>8} {'codes':>16} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for name, row in (("before", b), ("during attack", d)):
            print(f"{name:<16} {row['requests']:>8} {json.dumps(row['codes']):>16} {row['p50_ms']:>8.1f} "
                  f"{row['p99_ms']:>8.1f} {row['max_ms']:>8.1f}")
        print(f"server exit status after SIGTERM: {report['server_exit']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
