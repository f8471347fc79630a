"""The server's Prometheus metrics (prometheus_client, one registry per app; extra `serve`).

    hadskip_requests_total{endpoint}         hadskip_errors_total{endpoint,code}   hadskip_runtime_calls_total{outcome}
    hadskip_batch_size, hadskip_batch_requests, hadskip_queue_seconds, hadskip_inference_seconds,
    hadskip_predict_seconds, hadskip_layers_per_input                                              (histograms)
    hadskip_inputs_total, hadskip_truncated_inputs_total, hadskip_layers_executed_total,
    hadskip_layers_available_total, hadskip_layer_executed_total{layer},
    hadskip_budget_inputs_total{budget}, hadskip_lowered_inputs_total                              (counters)
    hadskip_skip_rate, hadskip_ready, hadskip_queue_rows, hadskip_budget, ... (gauges read at scrape time)

Unknown paths count as endpoint "other", so a scan of random URLs cannot grow the label set.
"""

from __future__ import annotations

import threading
from typing import Callable

from hadskip.errors import require

SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class Metrics:
    """Counters and histograms, updated from the event loop and the worker thread (prometheus_client locks)."""

    def __init__(self, max_batch: int, num_layers: int = 0):
        pc = require("prometheus_client", "serve", "hadskip serve-local")
        self.pc = pc
        self.registry = r = pc.CollectorRegistry()
        self.requests = pc.Counter("hadskip_requests", "HTTP requests by endpoint.", ["endpoint"], registry=r)
        self.errors = pc.Counter("hadskip_errors", "HTTP error responses by endpoint and status code.",
                                 ["endpoint", "code"], registry=r)
        self.calls = pc.Counter("hadskip_runtime_calls", "Runtime calls (one per micro-batch) by outcome.",
                                ["outcome"], registry=r)
        for outcome in ("ok", "error"):
            self.calls.labels(outcome)
        sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if b < max_batch] + [max_batch]
        self.batch_rows = pc.Histogram("hadskip_batch_size", "Rows per runtime call.", buckets=sizes, registry=r)
        self.batch_requests = pc.Histogram("hadskip_batch_requests", "Requests merged into one runtime call.",
                                           buckets=sizes, registry=r)
        self.queue_s = pc.Histogram("hadskip_queue_seconds", "Time a request waited before its runtime call.",
                                    buckets=SECONDS, registry=r)
        self.infer_s = pc.Histogram("hadskip_inference_seconds", "Duration of one runtime call.", buckets=SECONDS,
                                    registry=r)
        self.request_s = pc.Histogram("hadskip_predict_seconds", "Time in the server per successful /predict.",
                                      buckets=SECONDS, registry=r)
        self.inputs = pc.Counter("hadskip_inputs", "Inputs classified.", registry=r)
        self.truncated = pc.Counter("hadskip_truncated_inputs", "Inputs cut to max_seq_len.", registry=r)
        self.layers_run = pc.Counter("hadskip_layers_executed", "Layers executed, summed over inputs.", registry=r)
        self.layers_available = pc.Counter("hadskip_layers_available", "Inputs x model layers.", registry=r)
        self.per_layer = pc.Counter("hadskip_layer_executed", "Inputs that ran each layer (0-based).", ["layer"],
                                    registry=r)
        self.budget_inputs = pc.Counter("hadskip_budget_inputs", "Inputs answered, by the budget they ran at "
                                        "(\"trained\": the trained gates; \"other\": a client's own budget).",
                                        ["budget"], registry=r)
        self.lowered = pc.Counter("hadskip_lowered_inputs", "Inputs run below the budget they asked for "
                                  "(--latency-target-ms).", registry=r)
        self.lock = threading.Lock()  # the skip rate's two sums, read together
        self.run_sum = self.available_sum = 0
        self.gauge("hadskip_skip_rate", "Share of layers skipped since start.",
                   lambda: 1.0 - self.run_sum / self.available_sum if self.available_sum else 0.0)
        self.num_layers, self.layers_hist = 0, None
        if num_layers:
            self.set_layers(num_layers)

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        """A gauge whose value `read()` gives at scrape time."""
        self.pc.Gauge(name, help, registry=self.registry).set_function(read)

    def set_layers(self, num_layers: int) -> None:
        """The model's layer count, known once it has loaded (once per app)."""
        self.num_layers = num_layers
        self.layers_hist = self.pc.Histogram("hadskip_layers_per_input", "Layers executed per input.",
                                             buckets=list(range(num_layers + 1)), registry=self.registry)
        for i in range(num_layers):
            self.per_layer.labels(str(i))

    def http(self, endpoint: str, code: int) -> None:
        self.requests.labels(endpoint).inc()
        if code >= 400:
            self.errors.labels(endpoint, str(code)).inc()

    def batch(self, rows: int, jobs: int, inference_s: float, ok: bool, gates=None, truncated: int = 0) -> None:
        """One runtime call; `gates` (rows, L) bool: the layers each row ran."""
        self.calls.labels("ok" if ok else "error").inc()
        self.batch_rows.observe(rows)
        self.batch_requests.observe(jobs)
        self.infer_s.observe(inference_s)
        if not ok:
            return
        self.inputs.inc(rows)
        self.truncated.inc(truncated)
        if gates is None:
            return
        used = gates.sum(axis=1)  # (rows,)
        ran, available = int(used.sum()), rows * self.num_layers
        with self.lock:
            self.run_sum += ran
            self.available_sum += available
        self.layers_run.inc(ran)
        self.layers_available.inc(available)
        if self.layers_hist is not None:
            for k in used.tolist():
                self.layers_hist.observe(k)
        for i, n in enumerate(gates.sum(axis=0).tolist()):
            if n:
                self.per_layer.labels(str(i)).inc(n)

    def budget_rows(self, label: str, rows: int, lowered: bool = False) -> None:
        """`rows` inputs answered at the budget labelled `label`; `lowered`: below what they asked for."""
        self.budget_inputs.labels(label).inc(rows)
        if lowered:
            self.lowered.inc(rows)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type) in the format the scraper's Accept header asks for (Prometheus text by default)."""
        encode, content_type = self.pc.exposition.choose_encoder(accept or "")
        return encode(self.registry), content_type


