"""`hadskip serve-local`: a model dir behind HTTP on this machine, with micro-batching (extra `serve`).

    config.py       ServeConfig (every field a CLI option), is_loopback
    tei.py          --api tei: text-embeddings-inference's /predict grammar and answers
    request.py      POST /predict's body -> inputs; ApiError (one-line JSON errors); reading a body in bounds
    schemas.py      the request bodies' JSON Schemas and examples, the answers' pydantic models (OpenAPI)
    metrics.py      Prometheus metrics (prometheus_client), the app's gauges, the response counter (ASGI)
    batcher.py      the worker thread that merges requests into runtime calls
    latency.py      --latency-target-ms: the rule that lowers a queued batch's budget, and the measured costs
    connections.py  header timeout, connection and body-phase limits (a uvicorn protocol subclass), framing and
                    Host checks, Connection: close on shutdown
    logs.py         rate-limited logging
    app.py          the FastAPI app: endpoints, errors, API key, loading
    launcher.py     serve(): uvicorn within the fd limit, graceful stop

Errors are `{"error": "...", "error_type": "..."}`: 400 bad framing or a Host not allowed, 401 API key, 408
body too slow, 413 body or inputs over a limit, 415 not JSON, 422 malformed or empty input, 429 queue full, 424
the backend failed, 500 a bug (Connection: close), 503 still loading (as in text-embeddings-inference). A list
of strings is a batch of single texts; a pair is a 2-list. Importing this package needs no extra: fastapi,
uvicorn and prometheus_client are imported where used, with an error naming the `serve` extra.

Not included: TLS, rate limiting per client, streaming, several models per server, multi-process workers
(one process owns one model and one worker thread; the backend uses its own intra-op threads).
"""

from hadskip.runtime.serve.app import create_app
from hadskip.runtime.serve.config import ServeConfig, is_loopback
from hadskip.runtime.serve.launcher import make_server, serve
from hadskip.runtime.serve.request import ApiError, parse_predict_body

__all__ = ["ApiError", "ServeConfig", "create_app", "is_loopback", "make_server", "parse_predict_body", "serve"]
