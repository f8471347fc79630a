"""What a client must not be able to do to `hadskip serve-local` (issue: bounded cost per request), over real
HTTP on 127.0.0.1: hold connections open without sending a request (idle, slow headers, slow body), fill the
server's file descriptors, flood its log, smuggle a body with two framings, or stall it with one long pair;
and the small things: HEAD /health, no redirect built from the client's Host, one report of a load failure,
exit status 0 after a graceful SIGTERM.

In-process servers come from test_server's helpers (they use the same `make_server` as the CLI); the fd-limit,
signal and load-failure tests run the real CLI in a subprocess. Waits have generous caps and no timing is
asserted: a check that would hang before the fix fails at its cap instead.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from test_server import TIMEOUT, metric, serve, wait_for

from hadskip.runtime.serve.logs import RateLimit

pytest.importorskip("uvicorn")
FAST = {"header_timeout_s": 0.3, "keep_alive_s": 0.3, "body_timeout_s": 0.3}


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.settimeout(TIMEOUT)
    return s


def read_until_closed(s: socket.socket, drip: bytes = b"") -> bytes:
    """Everything the server sends until it closes the connection (sending `drip` every 50 ms meanwhile);
    raises socket.timeout if it is still open after TIMEOUT."""
    got, deadline = b"", time.monotonic() + TIMEOUT
    s.settimeout(0.05 if drip else TIMEOUT)
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            if time.monotonic() > deadline:
                raise
            try:
                s.sendall(drip)
            except OSError:  # closed by the server between two drips
                return got
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


# -- connections that send no request -------------------------------------------------------------------------
def test_idle_and_slow_connections_are_closed(rt):
    srv, hooked = serve(rt, **FAST)
    with srv:
        idle = connect(srv.port)  # sends nothing
        slow = connect(srv.port)  # sends headers forever, one byte at a time (uvicorn's keep-alive timer
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # restarts on every byte: only a header
        # timeout helps)
        used = connect(srv.port)  # one full request, then half a request
        used.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        while b'{"status":"ok"}' not in first:
            first += used.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        used.sendall(b"GET /health HTTP/1.1\r\n")
        assert read_until_closed(idle) == b""
        assert read_until_closed(slow, drip=b"X") == b""
        assert read_until_closed(used) == b""
        assert srv.server.connections.timed_out >= 3
        assert srv.client.post("/predict", json={"inputs": "fine"}).status_code == 200  # still serving
        assert len(hooked.calls) == 1


def test_a_half_sent_body_is_answered_408_and_closed(rt):
    srv, hooked = serve(rt, **FAST)
    with srv, connect(srv.port) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b'Content-Length: 100\r\n\r\n{"inputs": ')
        reply = read_until_closed(s)
        assert reply.startswith(b"HTTP/1.1 408") and b'"error_type":"timeout"' in reply
        assert not hooked.calls


def test_the_connection_limit_closes_the_oldest_idle_connection(rt):
    srv, hooked = serve(rt, max_connections=8)
    with srv:
        idle = [connect(srv.port) for _ in range(8)]
        wait_for(lambda: len(srv.server.connections.open) >= 8, "8 open connections")
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as fresh:  # a new client, beyond the limit
            assert fresh.post("/predict", json={"inputs": "fine"}).status_code == 200
        assert read_until_closed(idle[0]) == b""  # the oldest idle one made room
        assert srv.server.connections.evicted >= 1 and len(srv.server.connections.open) <= 8
        for s in idle:
            s.close()


def test_content_length_with_transfer_encoding_is_refused_and_closed(rt):
    srv, hooked = serve(rt)
    with srv, connect(srv.port) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 18\r\n"
                  b'Transfer-Encoding: chunked\r\n\r\n12\r\n{"inputs": "fine"}\r\n0\r\n\r\n')
        reply = read_until_closed(s)
        assert reply.startswith(b"HTTP/1.1 400") and b"Transfer-Encoding" in reply and not hooked.calls


# -- requests that cost a lot to encode -----------------------------------------------------------------------
def test_long_pairs_and_texts_are_answered_truncated(rt):
    """A ~64 kB pair (which once took gigabytes: every combination of the tokenizer's overflow windows of both
    texts) and a 64 kB text, in one request, next to a short one."""
    srv, hooked = serve(rt)
    pair = ["good film " * 3300, "dull plot " * 3300]
    with srv:
        r = srv.client.post("/predict", json={"inputs": [pair, "fun " * 16000, "fine"]})
        assert r.status_code == 200, r.text
        long_pair, long_text, short = r.json()["predictions"]
        assert long_pair["truncated"] and long_pair["tokens"] == rt.max_seq_len
        assert long_text["truncated"] and long_text["tokens"] == rt.max_seq_len
        assert not short["truncated"]
        assert long_pair == rt.predict([tuple(pair)]).to_dicts()[0]


# -- small things ---------------------------------------------------------------------------------------------
def test_head_health_and_no_redirect_from_the_host_header(rt):
    srv, _ = serve(rt, allowed_hosts=["*"])  # any Host reaches the routing (else it is refused first, 400)
    with srv:
        r = srv.client.head("/health")
        assert r.status_code == 200 and r.content == b""
        r = srv.client.get("/health/", headers={"Host": "evil.example"}, follow_redirects=False)
        assert r.status_code == 404 and "location" not in r.headers and r.json()["error_type"] == "not_found"
        text = srv.client.get("/metrics").text
        assert metric(text, "hadskip_requests_total", endpoint="/health") >= 2  # HEAD counted as /health


def test_rate_limit_keeps_one_traceback_and_counts_the_rest():
    now = [0.0]
    limit = RateLimit(burst=3, period_s=60, total=50, clock=lambda: now[0])
    out = io.StringIO()
    logger = logging.getLogger("hadskip-test-rate-limit")
    logger.propagate = False
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    logger.addFilter(limit)
    try:
        for i in range(10_000):
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                logger.error("socket.accept() out of system resource", exc_info=True)
            logger.warning("client %d sent garbage", i)  # same template, different args
        lines = out.getvalue().splitlines()
        assert out.getvalue().count("Traceback") == 1
        assert sum("out of system resource" in line for line in lines) == 3
        assert sum("sent garbage" in line for line in lines) == 3
        now[0] = 61.0
        logger.error("socket.accept() out of system resource")
        assert "[19994 log records dropped by the rate limit]" in out.getvalue().splitlines()[-1]
        for i in range(500):  # many distinct messages: the total per period still holds
            logger.error(f"message {i}")
        assert len(out.getvalue().splitlines()) - len(lines) - 1 <= 50
    finally:
        logger.removeHandler(handler)


# -- the real CLI in a subprocess -----------------------------------------------------------------------------
def start_cli(model, tmp_path, fd_limit: int | None = None, *extra: str) -> tuple[subprocess.Popen, int, object]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed by the caller
    limit = f"resource.setrlimit(resource.RLIMIT_NOFILE, ({fd_limit}, {fd_limit}))" if fd_limit else "pass"
    launch = f"import resource, sys; {limit}; from hadskip.cli.main import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if k != "HADSKIP_API_KEY"}
    proc = subprocess.Popen([sys.executable, "-c", launch, "serve-local", str(model), "--port", str(port), *extra],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, port, log


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def test_cli_survives_running_out_of_descriptors_without_flooding_its_log(model_dir, tmp_path):
    """fd limit 256 and 700 connections that send nothing (20,000 once exhausted the descriptors: no new
    client got an answer and the log grew 175 MB in 30 s of accept() tracebacks). Then SIGTERM: exit 0."""
    proc, port, log = start_cli(model_dir, tmp_path, 256)
    url = f"http://127.0.0.1:{port}"
    socks = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(url + "/health", timeout=TIMEOUT).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        for _ in range(700):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            socks.append(s)
        time.sleep(1.0)  # let the server accept (and close) what it can
        r = httpx.post(url + "/predict", json={"inputs": "fine"}, timeout=30)
        assert r.status_code == 200
        text = httpx.get(url + "/metrics", timeout=30).text
        assert metric(text, "hadskip_ready") == 1
    finally:
        for s in socks:
            s.close()
        code = stop(proc)
        log.close()
    out = (tmp_path / "server.log").read_text()
    assert code == 0, out[-3000:]
    assert len(out) < 20_000 and out.count("Traceback") <= 1, out[-3000:]  # rate-limited, if accept() ran out
    assert "Application shutdown complete" in out


def test_cli_reports_a_load_failure_once(model_dir, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    layer = sorted((broken / "layers").iterdir())[0]
    layer.write_bytes(layer.read_bytes()[:-10] + b"0123456789")  # corrupt: its sha256 no longer matches
    proc, port, log = start_cli(broken, tmp_path)
    try:
        code = proc.wait(120)
    finally:
        stop(proc)
        log.close()
    out = (tmp_path / "server.log").read_text()
    assert code == 2, out
    assert out.count(layer.name) == 1 and out.count("error: cannot load the model") == 1, out


def test_api_error_messages_are_json_one_liners(rt):
    srv, _ = serve(rt, max_body_bytes=64)
    with srv:
        for body in (b"x" * 100, b'{"inputs": "a"', b"\xff", json.dumps({"inputs": ["a"] * 40}).encode()[:64]):
            r = srv.client.post("/predict", content=body, headers={"Content-Type": "application/json"})
            assert 400 <= r.status_code < 500 and "\n" not in r.json()["error"]
