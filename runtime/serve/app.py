"""The FastAPI app of `hadskip serve-local`: endpoints, errors as JSON, the API key, model loading, metrics.

    POST /predict   {"inputs": "text" | ["text", ...] | [["text", "text_pair"], ...], "budget"?: 2.5,
                     "max_layers"?: 2}   (items may mix)
                    -> {"predictions": [{"label", "label_id", "probs", "layers", "num_layers", "tokens",
                                         "truncated"}, ...]}                          (input order, always a list)
    GET|HEAD /health  200 {"status": "ok"} | 503 {"status": "loading" | "shutting down" | ...}  (never needs the key)
    GET  /info      model facts from the manifest, budget, backend, limits
    GET  /metrics   Prometheus text (prometheus_client)
    GET  /docs      OpenAPI (Swagger UI); /openapi.json
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations (Request, the bearer
# credentials), which are imported inside create_app, at definition time.
import asyncio
import hmac
import logging
import math
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from hadskip.errors import require
from hadskip.runtime.serve.batcher import Batcher, JobResult
from hadskip.runtime.serve.config import ServeConfig
from hadskip.runtime.serve.connections import FramingGuard, HostGuard
from hadskip.runtime.serve.metrics import Metrics
from hadskip.errors import HadSkipError
from hadskip.runtime.serve.request import CLOSE, ApiError, parse_predict_fields, read_body, scrub_paths

log = logging.getLogger("uvicorn.error")  # uvicorn configures it: our lines share its format

ENDPOINTS = ("/predict", "/health", "/info", "/metrics", "/docs", "/openapi.json")


@dataclass
class ServerState:
    config: ServeConfig
    metrics: Metrics
    model_name: str = ""
    runtime: Any = None
    batcher: Batcher | None = None
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
                              "minItems": 2, "maxItems": 2}]}}]},
                   "budget": {"type": "number", "description": "target average layers through the model's "
                              "budget dial (default: the server's --budget, else the trained gates)"},
                   "max_layers": {"type": "integer", "minimum": 0, "description": "a hard cap: no row runs more "
                                  "layers (0..L; default: none)"}},
}
PREDICT_EXAMPLES = {
    "one text": {"value": {"inputs": "a fine movie"}},
    "a batch": {"value": {"inputs": ["a fine movie", "dull and long"]}},
    "a pair": {"value": {"inputs": [["the plot was thin", "the acting saved it"]]}},
    "at a budget": {"value": {"inputs": "a fine movie", "budget": 2.5}},
    "at most 2 layers a row": {"value": {"inputs": "a fine movie", "max_layers": 2}},
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
    runs in a thread at startup, while /health answers 503. A loader failure calls `on_fatal(message)` (which
    reports it; without one, it is logged)."""
    fastapi = require("fastapi", "serve", "hadskip serve-local")
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    PredictResponse, ErrorResponse, HealthResponse = _schemas()
    state = ServerState(config, Metrics(config.max_batch), model_name)
    _gauges(state)

    def load() -> None:
        try:
            rt = loader()
            state.metrics.set_layers(int(rt.num_layers))
            state.batcher = Batcher(rt.predict, config.max_batch, config.max_wait_ms / 1000, int(config.max_queue),
                                    state.metrics).start()
            state.runtime = rt
        except Exception as exc:  # a load failure of any kind stops the server with its message
            state.status, state.error = "failed", f"cannot load the model: {exc}"
            if on_fatal is not None:
                on_fatal(state.error)  # the caller reports it (the CLI's one `error:` line)
            else:
                log.error(state.error)
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
                          redirect_slashes=False,  # a redirect would build its Location from the client's Host
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
        """The JSON error answer; absolute paths (from a runtime message) are cut to their last part."""
        return JSONResponse({"error": scrub_paths(message), "error_type": kind}, status_code=status, headers=headers)

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
        return error(500, "internal server error", "internal", CLOSE)  # uvicorn closes the connection after it

    def status() -> str:
        if state.status == "ok" and not state.batcher.thread.is_alive():
            return "worker stopped"
        return state.status

    def unavailable() -> ApiError:
        now = status()
        message = {"failed": state.error or "", "worker stopped": "the inference worker stopped"}.get(
            now, f"the model is {now}")
        return ApiError(503, message, "unavailable", {"Retry-After": "1"})

    problems = {c: {"model": ErrorResponse} for c in (401, 408, 413, 415, 422, 424, 429, 503)}

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
        body = await read_body(request, config.max_body_bytes, config.body_deadline_s)
        if len(body) <= 1 << 16:
            rows, budget, cap = parse_predict_fields(body, config.max_inputs)
        else:  # parsing a large body takes milliseconds: not on the event loop
            rows, budget, cap = await asyncio.to_thread(parse_predict_fields, body, config.max_inputs)
        if cap is not None:
            try:
                state.runtime.check_max_layers(cap)
            except HadSkipError as exc:
                raise ApiError(422, str(exc), "validation") from None
        if budget is not None:  # outside the dial's range, or no dial: refused before queueing
            try:
                state.runtime.offset_for(budget)
            except HadSkipError as exc:
                raise ApiError(422, str(exc), "validation") from None
        state.inflight += 1
        try:
            result: JobResult = await state.batcher.submit(rows, budget, cap)
        finally:
            state.inflight -= 1
        state.metrics.request_s.observe(time.perf_counter() - start)
        return JSONResponse({"predictions": result.predictions}, headers={
            "x-queue-ms": f"{result.queue_s * 1000:.3f}", "x-inference-ms": f"{result.inference_s * 1000:.3f}",
            "x-batch-rows": str(result.batch_rows)})

    @app.head("/health", include_in_schema=False)
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
        return JSONResponse(_finite(_info(state)))

    @app.get("/metrics", dependencies=guarded, responses={200: {"content": {"text/plain": {}}}})
    async def metrics(request: Request):
        """Prometheus text format (or OpenMetrics, if the scraper's Accept header asks for it)."""
        body, content_type = state.metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    app.add_middleware(FramingGuard)
    app.add_middleware(HostGuard, patterns=config.host_patterns())
    app.add_middleware(_MetricsMiddleware, state=state)
    return app


