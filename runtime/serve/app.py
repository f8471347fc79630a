"""The FastAPI app of `hadskip serve-local`: endpoints, errors as JSON, the API key, model loading, metrics.

    POST /predict   {"inputs": "text" | ["text", ...] | [["text", "text_pair"], ...], "budget"?: 2.5,
                     "max_layers"?: 2}   (items may mix)
                    -> {"predictions": [{"label", "label_id", "probs", "layers", "num_layers", "tokens",
                                         "truncated"}, ...]}                          (input order, always a list)
                    (with --latency-target-ms each prediction also has "budget": the budget it ran at)
    GET|HEAD /health  200 {"status": "ok"} | 503 {"status": "loading" | "shutting down" | ...}  (never needs the key)
    GET  /info      model facts from the manifest, budget, backend, limits
    GET  /metrics   Prometheus text (prometheus_client)
    GET  /docs      OpenAPI (Swagger UI), /redoc (ReDoc); their scripts from /docs-static/ (no CDN); /openapi.json
With --api tei, POST /predict, / and /invocations speak text-embeddings-inference's API instead (tei.py), GET /
and /ping answer as /health, and /info has TEI's fields.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations (Request, the bearer
# credentials), which are imported inside create_app, at definition time.
import asyncio
import hmac
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from hadskip.errors import require
from hadskip.runtime.serve.batcher import Batcher, JobResult
from hadskip.runtime.serve.config import ServeConfig
from hadskip.runtime.serve.connections import FramingGuard, HostGuard
from hadskip.runtime.serve.info import json_safe, info_body, tei_info_body, hadskip_version
from hadskip.runtime.serve.latency import LatencyPolicy
from hadskip.runtime.serve.metrics import Metrics, MetricsMiddleware, add_server_gauges
from hadskip.errors import HadSkipError
from hadskip.runtime.serve.request import CLOSE, ApiError, parse_predict_fields, read_body, scrub_paths
from hadskip.runtime.serve.schemas import (PREDICT_EXAMPLES, PREDICT_SCHEMA, TEI_EXAMPLES, TEI_PREDICT_SCHEMA,
                                           TEI_RESPONSE_SCHEMA, response_models)
from hadskip.runtime.serve.tei import ERROR_TYPES, TeiRequest, parse_tei_predict
from hadskip.runtime.serve.tei import answer as tei_answer

log = logging.getLogger("uvicorn.error")  # uvicorn configures it: our lines share its format

DOCS_STATIC = "/docs-static"  # the Swagger UI and ReDoc files (fastapi-offline's), counted as one endpoint
ENDPOINTS = ("/predict", "/health", "/info", "/metrics", "/docs", "/redoc", DOCS_STATIC, "/openapi.json", "/",
             "/invocations", "/ping")


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

    PredictResponse, ErrorResponse, HealthResponse = response_models()
    state = ServerState(config, Metrics(config.max_batch), model_name)
    add_server_gauges(state)

    def load() -> None:
        try:
            rt = loader()
            state.metrics.set_layers(int(rt.num_layers))
            policy = None
            if config.latency_target_ms is not None:  # a model without a dial, or a floor off it: one line
                policy = LatencyPolicy.make(config.latency_target_ms, config.min_budget, getattr(rt, "budget", None),
                                            getattr(getattr(rt, "info", None), "dial", None), model_name or "the model")
            state.batcher = Batcher(rt.predict, config.max_batch, config.max_wait_ms / 1000, int(config.max_queue),
                                    state.metrics, policy, getattr(rt, "budget", None)).start()
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

    # /docs and /redoc load Swagger UI and ReDoc from this server (fastapi-offline ships them), not from a CDN
    offline = require("fastapi_offline", "serve", "hadskip serve-local")
    app = offline.FastAPIOffline(title="hadskip", version=hadskip_version(), lifespan=lifespan,
                                 static_url=DOCS_STATIC,
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
    tei = config.api == "tei"

    def error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
        """The JSON error answer; absolute paths (from a runtime message) are cut to their last part. With
        --api tei the kinds are TEI's ErrorType names."""
        if tei:
            kind = ERROR_TYPES.get(kind, kind)
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

    async def read_json(request: Request) -> bytes:
        if status() != "ok":
            raise unavailable()
        ctype = request.headers.get("content-type")
        media = (ctype or "").split(";")[0].strip().lower()
        if ctype is not None and media != "application/json" and not media.endswith("+json"):
            raise ApiError(415, "the body must be JSON (Content-Type: application/json)", "unsupported_media_type")
        return await read_body(request, config.max_body_bytes, config.body_deadline_s)

    async def run(rows: list, budget: float | None, cap: int | None) -> JobResult:
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
            return await state.batcher.submit(rows, budget, cap)
        finally:
            state.inflight -= 1

    def timing(result: JobResult) -> dict:
        return {"x-queue-ms": f"{result.queue_s * 1000:.3f}", "x-inference-ms": f"{result.inference_s * 1000:.3f}",
                "x-batch-rows": str(result.batch_rows)}

    async def predict(request: Request):
        """Classify one text, a batch, or text pairs: label, probabilities, the layers each input ran, and
        whether it was truncated to max_seq_len. Results come back in input order."""
        start = time.perf_counter()
        body = await read_json(request)
        if len(body) <= 1 << 16:
            rows, budget, cap = parse_predict_fields(body, config.max_inputs)
        else:  # parsing a large body takes milliseconds: not on the event loop
            rows, budget, cap = await asyncio.to_thread(parse_predict_fields, body, config.max_inputs)
        result = await run(rows, budget, cap)
        state.metrics.request_s.observe(time.perf_counter() - start)
        predictions = result.predictions
        if config.latency_target_ms is not None:  # which budget each ran at: the request's, the server's or lower
            predictions = [{**p, "budget": result.budget} for p in predictions]
        return JSONResponse({"predictions": predictions}, headers=timing(result))

    async def tei_predict(request: Request):
        """text-embeddings-inference's /predict: a text, a [text, text_pair] pair, or a batch [[text], [a, b],
        ...] -> [{"label", "score"}, ...] highest first (a list of those for a batch). "truncate" (default false:
        an input over max_seq_len is a 422), "truncation_direction", "raw_scores" (logits); unknown fields are
        ignored; our extras in "hadskip": {"budget", "max_layers"}; the layers run per row in x-hadskip-layers."""
        start = time.perf_counter()
        body = await read_json(request)
        req: TeiRequest = (parse_tei_predict(body, config.max_inputs) if len(body) <= 1 << 16 else
                           await asyncio.to_thread(parse_tei_predict, body, config.max_inputs))
        result = await run(req.rows, req.budget, req.max_layers)
        long = [n for n, p in enumerate(result.predictions) if p.get("truncated")]
        if long and not req.truncate:  # TEI: without truncate, an input over max_input_length is refused
            raise ApiError(422, f"inputs[{long[0]}] must have at most {int(state.runtime.max_seq_len)} tokens "
                                "(send \"truncate\": true to cut it)", "validation")
        left_model = bool(getattr(getattr(state.runtime, "encoder", None), "left", False))
        if long and req.left != left_model:
            raise ApiError(422, f"this model truncates on the {'left' if left_model else 'right'}; "
                                f"truncation_direction {'left' if req.left else 'right'} is not supported",
                           "validation")
        if req.raw_scores and result.logits is None:
            raise ApiError(422, "raw_scores: this backend does not return logits", "validation")
        answers = [tei_answer(p, None if result.logits is None else result.logits[n], req.raw_scores)
                   for n, p in enumerate(result.predictions)]
        state.metrics.request_s.observe(time.perf_counter() - start)
        layers = ",".join(str(len(p.get("layers", []))) for p in result.predictions)
        headers = {**timing(result), "x-hadskip-layers": layers}
        if req.extras:  # opted in to our extras: the budget the rows ran at (under --latency-target-ms, maybe lower)
            headers["x-hadskip-budget"] = "trained" if result.budget is None else f"{result.budget:g}"
        return JSONResponse(answers if req.batch else answers[0], headers=headers)

    responses = {200: {"model": PredictResponse}, **problems}
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": PREDICT_SCHEMA, "examples": PREDICT_EXAMPLES}}}}
    if tei:
        body_doc = {"requestBody": {"required": True, "content": {"application/json": {
            "schema": TEI_PREDICT_SCHEMA, "examples": TEI_EXAMPLES}}}}
        responses = {200: {"content": {"application/json": {"schema": TEI_RESPONSE_SCHEMA}}}, **problems}
        for path in ("/predict", "/", "/invocations"):
            app.post(path, dependencies=guarded, responses=responses, openapi_extra=body_doc,
                     include_in_schema=path == "/predict")(tei_predict)
    else:
        app.post("/predict", dependencies=guarded, responses=responses, openapi_extra=body_doc)(predict)

    @app.head("/health", include_in_schema=False)
    @app.get("/health", responses={200: {"model": HealthResponse}, 503: {"model": HealthResponse}})
    async def health():
        """200 when the model is loaded and the worker runs; 503 while loading or shutting down (no key needed)."""
        now = status()
        if tei and now != "ok":  # TEI's body for 503
            return error(503, "unhealthy", "unavailable")
        return JSONResponse({"status": now}, status_code=200 if now == "ok" else 503)

    if tei:  # TEI answers its health check on GET / and /ping too (SageMaker, Vertex)
        for path in ("/", "/ping"):
            app.get(path, include_in_schema=False)(health)
            app.head(path, include_in_schema=False)(health)

    @app.get("/info", dependencies=guarded, responses={401: {"model": ErrorResponse}})
    async def info():
        """The model (manifest facts, labels, budget), the backend and the server's limits."""
        if state.runtime is None:
            raise unavailable()
        return JSONResponse(json_safe(tei_info_body(state) if tei else info_body(state)))

    @app.get("/metrics", dependencies=guarded, responses={200: {"content": {"text/plain": {}}}})
    async def metrics(request: Request):
        """Prometheus text format (or OpenMetrics, if the scraper's Accept header asks for it)."""
        body, content_type = state.metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    app.add_middleware(FramingGuard)
    app.add_middleware(HostGuard, patterns=config.host_patterns())
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, endpoints=ENDPOINTS, static=DOCS_STATIC)
    return app
