"""`hadskip serve-local` over real HTTP on 127.0.0.1: every endpoint, 46 kinds of bad request (each its own 4xx,
the server healthy after), the API key, 429 from a full queue, 424 from a failing backend, micro-batching seen
in /metrics, loading and shutdown, and HTTP results equal to `Runtime.predict`.

Servers run in threads (uvicorn on a socket bound here to a free port); the backend is slowed or broken by a
wrapper around the Runtime (`Hooked`), never by sleeping in the server code.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import re
import socket
import threading
import time

import httpx
import pytest

from hadskip.errors import HadSkipError, MissingExtraError
from hadskip.runtime import Runtime
from hadskip.runtime.serve import ServeConfig, create_app, is_loopback, make_server
from hadskip.runtime.serve.app import ENDPOINTS

uvicorn = pytest.importorskip("uvicorn")

TIMEOUT = 10.0
LIMITS = {"max_inputs": 8, "max_body_bytes": 16384}
GOOD = {"inputs": ["a fine movie", ["the plot", "was thin"]]}


class Hooked:
    """A Runtime whose predict calls `hook(rows)` first (to block or raise) and are counted; close is a no-op
    so that one loaded Runtime serves every server of this module."""

    def __init__(self, rt: Runtime, hook=None):
        self.rt, self.hook, self.calls = rt, hook, []

    def __getattr__(self, name):
        return getattr(self.rt, name)

    def predict(self, rows, batch_size=32):
        self.calls.append(list(rows))
        if self.hook is not None:
            self.hook(rows)
        return self.rt.predict(rows, batch_size=batch_size)

    def close(self):
        pass


class Served:
    """uvicorn in a thread on 127.0.0.1:<free port>; `stop()` is the graceful path a SIGTERM takes."""

    def __init__(self, app):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = make_server(app, app.state.hadskip.config, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.client = httpx.Client(base_url=self.url, timeout=TIMEOUT)

    def start(self, ready: bool = True) -> Served:
        self.thread.start()
        deadline = time.monotonic() + TIMEOUT
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        while ready and self.client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(TIMEOUT)
        self.client.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"

    @property
    def state(self):
        return self.app.state.hadskip

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(rt, hook=None, **config) -> tuple[Served, Hooked]:
    hooked = Hooked(rt, hook)
    config.setdefault("graceful_timeout_s", 5)
    return Served(create_app(ServeConfig(**config), lambda: hooked, model_name="tiny")), hooked


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')


def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample `name{labels}` in Prometheus text (labels in any order)."""
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == name and dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")) == labels:
            return float(m.group(3))
    raise AssertionError(f"{name}{labels} not in /metrics")


def wait_for(cond, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def server(rt):
    srv, _ = serve(rt, **LIMITS)
    with srv:
        yield srv


# -- endpoints ------------------------------------------------------------------------------------------------
def test_health_info_docs(server, rt):
    r = server.client.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    info = server.client.get("/info").json()
    assert info["labels"] == rt.labels and info["num_layers"] == rt.num_layers
    assert info["max_seq_len"] == rt.max_seq_len and info["backend"] == "ort-cpu" and info["budget"] == 2.0
    assert info["limits"]["max_inputs"] == 8 and info["limits"]["max_batch"] == 32 and info["auth"] is False
    assert info["precision"] == "fp32" and info["backbone"]["model_type"] == "bert"
    assert server.client.get("/docs").status_code == 200
    spec = server.client.get("/openapi.json").json()
    assert {"/predict", "/health", "/info", "/metrics"} <= set(spec["paths"])
    assert "examples" in spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]


@pytest.mark.parametrize("inputs", ["a fine movie", ["a fine movie", "dull"], [["the plot", "was thin"]],
                                    ["one", ["two", "three"], "four " * 3]])