# -- the app's side: gauges over its state, and the response counter ------------------------------------------

def add_server_gauges(state) -> None:
    """The gauges read from the server's state (app.ServerState) at scrape time."""
    def batcher(attr: str) -> Callable[[], float]:
        return lambda: getattr(state.batcher, attr) if state.batcher is not None else 0

    m = state.metrics
    m.gauge("hadskip_ready", "1 when the model is loaded.", lambda: float(state.status == "ok"))
    m.gauge("hadskip_queue_rows", "Rows waiting for the worker.", batcher("queued_rows"))
    m.gauge("hadskip_queue_capacity_rows", "Rows the queue takes before answering 429.",
            lambda: state.config.max_queue)
    m.gauge("hadskip_running_rows", "Rows in the runtime call now running.", batcher("busy_rows"))
    m.gauge("hadskip_inflight_requests", "/predict requests waiting for their result.", lambda: state.inflight)
    m.gauge("hadskip_budget", "The budget the latest runtime call ran the server's default rows at (lowered "
            "under --latency-target-ms; the trained gates: their dev average; NaN: unknown).",
            lambda: _number(getattr(state.batcher, "budget_now", None)))
    m.gauge("hadskip_layer_row_seconds", "Measured seconds per layer run by one row (the batcher's moving "
            "estimate; NaN before the first call).", lambda: _number(_estimate(state, "layer_row_s")))


def _number(x) -> float:
    return float("nan") if x is None else float(x)


def _estimate(state, name: str) -> float | None:
    costs = state.batcher.costs.costs() if state.batcher is not None else None
    return None if costs is None else getattr(costs, name)


class MetricsMiddleware:
    """Pure ASGI: counts every HTTP response by endpoint and status (a path not in `endpoints` as "other", one
    under the folder `static` as `static`)."""

    def __init__(self, app, metrics: Metrics, endpoints: tuple[str, ...], static: str):
        self.app, self.metrics, self.endpoints, self.static = app, metrics, endpoints, static

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            path = self.static if path.startswith(self.static + "/") else path
            self.metrics.http(path if path in self.endpoints else "other", status[0])
