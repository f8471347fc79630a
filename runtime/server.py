"""`hadskip serve-local`: a model dir behind HTTP on this machine, with micro-batching (extra `serve`).

    POST /predict   {"inputs": "text" | ["text", ...] | [["text", "text_pair"], ...]}   (items may mix)
                    -> {"predictions": [{"label", "label_id", "probs", "layers", "num_layers", "tokens",
                                         "truncated"}, ...]}                          (input order, always a list)
    GET  /health    200 {"status": "ok"} | 503 {"status": "loading" | "shutting down"}   (never needs the key)
    GET  /info      model facts from the manifest, budget, backend, limits
    GET  /metrics   Prometheus text: requests, errors by code, batch sizes, queue/inference time, layers run
    GET  /docs      OpenAPI (Swagger UI); /openapi.json

Errors are `{"error": "...", "error_type": "..."}`: 401 API key, 413 body or inputs over a limit, 415 not JSON,
422 malformed or empty input, 429 queue full, 424 the backend failed, 503 still loading (as in
text-embeddings-inference, DESIGN.md §9). A list of strings is a batch of single texts; a pair is a 2-list.

Micro-batching: each request's rows wait in one bounded queue; a worker thread takes the rows that arrived
within `max_wait_ms` of the oldest waiting one, up to `max_batch` rows, and makes ONE `Runtime.predict` call
(which sorts by length and routes each row through its own layers). The event loop only parses, queues and
awaits. Rows over `max_queue` are refused with 429 rather than queued without limit.

Not included: TLS, rate limiting per client, streaming, several models per server, multi-process workers
(one process owns one model and one worker thread; the backend uses its own intra-op threads).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations (Request, the bearer
# credentials), which are imported inside create_app, at definition time.
import asyncio
import collections
import hmac
import ipaddress
import json
import logging
import math
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hadskip.errors import HadSkipError, require

log = logging.getLogger("uvicorn.error")  # uvicorn configures it: our lines share its format

ENDPOINTS = ("/predict", "/health", "/info", "/metrics", "/docs", "/openapi.json")
JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
              type(None): "null"}


@dataclass
class ServeConfig:
    """Server settings; every field is a `hadskip serve-local` option."""

    host: str = "127.0.0.1"
    port: int = 8080
    backend: str = "ort-cpu"
    max_batch: int = 32  # rows per runtime call
    max_wait_ms: float = 5.0  # how long the oldest waiting row may wait for others to join its batch
    max_queue: int | None = None  # rows waiting for the worker; None: 32 x max_batch
    api_key: str | None = field(default=None, repr=False)  # bearer token; never printed or returned
    max_inputs: int = 32  # inputs per request
    max_body_bytes: int = 1 << 20  # request body, checked before parsing
    threads: int | None = None  # intra-op threads per ORT session
    graceful_timeout_s: float = 30.0  # how long shutdown waits for in-flight requests
    access_log: bool = False

    def __post_init__(self):
        if self.max_queue is None:
            self.max_queue = 32 * self.max_batch
        for name in ("max_batch", "max_queue", "max_inputs"):
            if int(getattr(self, name)) < 1:
                raise HadSkipError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise HadSkipError(f"max_wait_ms must be in [0, 10000], got {self.max_wait_ms}")
        if self.max_body_bytes < 64:
            raise HadSkipError(f"max_body_bytes must be >= 64, got {self.max_body_bytes}")
        if not 0 <= self.port <= 65535:
            raise HadSkipError(f"port must be in [0, 65535], got {self.port}")
        if self.api_key is not None and (not self.api_key or not self.api_key.isascii() or
                                         not self.api_key.isprintable() or any(c.isspace() for c in self.api_key)):
            raise HadSkipError("the API key must be non-empty printable ASCII without spaces")

    def limits(self) -> dict:
        return {"max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms, "max_queue": self.max_queue,
                "max_inputs": self.max_inputs, "max_body_bytes": self.max_body_bytes}


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False


# -- errors ---------------------------------------------------------------------------------------------------
class ApiError(Exception):
    """An HTTP error answered as {"error": message, "error_type": kind}."""

    def __init__(self, status: int, message: str, kind: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


class Overloaded(ApiError):
    def __init__(self, queued: int, capacity: int):
        super().__init__(429, f"overloaded: {queued} rows are queued (limit {capacity}); retry later",
                         "overloaded", {"Retry-After": "1"})


class BackendFailure(ApiError):
    def __init__(self, exc: BaseException):
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        super().__init__(424, f"inference failed: {type(exc).__name__}" + (f": {text}" if text else ""), "backend")


def _invalid(message: str) -> ApiError:
    return ApiError(422, message, "validation")


def _json_type(x: Any) -> str:
    return JSON_TYPES.get(type(x), type(x).__name__)


# -- request parsing (pure; no web framework) -----------------------------------------------------------------
def parse_predict_body(body: bytes, max_inputs: int) -> list:
    """The body of POST /predict -> a list of inputs (str or (text, text_pair)), or ApiError (422 / 413)."""
    if not body.strip():
        raise _invalid('empty body: send a JSON object such as {"inputs": "a fine movie"}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(f"the body is not valid UTF-8 (byte {exc.start})") from exc
    try:
        obj = json.loads(text)
    except RecursionError as exc:
        raise _invalid("the body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, or an integer literal over Python's digit limit
        raise _invalid(f"the body is not valid JSON: {str(exc)[:120]}") from exc
    if not isinstance(obj, dict):
        raise _invalid(f'the body must be a JSON object with an "inputs" field, got {_json_type(obj)}')
    unknown = sorted(k for k in obj if k != "inputs")
    if unknown:
        names = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise _invalid(f'unknown field(s) {names}; the only field is "inputs"')
    if "inputs" not in obj:
        raise _invalid('the body lacks "inputs"')
    inputs = obj["inputs"]
    if isinstance(inputs, str):
        return [_text(inputs, "inputs")]
    if not isinstance(inputs, list):
        raise _invalid(f'"inputs" must be a string or a list of strings / [text, text_pair] pairs, '
                       f"got {_json_type(inputs)}")
    if not inputs:
        raise _invalid('"inputs" is an empty list')
    if len(inputs) > max_inputs:
        raise ApiError(413, f"{len(inputs)} inputs in one request; the limit is {max_inputs} (split the request)",
                       "payload_too_large")
    return [_item(x, f"inputs[{n}]") for n, x in enumerate(inputs)]


def _item(x: Any, where: str):
    if isinstance(x, str):
        return _text(x, where)
    if isinstance(x, list):
        if len(x) != 2:
            raise _invalid(f"{where} must be a string or a [text, text_pair] pair, got an array of {len(x)}")
        return _text(x[0], f"{where}[0]"), _text(x[1], f"{where}[1]")
    raise _invalid(f"{where} must be a string or a [text, text_pair] pair, got {_json_type(x)}")


def _text(x: Any, where: str) -> str:
    if not isinstance(x, str):
        raise _invalid(f"{where} must be a string, got {_json_type(x)}")
    if not x.strip():
        raise _invalid(f"{where} is empty")
    try:
        x.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON \ud800 escape
        raise _invalid(f"{where} is not valid Unicode (lone surrogate at {exc.start})") from exc
    return x


# -- metrics --------------------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return "+Inf" if v == math.inf else (str(int(v)) if float(v).is_integer() else repr(float(v)))


class Histogram:
    """A Prometheus histogram (cumulative buckets, _sum, _count); the caller holds the lock."""

    def __init__(self, name: str, help: str, buckets: list[float]):
        self.name, self.help = name, help
        self.buckets = sorted(set(buckets)) + [math.inf]
        self.counts = [0] * len(self.buckets)
        self.sum, self.count = 0.0, 0

    def observe(self, v: float, n: int = 1) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += n
                break
        self.sum += v * n
        self.count += n

    def render(self) -> list[str]:
        out, acc = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"], 0
        for b, c in zip(self.buckets, self.counts, strict=True):
            acc += c
            out.append(f'{self.name}_bucket{{le="{_fmt(b)}"}} {acc}')
        return out + [f"{self.name}_sum {self.sum!r}", f"{self.name}_count {self.count}"]


SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class Metrics:
    """Counters and histograms behind one lock (updated from the event loop and the worker thread)."""

    def __init__(self, max_batch: int, num_layers: int = 0):
        self.lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()  # endpoint -> n
        self.errors: collections.Counter = collections.Counter()  # (endpoint, code) -> n
        self.calls: collections.Counter = collections.Counter()  # "ok" | "error" -> runtime calls
        sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if b < max_batch] + [max_batch]
        self.batch_rows = Histogram("hadskip_batch_size", "Rows per runtime call.", sizes)
        self.batch_requests = Histogram("hadskip_batch_requests", "Requests merged into one runtime call.", sizes)
        self.queue_s = Histogram("hadskip_queue_seconds", "Time a request waited before its runtime call.", SECONDS)
        self.infer_s = Histogram("hadskip_inference_seconds", "Duration of one runtime call.", SECONDS)
        self.request_s = Histogram("hadskip_predict_seconds", "Time in the server per successful /predict.", SECONDS)
        self.rows = self.truncated = self.layers_run = 0
        self.set_layers(num_layers)

    def set_layers(self, num_layers: int) -> None:
        """The model's layer count, known once it has loaded."""
        with self.lock:
            self.num_layers = num_layers
            self.layers_hist = Histogram("hadskip_layers_per_input", "Layers executed per input.",
                                         list(range(num_layers + 1)))
            self.per_layer = [0] * num_layers

    def http(self, endpoint: str, code: int) -> None:
        with self.lock:
            self.requests[endpoint] += 1
            if code >= 400:
                self.errors[(endpoint, code)] += 1

    def batch(self, rows: int, jobs: int, inference_s: float, ok: bool, gates=None, truncated: int = 0) -> None:
        """One runtime call; `gates` (rows, L) bool: the layers each row ran."""
        with self.lock:
            self.calls["ok" if ok else "error"] += 1
            self.batch_rows.observe(rows)
            self.batch_requests.observe(jobs)
            self.infer_s.observe(inference_s)
            if ok:
                self.rows += rows
                self.truncated += truncated
            if gates is not None:
                used = gates.sum(axis=1)  # (rows,)
                self.layers_run += int(used.sum())
                for k, n in zip(*_unique(used), strict=True):
                    self.layers_hist.observe(k, n)
                for i, n in enumerate(gates.sum(axis=0).tolist()):
                    self.per_layer[i] += n

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        with self.lock:
            out = ["# HELP hadskip_requests_total HTTP requests by endpoint.",
                   "# TYPE hadskip_requests_total counter"]
            out += [f'hadskip_requests_total{{endpoint="{e}"}} {n}' for e, n in sorted(self.requests.items())]
            out += ["# HELP hadskip_errors_total HTTP error responses by endpoint and status code.",
                    "# TYPE hadskip_errors_total counter"]
            out += [f'hadskip_errors_total{{endpoint="{e}",code="{c}"}} {n}'
                    for (e, c), n in sorted(self.errors.items())]
            out += ["# HELP hadskip_runtime_calls_total Runtime calls (one per micro-batch) by outcome.",
                    "# TYPE hadskip_runtime_calls_total counter"]
            out += [f'hadskip_runtime_calls_total{{outcome="{k}"}} {self.calls[k]}' for k in ("ok", "error")]
            for h in (self.batch_rows, self.batch_requests, self.queue_s, self.infer_s, self.request_s,
                      self.layers_hist):
                out += h.render()
            available = self.rows * self.num_layers
            skip = 1.0 - self.layers_run / available if available else 0.0
            counters = {
                "hadskip_inputs_total": ("Inputs classified.", self.rows),
                "hadskip_truncated_inputs_total": ("Inputs cut to max_seq_len.", self.truncated),
                "hadskip_layers_executed_total": ("Layers executed, summed over inputs.", self.layers_run),
                "hadskip_layers_available_total": ("Inputs x model layers.", available),
            }
            for name, (text, v) in counters.items():
                out += [f"# HELP {name} {text}", f"# TYPE {name} counter", f"{name} {v}"]
            out += ["# HELP hadskip_layer_executed_total Inputs that ran each layer (0-based).",
                    "# TYPE hadskip_layer_executed_total counter"]
            out += [f'hadskip_layer_executed_total{{layer="{i}"}} {n}' for i, n in enumerate(self.per_layer)]
            gauges = {"hadskip_skip_rate": ("Share of layers skipped since start.", skip), **gauges}
            for name, (text, v) in gauges.items():
                out += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {_fmt(v)}"]
        return "\n".join(out) + "\n"