def test_predict_equals_runtime(server, rt, inputs):
    r = server.client.post("/predict", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    rows = [inputs] if isinstance(inputs, str) else [x if isinstance(x, str) else tuple(x) for x in inputs]
    assert r.json() == {"predictions": rt.predict(rows).to_dicts()}  # one request = the same single batch
    assert int(r.headers["x-batch-rows"]) == len(rows) and float(r.headers["x-inference-ms"]) >= 0


def test_long_text_is_truncated_not_refused(server, rt):
    r = server.client.post("/predict", json={"inputs": ["fun " * 500, "fun"]})
    assert r.status_code == 200
    long, short = r.json()["predictions"]
    assert long["truncated"] is True and long["tokens"] == rt.max_seq_len
    assert short["truncated"] is False and short["tokens"] < rt.max_seq_len


def test_metrics_text(server):
    before = server.client.get("/metrics").text
    preds = server.client.post("/predict", json={"inputs": ["good", "bad", "ok then"]}).json()["predictions"]
    text = server.client.get("/metrics").text
    assert server.client.get("/metrics").headers["content-type"].startswith("text/plain; version=")
    for name in ("hadskip_batch_size", "hadskip_queue_seconds", "hadskip_inference_seconds",
                 "hadskip_layers_per_input"):
        assert f"# TYPE {name} histogram" in text and f'{name}_bucket{{le="+Inf"}}' in text
    ran = sum(p["num_layers"] for p in preds)
    assert metric(text, "hadskip_layers_executed_total") - metric(before, "hadskip_layers_executed_total") == ran
    assert metric(text, "hadskip_inputs_total") - metric(before, "hadskip_inputs_total") == 3
    skip = metric(text, "hadskip_skip_rate")
    assert skip == pytest.approx(1 - metric(text, "hadskip_layers_executed_total") /
                                 metric(text, "hadskip_layers_available_total"))
    assert metric(text, "hadskip_requests_total", endpoint="/predict") >= 1
    assert metric(text, "hadskip_ready") == 1
    for line in text.splitlines():  # every sample line is `name{labels} number`
        assert line.startswith("# ") or re.fullmatch(r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? \S+', line)


# -- bad requests ---------------------------------------------------------------------------------------------
J = {"Content-Type": "application/json"}


def body(text: str | bytes, headers=J) -> dict:
    return {"content": text.encode() if isinstance(text, str) else text, "headers": headers}


def chunks():
    for _ in range(40):
        yield b" " * 1000  # 40 kB, no Content-Length: refused while streaming


BAD = {  # name: (method, path, httpx kwargs, status)
    "empty body": ("POST", "/predict", body(""), 422),
    "whitespace body": ("POST", "/predict", body("  \n "), 422),
    "not JSON": ("POST", "/predict", body("hello"), 422),
    "truncated JSON": ("POST", "/predict", body('{"inputs": "a'), 422),
    "trailing garbage": ("POST", "/predict", body('{"inputs": "a"} x'), 422),
    "top-level array": ("POST", "/predict", {"json": ["a fine movie"]}, 422),
    "top-level string": ("POST", "/predict", {"json": "a fine movie"}, 422),
    "top-level null": ("POST", "/predict", body("null"), 422),
    "top-level number": ("POST", "/predict", body("3"), 422),
    "no inputs field": ("POST", "/predict", {"json": {}}, 422),
    "unknown extra field": ("POST", "/predict", {"json": {"inputs": "a", "truncate": True}}, 422),
    "misspelled field": ("POST", "/predict", {"json": {"input": "a"}}, 422),
    "inputs null": ("POST", "/predict", {"json": {"inputs": None}}, 422),
    "inputs number": ("POST", "/predict", {"json": {"inputs": 7}}, 422),
    "inputs boolean": ("POST", "/predict", {"json": {"inputs": True}}, 422),
    "inputs object": ("POST", "/predict", {"json": {"inputs": {"text": "a"}}}, 422),
    "inputs empty list": ("POST", "/predict", {"json": {"inputs": []}}, 422),
    "empty text": ("POST", "/predict", {"json": {"inputs": ""}}, 422),
    "whitespace-only text": ("POST", "/predict", {"json": {"inputs": " \t\n"}}, 422),
    "empty text in list": ("POST", "/predict", {"json": {"inputs": ["a", ""]}}, 422),
    "number in list": ("POST", "/predict", {"json": {"inputs": ["a", 3]}}, 422),
    "null in list": ("POST", "/predict", {"json": {"inputs": ["a", None]}}, 422),
    "object in list": ("POST", "/predict", {"json": {"inputs": [{"text": "a"}]}}, 422),
    "triple instead of pair": ("POST", "/predict", {"json": {"inputs": [["a", "b", "c"]]}}, 422),
    "pair of one": ("POST", "/predict", {"json": {"inputs": [["a"]]}}, 422),
    "pair with a number": ("POST", "/predict", {"json": {"inputs": [["a", 1]]}}, 422),
    "pair with empty text": ("POST", "/predict", {"json": {"inputs": [["a", ""]]}}, 422),
    "pair nested too deep": ("POST", "/predict", {"json": {"inputs": [[["a", "b"]]]}}, 422),
    "JSON nested 3000 deep": ("POST", "/predict", body('{"inputs": ' + "[" * 3000 + "]" * 3000 + "}"), 422),
    "lone surrogate": ("POST", "/predict", body('{"inputs": "a \\ud800 b"}'), 422),
    "invalid UTF-8": ("POST", "/predict", body(b'{"inputs": "\xff\xfe"}'), 422),
    "UTF-8 BOM": ("POST", "/predict", body(b'\xef\xbb\xbf{"inputs": "a"}'), 422),
    "5000-digit number": ("POST", "/predict", body('{"inputs": ' + "9" * 5000 + "}"), 422),
    "NaN literal": ("POST", "/predict", body('{"inputs": NaN}'), 422),
    "too many inputs": ("POST", "/predict", {"json": {"inputs": ["a"] * 9}}, 413),
    "body over limit": ("POST", "/predict", {"json": {"inputs": "word " * 4000}}, 413),
    "chunked body over limit": ("POST", "/predict", {"content": chunks(), "headers": J}, 413),
    "text/plain body": ("POST", "/predict", body('{"inputs": "a"}', {"Content-Type": "text/plain"}), 415),
    "form body": ("POST", "/predict", {"data": {"inputs": "a"}}, 415),
    "GET /predict": ("GET", "/predict", {}, 405),
    "PUT /predict": ("PUT", "/predict", {"json": GOOD}, 405),
    "POST /health": ("POST", "/health", {"json": GOOD}, 405),
    "DELETE /info": ("DELETE", "/info", {}, 405),
    "unknown path": ("GET", "/v1/predict", {}, 404),
}
RAW = {  # bytes on a socket: errors uvicorn (h11) answers before the app
    "invalid Content-Length": b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n{}",
    "garbage request line": b"HELLO THERE\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_request(server, name):
    method, path, kwargs, status = BAD[name]
    r = server.client.request(method, path, **kwargs)
    assert r.status_code == status, (name, r.text)
    err = r.json()
    assert isinstance(err["error"], str) and err["error"] and isinstance(err["error_type"], str)


@pytest.mark.parametrize("name", sorted(RAW))
def test_bad_raw_request(server, name):
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        s.sendall(RAW[name])
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:80]


def test_healthy_after_bad_requests(server, rt):
    for name in sorted(BAD):  # again, back to back on one connection
        method, path, kwargs, status = BAD[name]
        if name != "chunked body over limit":  # a generator is spent after one use
            assert server.client.request(method, path, **kwargs).status_code == status, name
    assert server.client.get("/health").status_code == 200
    r = server.client.post("/predict", json=GOOD)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2


def test_every_bad_request_is_counted_by_its_code(rt):
    """On a fresh server, /metrics counts exactly the table's errors by endpoint and code, none reached the
    model, and every answer was one JSON error line."""
    srv, hooked = serve(rt, **LIMITS)
    with srv:
        for name in sorted(BAD):
            method, path, kwargs, status = BAD[name]
            r = srv.client.request(method, path, **{**kwargs, "content": chunks()} if name.startswith("chunked")
                                   else kwargs)
            assert r.status_code == status and "\n" not in r.json()["error"], name
        text = srv.client.get("/metrics").text
    want = collections.Counter((path if path in ENDPOINTS else "other", str(status))
                               for _, path, _, status in BAD.values())
    for (endpoint, code), n in want.items():
        assert metric(text, "hadskip_errors_total", endpoint=endpoint, code=code) == n, (endpoint, code)
    assert not hooked.calls


# -- api key --------------------------------------------------------------------------------------------------
def test_api_key(rt):
    key = "s3cret-Key_123"
    srv, _ = serve(rt, api_key=key)
    with srv:
        c = srv.client
        assert c.get("/health").status_code == 200  # probes need no key
        assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200
        seen = []
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {key}"},
                        {"Authorization": "Bearer"}, {"Authorization": f"Bearer {key}x"}):
            for method, path in (("POST", "/predict"), ("GET", "/info"), ("GET", "/metrics")):
                r = c.request(method, path, json=GOOD, headers=headers)
                assert r.status_code == 401, (headers, path)
                assert r.json()["error_type"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
                seen.append(r.text)
        ok = {"Authorization": f"Bearer {key}"}
        assert c.post("/predict", json=GOOD, headers=ok).status_code == 200
        info = c.get("/info", headers=ok)
        assert info.status_code == 200 and info.json()["auth"] is True
        assert c.get("/metrics", headers=ok).status_code == 200
        seen += [info.text, c.get("/openapi.json").text, c.get("/metrics", headers=ok).text]
        assert not any(key in text for text in seen)  # the key is never echoed


def test_api_key_checked_before_the_body(rt):
    srv, hooked = serve(rt, api_key="k", max_body_bytes=64)
    with srv:
        r = srv.client.post("/predict", content=b"x" * 1000, headers=J)
        assert r.status_code == 401 and not hooked.calls


# -- overload, backend failure, batching ----------------------------------------------------------------------
def test_full_queue_answers_429_and_loop_stays_free(rt):
    release = threading.Event()
    srv, hooked = serve(rt, hook=lambda rows: release.wait(TIMEOUT), max_batch=1, max_wait_ms=0, max_queue=2)
    with srv, concurrent.futures.ThreadPoolExecutor(4) as pool:
        post = lambda: httpx.post(srv.url + "/predict", json={"inputs": "a"}, timeout=TIMEOUT)  # noqa: E731
        first = pool.submit(post)
        wait_for(lambda: hooked.calls, "the first runtime call")
        queued = [pool.submit(post) for _ in range(2)]
        wait_for(lambda: srv.state.batcher.queued_rows == 2, "two queued rows")
        t0 = time.perf_counter()
        r = srv.client.post("/predict", json={"inputs": "a"})
        assert r.status_code == 429 and r.json()["error_type"] == "overloaded" and r.headers["retry-after"] == "1"
        assert srv.client.get("/health").status_code == 200  # the event loop answers while the backend is busy
        assert time.perf_counter() - t0 < 2.0
        release.set()
        assert [f.result().status_code for f in [first, *queued]] == [200, 200, 200]
        assert srv.client.post("/predict", json=GOOD).status_code == 200
        text = srv.client.get("/metrics").text
        assert metric(text, "hadskip_errors_total", endpoint="/predict", code="429") == 1


def test_backend_failure_is_424_and_worker_survives(rt):
    broken = threading.Event()
    broken.set()

    def hook(rows):
        if broken.is_set():
            raise RuntimeError("device lost")

    srv, _ = serve(rt, hook=hook)
    with srv:
        r = srv.client.post("/predict", json=GOOD)
        assert r.status_code == 424 and r.json() == {"error": "inference failed: RuntimeError: device lost",
                                                     "error_type": "backend"}
        assert srv.client.get("/health").status_code == 200
        broken.clear()
        assert srv.client.post("/predict", json=GOOD).status_code == 200
        text = srv.client.get("/metrics").text
        assert metric(text, "hadskip_runtime_calls_total", outcome="error") == 1
        assert metric(text, "hadskip_errors_total", endpoint="/predict", code="424") == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_answers_503_not_never(rt):
    def hook(rows):
        raise SystemExit  # not an Exception: ends the worker thread, as a bug in the server might

    srv, _ = serve(rt, hook=hook)
    with srv:
        r = srv.client.post("/predict", json=GOOD)
        assert r.status_code == 503 and r.json()["error"] == "the inference worker stopped"
        wait_for(lambda: not srv.state.batcher.thread.is_alive(), "the worker to end")
        r = srv.client.get("/health")
        assert (r.status_code, r.json()) == (503, {"status": "worker stopped"})
        r = srv.client.post("/predict", json=GOOD)
        assert r.status_code == 503 and r.json()["error"] == "the inference worker stopped"


def test_one_failing_request_does_not_fail_its_batch(rt):
    release = threading.Event()

    def hook(rows):
        if rows == ["first"]:
            release.wait(TIMEOUT)
        if "poison" in rows:
            raise ValueError("bad row")

    srv, hooked = serve(rt, hook=hook, max_wait_ms=0)
    with srv, concurrent.futures.ThreadPoolExecutor(3) as pool:
        post = lambda text: httpx.post(srv.url + "/predict", json={"inputs": text}, timeout=TIMEOUT)  # noqa: E731
        first = pool.submit(post, "first")
        wait_for(lambda: hooked.calls, "the first call")
        good, bad = pool.submit(post, "good"), pool.submit(post, "poison")
        wait_for(lambda: srv.state.batcher.queued_rows == 2, "both queued")
        release.set()
        assert (first.result().status_code, good.result().status_code, bad.result().status_code) == (200, 200, 424)
        assert sorted(tuple(sorted(c)) for c in hooked.calls[1:]) == [("good",), ("good", "poison"), ("poison",)]


def test_concurrent_requests_share_runtime_calls(rt):
    """Deterministic: the first call holds until 11 more requests wait, which then run as ONE call."""
    texts = [f"text number {i} " + "fun " * i for i in range(12)]
    srv, hooked = serve(rt, max_wait_ms=0, hook=lambda rows: rows == [texts[0]] and wait_for(
        lambda: srv.state.batcher.queued_rows == 11, "11 queued rows"))
    with srv, concurrent.futures.ThreadPoolExecutor(12) as pool:
        first = pool.submit(srv.client.post, "/predict", json={"inputs": texts[0]})
        wait_for(lambda: hooked.calls, "the first call")
        rest = [pool.submit(httpx.post, srv.url + "/predict", json={"inputs": t}, timeout=TIMEOUT) for t in texts[1:]]
        replies = [f.result() for f in [first, *rest]]
        assert all(r.status_code == 200 for r in replies)
        text = srv.client.get("/metrics").text
        assert metric(text, "hadskip_runtime_calls_total", outcome="ok") == 2 == len(hooked.calls)
        assert metric(text, "hadskip_batch_requests_sum") == 12 and metric(text, "hadskip_batch_size_sum") == 12
        assert metric(text, "hadskip_batch_size_bucket", le="16.0") == 2  # batches of 1 and 11
        assert [int(r.headers["x-batch-rows"]) for r in replies] == [1] + [11] * 11
        want = rt.predict(texts)  # each row alone in its own batch of one (padding must not change it)
        for r, p in zip(replies, want, strict=True):
            (got,) = r.json()["predictions"]
            assert got["label"] == p.label and got["layers"] == p.layers and got["truncated"] == p.truncated
            assert got["probs"] == pytest.approx(p.probs, abs=1e-5)


def test_requests_within_the_wait_window_are_batched(rt):
    """Timing-based (no hook): 16 concurrent requests within a 300 ms window take far fewer runtime calls."""
    srv, hooked = serve(rt, max_wait_ms=300)
    with srv, concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: httpx.post(srv.url + "/predict", json={"inputs": f"text {i}"},
                                                     timeout=TIMEOUT), range(16)))
        assert all(r.status_code == 200 for r in replies)
        calls = metric(srv.client.get("/metrics").text, "hadskip_runtime_calls_total", outcome="ok")
        assert calls == len(hooked.calls) and calls <= 8, calls