def _gauges(state: ServerState) -> None:
    def batcher(attr: str) -> Callable[[], float]:
        return lambda: getattr(state.batcher, attr) if state.batcher is not None else 0

    m = state.metrics
    m.gauge("hadskip_ready", "1 when the model is loaded.", lambda: float(state.status == "ok"))
    m.gauge("hadskip_queue_rows", "Rows waiting for the worker.", batcher("queued_rows"))
    m.gauge("hadskip_queue_capacity_rows", "Rows the queue takes before answering 429.",
            lambda: state.config.max_queue)
    m.gauge("hadskip_running_rows", "Rows in the runtime call now running.", batcher("busy_rows"))
    m.gauge("hadskip_inflight_requests", "/predict requests waiting for their result.", lambda: state.inflight)


def _version() -> str:
    from hadskip import __version__

    return __version__


def _finite(x):
    """`x` with every non-finite float as None (JSON has no NaN or inf) and every string's absolute paths cut
    to their last part (a backbone loaded from a local folder is named by its path)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, str):
        return scrub_paths(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _served_avg_layers(state: ServerState) -> float | None:
    """The layers the rows answered so far ran on average (None before the first)."""
    batcher = getattr(state, "batcher", None)
    rows = getattr(batcher, "rows_done", 0)
    return round(batcher.layers_done / rows, 4) if rows else None


def _info(state: ServerState) -> dict:
    rt, cfg = state.runtime, state.config
    info = getattr(rt, "info", None)
    manifest = getattr(info, "manifest", None)
    out = {"model": state.model_name, "backend": rt.backend_name, "labels": list(rt.labels),
           "num_layers": int(rt.num_layers), "max_seq_len": int(rt.max_seq_len),
           "budget": getattr(info, "budget", None), "limits": cfg.limits(), "auth": cfg.api_key is not None,
           "version": _version(), "serving_budget": getattr(rt, "budget", None),
           "trained_avg_layers": getattr(info, "trained_avg_layers", None),
           "served_avg_layers": _served_avg_layers(state)}
    dial = getattr(info, "dial", None)
    if dial is not None:
        out["dial"] = {"range": list(dial.budget_range), "metric": dial.metric, "split": dial.split,
                       "points": [{"budget": p.target, "avg_layers": p.avg_layers, "value": p.value}
                                  for p in dial.points]}
    if manifest is not None:
        bb = manifest.backbone
        out.update(backbone={k: bb.get(k) for k in ("name", "model_type", "hidden_size", "num_heads", "vocab_size")},
                   task=manifest.task.get("name"), precision=manifest.precision, engine=manifest.engine,
                   opset=manifest.opset, schema_version=manifest.schema_version, created=manifest.created,
                   optimization=manifest.optimization.get("layers") if isinstance(manifest.optimization, dict)
                   else None)
    return out


class _MetricsMiddleware:
    """Pure ASGI: counts every HTTP response by endpoint and status (unknown paths as "other")."""

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