def _unique(values) -> tuple[list[int], list[int]]:
    counts = collections.Counter(int(v) for v in values)
    return list(counts), list(counts.values())


# -- micro-batching -------------------------------------------------------------------------------------------
@dataclass
class Job:
    rows: list
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class JobResult:
    predictions: list[dict]
    queue_s: float
    inference_s: float
    batch_rows: int


class Batcher:
    """One worker thread that merges queued requests into runtime calls of at most `max_batch` rows.

    `predict(rows, batch_size)` is `Runtime.predict`. A batch that fails is retried one request at a time,
    so one request's failure is not its neighbours' (the retry costs nothing while the backend is healthy).
    """

    def __init__(self, predict: Callable, max_batch: int, max_wait_s: float, max_queue: int, metrics: Metrics):
        self.predict, self.max_batch, self.max_wait_s, self.max_queue = predict, max_batch, max_wait_s, max_queue
        self.metrics = metrics
        self.queue: collections.deque[Job] = collections.deque()
        self.queued_rows = 0
        self.busy_rows = 0  # rows in the runtime call now running
        self.cond = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._work, name="hadskip-batcher", daemon=True)

    def start(self) -> "Batcher":
        self.thread.start()
        return self

    def submit(self, rows: list) -> asyncio.Future:
        """Queue one request's rows (called on the event loop); raises Overloaded when the queue is full.
        An empty queue always takes a request, so no request is too big to ever run."""
        loop = asyncio.get_running_loop()
        job = Job(rows, loop.create_future(), loop)
        with self.cond:
            if self.closing:
                raise ApiError(503, "the server is shutting down", "unavailable", {"Retry-After": "1"})
            if self.queued_rows and self.queued_rows + len(rows) > self.max_queue:
                raise Overloaded(self.queued_rows, self.max_queue)
            self.queue.append(job)
            self.queued_rows += len(rows)
            self.cond.notify()
        return job.future

    def close(self, timeout: float | None = 60.0) -> None:
        """Stop taking requests, finish the queued ones, stop the worker."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _next_batch(self) -> list[Job] | None:
        with self.cond:
            while not self.queue and not self.closing:
                self.cond.wait()
            if not self.queue:
                return None  # closing and drained
            batch = [self.queue.popleft()]
            rows = len(batch[0].rows)
            deadline = batch[0].enqueued + self.max_wait_s  # the oldest row waits at most max_wait
            while rows < self.max_batch:
                if self.queue:
                    if rows + len(self.queue[0].rows) > self.max_batch:
                        break
                    job = self.queue.popleft()
                    batch.append(job)
                    rows += len(job.rows)
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self.closing:
                    break
                self.cond.wait(remaining)
            self.queued_rows -= rows
            self.busy_rows = rows
        return [j for j in batch if not j.future.cancelled()]  # a cancelled request needs no answer

    def _work(self) -> None:
        batch: list[Job] | None = []
        try:
            while (batch := self._next_batch()) is not None:
                try:
                    if batch:
                        self._run(batch, retry_alone=len(batch) > 1)
                finally:
                    with self.cond:
                        self.busy_rows = 0
        finally:  # normally nothing is left here; if the worker died, nobody may wait forever
            with self.cond:
                self.closing = True
                left, self.queued_rows = [*(batch or []), *self.queue], 0
                self.queue.clear()
            for job in left:  # answered jobs ignore this (see _resolve)
                _resolve(job, exc=ApiError(503, "the inference worker stopped", "unavailable"))

    def _run(self, batch: list[Job], retry_alone: bool) -> None:
        rows = [r for j in batch for r in j.rows]
        start = time.perf_counter()
        try:
            preds = self.predict(rows, batch_size=self.max_batch)
            probs = getattr(preds, "probabilities", None)
            if probs is not None and not _all_finite(probs):
                raise HadSkipError("the model produced non-finite probabilities")
            dicts = preds.to_dicts()
            failure = None
        except Exception as exc:  # any backend failure becomes a 424 for these requests, never a dead worker
            failure = exc
        elapsed = time.perf_counter() - start
        if failure is not None:
            self.metrics.batch(len(rows), len(batch), elapsed, ok=False)
            if retry_alone:
                for job in batch:
                    self._run([job], retry_alone=False)
                return
            log.error("runtime call on %d rows failed: %s", len(rows), failure, exc_info=failure)
            for job in batch:
                _resolve(job, exc=BackendFailure(failure))
            return
        self.metrics.batch(len(rows), len(batch), elapsed, ok=True, gates=getattr(preds, "gates", None),
                           truncated=sum(d["truncated"] for d in dicts))
        at = 0
        for job in batch:
            n = len(job.rows)
            queue_s = start - job.enqueued
            with self.metrics.lock:
                self.metrics.queue_s.observe(queue_s)
            _resolve(job, JobResult(dicts[at:at + n], queue_s, elapsed, len(rows)))
            at += n


def _all_finite(a) -> bool:
    import numpy as np

    return bool(np.isfinite(a).all())


def _resolve(job: Job, result: JobResult | None = None, exc: BaseException | None = None) -> None:
    def settle():
        if job.future.done():  # the request was cancelled meanwhile
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop has closed (forced shutdown): nobody is waiting
        pass


# -- the app --------------------------------------------------------------------------------------------------
@dataclass
class ServerState:
    config: ServeConfig
    model_name: str = ""
    runtime: Any = None
    batcher: Batcher | None = None
    metrics: Metrics = field(default_factory=lambda: Metrics(1))
    status: str = "loading"  # loading | ok | failed | shutting down
    error: str | None = None
    inflight: int = 0
    ready: threading.Event = field(default_factory=threading.Event)


PREDICT_SCHEMA = {
    "type": "object", "required": ["inputs"], "additionalProperties": False,
    "properties": {"inputs": {"oneOf": [
        {"type": "string", "minLength": 1, "description": "one text"},
        {"type": "array", "minItems": 1, "description": "a batch: texts and [text, text_pair] pairs",
         "items": {"oneOf": [{"type": "string", "minLength": 1},
                             {"type": "array", "items": {"type": "string", "minLength": 1},
                              "minItems": 2, "maxItems": 2}]}}]}},
}
PREDICT_EXAMPLES = {
    "one text": {"value": {"inputs": "a fine movie"}},
    "a batch": {"value": {"inputs": ["a fine movie", "dull and long"]}},
    "a pair": {"value": {"inputs": [["the plot was thin", "the acting saved it"]]}},
}


def _schemas():
    from pydantic import BaseModel

    class PredictionOut(BaseModel):
        label: str
        label_id: int
        probs: dict[str, float]
        layers: list[int]  # 0-based indices of the layers that ran
        num_layers: int
        tokens: int  # tokens after truncation
        truncated: bool  # the input was cut to max_seq_len

    class PredictResponse(BaseModel):
        predictions: list[PredictionOut]

    class ErrorResponse(BaseModel):
        error: str
        error_type: str

    class HealthResponse(BaseModel):
        status: str

    return PredictResponse, ErrorResponse, HealthResponse


def create_app(config: ServeConfig, loader: Callable[[], Any], model_name: str = "",
               on_fatal: Callable[[str], None] | None = None):
    """The FastAPI app. `loader()` returns a Runtime (or anything with its predict/labels/num_layers/...); it
    runs in a thread at startup, while /health answers 503. A loader failure calls `on_fatal(message)`."""
    fastapi = require("fastapi", "serve", "hadskip serve-local")
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    PredictResponse, ErrorResponse, HealthResponse = _schemas()
    state = ServerState(config, model_name, metrics=Metrics(config.max_batch))

    def load() -> None:
        try:
            rt = loader()
            state.metrics.set_layers(int(rt.num_layers))
            state.batcher = Batcher(rt.predict, config.max_batch, config.max_wait_ms / 1000, int(config.max_queue),
                                    state.metrics).start()
            state.runtime = rt
        except Exception as exc:  # a load failure of any kind stops the server with its message
            state.status, state.error = "failed", f"cannot load the model: {exc}"
            log.error(state.error)
            if on_fatal is not None:
                on_fatal(state.error)
            return
        finally:
            state.ready.set()
        state.status = "ok"
        log.info("model ready on %s", getattr(rt, "backend_name", "?"))

    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=load, name="hadskip-load", daemon=True).start()
        yield
        state.status = "shutting down"
        if state.batcher is not None:
            await asyncio.to_thread(state.batcher.close)
        if state.runtime is not None and hasattr(state.runtime, "close"):
            state.runtime.close()

    app = fastapi.FastAPI(title="hadskip", version=_version(), lifespan=lifespan, redoc_url=None,
                          description="Per-input layer skipping for BERT-family classifiers: "
                                      "POST /predict returns the label and the layers each input used.")
    app.state.hadskip = state

    bearer = HTTPBearer(auto_error=False, description="the key given to --api-key")

    async def authorize(creds: HTTPAuthorizationCredentials | None = fastapi.Depends(bearer)) -> None:
        if config.api_key is None:
            return
        if creds is None:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", "unauthorized",
                           {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(creds.credentials.encode(), config.api_key.encode()):
            raise ApiError(401, "invalid API key", "unauthorized", {"WWW-Authenticate": "Bearer"})

    guarded = [fastapi.Depends(authorize)] if config.api_key is not None else []

    def error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "error_type": kind}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error(exc.status, exc.message, exc.kind, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        kinds = {404: "not_found", 405: "method_not_allowed"}
        return error(exc.status_code, str(exc.detail), kinds.get(exc.status_code, "http"), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.error("unexpected error on %s", request.url.path, exc_info=exc)
        return error(500, "internal server error", "internal")

    def status() -> str:
        if state.status == "ok" and not state.batcher.thread.is_alive():
            return "worker stopped"
        return state.status

    def unavailable() -> ApiError:
        now = status()
        message = {"failed": state.error or "", "worker stopped": "the inference worker stopped"}.get(
            now, f"the model is {now}")
        return ApiError(503, message, "unavailable", {"Retry-After": "1"})

    problems = {c: {"model": ErrorResponse} for c in (401, 413, 415, 422, 424, 429, 503)}

    @app.post("/predict", dependencies=guarded, responses={200: {"model": PredictResponse}, **problems},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": PREDICT_SCHEMA, "examples": PREDICT_EXAMPLES}}}})
    async def predict(request: Request):
        """Classify one text, a batch, or text pairs: label, probabilities, the layers each input ran, and
        whether it was truncated to max_seq_len. Results come back in input order."""
        if status() != "ok":
            raise unavailable()
        start = time.perf_counter()
        ctype = request.headers.get("content-type")
        media = (ctype or "").split(";")[0].strip().lower()
        if ctype is not None and media != "application/json" and not media.endswith("+json"):
            raise ApiError(415, "the body must be JSON (Content-Type: application/json)", "unsupported_media_type")
        body = await _read_body(request, config.max_body_bytes)
        if len(body) <= 1 << 16:
            rows = parse_predict_body(body, config.max_inputs)
        else:  # parsing a large body takes milliseconds: not on the event loop
            rows = await asyncio.to_thread(parse_predict_body, body, config.max_inputs)
        state.inflight += 1
        try:
            result: JobResult = await state.batcher.submit(rows)
        finally:
            state.inflight -= 1
        with state.metrics.lock:
            state.metrics.request_s.observe(time.perf_counter() - start)
        return JSONResponse({"predictions": result.predictions}, headers={
            "x-queue-ms": f"{result.queue_s * 1000:.3f}", "x-inference-ms": f"{result.inference_s * 1000:.3f}",
            "x-batch-rows": str(result.batch_rows)})

    @app.get("/health", responses={200: {"model": HealthResponse}, 503: {"model": HealthResponse}})
    async def health():
        """200 when the model is loaded and the worker runs; 503 while loading or shutting down (no key needed)."""
        now = status()
        return JSONResponse({"status": now}, status_code=200 if now == "ok" else 503)

    @app.get("/info", dependencies=guarded, responses={401: {"model": ErrorResponse}})
    async def info():
        """The model (manifest facts, labels, budget), the backend and the server's limits."""
        if state.runtime is None:
            raise unavailable()
        return JSONResponse(_info(state))

    @app.get("/metrics", dependencies=guarded, responses={200: {"content": {"text/plain": {}}}})
    async def metrics():
        """Prometheus text format."""
        b = state.batcher
        gauges = {
            "hadskip_ready": ("1 when the model is loaded.", float(state.status == "ok")),
            "hadskip_queue_rows": ("Rows waiting for the worker.", b.queued_rows if b else 0),
            "hadskip_queue_capacity_rows": ("Rows the queue takes before answering 429.", config.max_queue),
            "hadskip_running_rows": ("Rows in the runtime call now running.", b.busy_rows if b else 0),
            "hadskip_inflight_requests": ("/predict requests waiting for their result.", state.inflight),
        }
        return Response(state.metrics.render(gauges), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(_MetricsMiddleware, state=state)
    return app


def _version() -> str:
    from hadskip import __version__

    return __version__


def _info(state: ServerState) -> dict:
    rt, cfg = state.runtime, state.config
    info = getattr(rt, "info", None)
    manifest = getattr(info, "manifest", None)
    out = {"model": state.model_name, "backend": rt.backend_name, "labels": list(rt.labels),
           "num_layers": int(rt.num_layers), "max_seq_len": int(rt.max_seq_len),
           "budget": getattr(info, "budget", None), "limits": cfg.limits(), "auth": cfg.api_key is not None,
           "version": _version()}
    if manifest is not None:
        bb = manifest.backbone
        out.update(backbone={k: bb.get(k) for k in ("name", "model_type", "hidden_size", "num_heads", "vocab_size")},
                   task=manifest.task.get("name"), precision=manifest.precision, engine=manifest.engine,
                   opset=manifest.opset, schema_version=manifest.schema_version, created=manifest.created,
                   optimization=manifest.optimization.get("layers") if isinstance(manifest.optimization, dict)
                   else None)
    return out


class _MetricsMiddleware:
    """Pure ASGI: counts every HTTP response by endpoint and status (unknown paths as "other", so a scan of
    random URLs cannot grow the label set)."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

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
            self.state.metrics.http(path if path in ENDPOINTS else "other", status[0])


async def _read_body(request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` (Content-Length or streamed size)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid Content-Length", "bad_request")
        if int(declared) > limit:
            raise ApiError(413, f"the body has {declared} bytes; the limit is {limit}", "payload_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body exceeds the limit of {limit} bytes", "payload_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


# -- running --------------------------------------------------------------------------------------------------
def serve(model_dir: str | Path, config: ServeConfig, warn: Callable[[str], None] | None = None) -> None:
    """Load `model_dir` and serve it until SIGINT/SIGTERM, which finishes in-flight requests first."""
    uvicorn = require("uvicorn", "serve", "hadskip serve-local")
    require("fastapi", "serve", "hadskip serve-local")
    from hadskip.runtime.core import Runtime
    from hadskip.runtime.manifest import load_manifest

    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    model_dir = Path(model_dir)
    if config.backend != "torch":
        load_manifest(model_dir, verify=False)  # a wrong dir fails here in one line; the load checks the sha256s
    if not is_loopback(config.host):
        warn(f"warning: listening on {config.host} makes the model reachable from other machines"
             + ("" if config.api_key else "; anyone who can reach it may use it (set --api-key)")
             + "; traffic is plain HTTP")

    def load():
        rt = Runtime.load(model_dir, backend=config.backend, threads=config.threads)
        rt.predict(["warm up"], batch_size=1)  # first call allocates; also proves the backend runs
        return rt

    failure: list[str] = []
    server = None

    def fatal(message: str) -> None:
        failure.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(config, load, model_name=model_dir.name, on_fatal=fatal)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, access_log=config.access_log,
                                           timeout_graceful_shutdown=int(math.ceil(config.graceful_timeout_s)),
                                           server_header=False, log_level="info"))
    server.run()
    if failure:
        raise HadSkipError(failure[0])