# -- lifecycle ------------------------------------------------------------------------------------------------
def test_health_is_503_while_loading(rt):
    go = threading.Event()

    def loader():
        go.wait(TIMEOUT)
        return Hooked(rt)

    srv = Served(create_app(ServeConfig(), loader))
    srv.start(ready=False)
    try:
        r = srv.client.get("/health")
        assert (r.status_code, r.json()) == (503, {"status": "loading"})
        for method, path in (("POST", "/predict"), ("GET", "/info")):
            r = srv.client.request(method, path, json=GOOD)
            assert r.status_code == 503 and r.json()["error_type"] == "unavailable"
        go.set()
        wait_for(lambda: srv.client.get("/health").status_code == 200, "ready")
        assert srv.client.post("/predict", json=GOOD).status_code == 200
    finally:
        srv.stop()


def test_load_failure_is_reported(tmp_path):
    fatal = []
    srv = Served(create_app(ServeConfig(), lambda: Runtime.load(tmp_path / "nope"), on_fatal=fatal.append))
    srv.start(ready=False)
    try:
        wait_for(lambda: fatal, "on_fatal")
        assert "does not exist" in fatal[0]
        r = srv.client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "failed"
    finally:
        srv.stop()


def test_graceful_shutdown_finishes_in_flight_requests(rt):
    release = threading.Event()
    srv, hooked = serve(rt, hook=lambda rows: release.wait(TIMEOUT))
    srv.start()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, srv.url + "/predict", json=GOOD, timeout=TIMEOUT)
        wait_for(lambda: hooked.calls, "the in-flight call")
        srv.server.should_exit = True  # what SIGTERM does
        threading.Timer(0.3, release.set).start()
        r = pending.result()
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    srv.thread.join(TIMEOUT)
    assert not srv.thread.is_alive() and not srv.state.batcher.thread.is_alive()
    srv.client.close()


# -- configuration and CLI ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [{"max_batch": 0}, {"max_queue": 0}, {"max_inputs": 0}, {"max_wait_ms": -1},
                                 {"max_body_bytes": 10}, {"port": 70000}, {"api_key": ""}, {"api_key": "a b"},
                                 {"api_key": "ключ"}, {"max_connections": 0}, {"header_timeout_s": 0},
                                 {"keep_alive_s": -1}, {"body_timeout_s": 1e9}])
def test_config_is_checked(bad):
    with pytest.raises(HadSkipError):
        ServeConfig(**bad)


def test_config_repr_hides_the_key():
    assert "hunter2" not in repr(ServeConfig(api_key="hunter2"))


@pytest.mark.parametrize("host, loop", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                        ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                        ("192.168.1.5", False), ("example.com", False)])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_missing_fastapi_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "fastapi", None)  # `import fastapi` now raises ImportError
    with pytest.raises(MissingExtraError, match=r"hadskip\[serve\]"):
        create_app(ServeConfig(), lambda: None)


BLOCKED_SERVE = r"""
import importlib.abc, json, sys

BLOCKED = ("fastapi", "starlette", "uvicorn", "prometheus_client", "pydantic", "torch", "transformers")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")

sys.meta_path.insert(0, Block())
import hadskip.runtime
from hadskip.errors import MissingExtraError
from hadskip.runtime.serve import ServeConfig, create_app, is_loopback, parse_predict_body, serve
from hadskip.runtime.serve import batcher, connections, launcher, logs, request  # noqa: F401
out = {"parsed": parse_predict_body(b'{"inputs": ["a", ["b", "c"]]}', 4), "loopback": is_loopback("::1")}
for call in (lambda: create_app(ServeConfig(), lambda: None), lambda: serve("nowhere", ServeConfig())):
    try:
        call()
    except MissingExtraError as exc:
        out.setdefault("errors", []).append(str(exc))
out["heavy"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps(out))
"""


def test_serve_package_imports_without_its_extra():
    """hadskip.runtime.serve imports with none of fastapi/uvicorn/prometheus_client/torch; using the server
    then names the `serve` extra."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", BLOCKED_SERVE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == [] and out["parsed"] == ["a", ["b", "c"]] and out["loopback"] is True
    assert len(out["errors"]) == 2 and all("hadskip[serve]" in e for e in out["errors"])


def test_cli_non_loopback_warns_and_bad_dir_fails(model_dir, monkeypatch, capsys, tmp_path):
    from hadskip.cli.main import main

    runs = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: runs.append(self.config))
    with socket.socket() as s:  # a free port (the CLI binds it before uvicorn starts)
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
    assert main(["serve-local", str(model_dir), "--host", "0.0.0.0", "--port", str(port), "--max-batch", "4"]) == 0
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0" in err and "--api-key" in err
    assert runs[0].host == "0.0.0.0" and runs[0].port == port
    assert main(["serve-local", str(model_dir), "--api-key", "hunter2"]) == 0
    assert "warning" not in capsys.readouterr().err and runs[1].host == "127.0.0.1"
    assert main(["serve-local", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_help_lists_the_options():
    from typer.testing import CliRunner

    from hadskip.cli.main import app

    out = CliRunner().invoke(app, ["serve-local", "--help"], terminal_width=200).output
    for opt in ("--host", "--port", "--backend", "--max-batch", "--max-wait-ms", "--max-queue", "--api-key",
                "--max-inputs", "--max-body-bytes", "HADSKIP_API_KEY", "--max-connections", "--header-timeout-s",
                "--keep-alive-s", "--body-timeout-s", "--allowed-hosts", "--max-body-connections",
                "--max-body-connections-per-ip", "--body-base-s", "--body-min-rate"):
        assert opt in out, opt


def test_json_roundtrip_of_probs_is_exact(server, rt):
    """Floats survive JSON unchanged, so HTTP clients see exactly the runtime's probabilities."""
    r = server.client.post("/predict", content=json.dumps({"inputs": "fun film"}).encode(), headers=J)
    assert r.json()["predictions"][0]["probs"] == rt.predict(["fun film"])[0].probs
