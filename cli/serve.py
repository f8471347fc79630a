"""`hadskip serve-local MODEL_DIR`: serve a model dir over HTTP on this machine (hadskip.runtime.serve.serve)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


def serve_local(
    model: Annotated[str, typer.Argument(help="Model dir written by `hadskip export` (a run dir for --backend "
                                              "torch).")],
    host: Annotated[str, typer.Option(help="Address to bind. Loopback by default; any other prints a warning.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free one).")] = 8080,
    backend: Annotated[str, typer.Option(help="ort-cpu, ort-cuda (extra gpu), trt (extra trt) or torch.")
                       ] = "ort-cpu",
    max_batch: Annotated[int, typer.Option(help="Rows per runtime call; requests are merged up to this.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="How long the oldest queued request waits for others to "
                                                    "join its batch.")] = 5.0,
    max_queue: Annotated[Optional[int], typer.Option(help="Rows that may wait; beyond it requests get 429 "
                                                          "(default 32 x max-batch).")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="HADSKIP_API_KEY", show_default=False,
                                                   help="Require 'Authorization: Bearer KEY' on /predict, /info "
                                                        "and /metrics (/health and /docs stay open). Prefer the "
                                                        "env var: arguments show in `ps`.")] = None,
    max_inputs: Annotated[int, typer.Option(help="Inputs per request (more: 413).")] = 32,
    max_body_bytes: Annotated[int, typer.Option(help="Request body limit in bytes (more: 413).")] = 1 << 20,
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads per onnxruntime session "
                                                        "(default: ORT's).")] = None,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request (uvicorn's access log).")
                          ] = False,
    max_connections: Annotated[int, typer.Option(help="Open connections at most (lowered to fit the fd limit); "
                                                      "a new one beyond it closes the oldest slow body, else the "
                                                      "oldest idle one.")] = 2048,
    max_body_connections: Annotated[int, typer.Option(help="Connections whose request body is still arriving, at "
                                                           "most (and half --max-connections); one more closes the "
                                                           "oldest.")] = 512,
    max_body_connections_per_ip: Annotated[int, typer.Option(help="The same, per client address.")] = 128,
    header_timeout_s: Annotated[float, typer.Option(help="Seconds a connection may take to send a request's "
                                                         "headers; then it is closed.")] = 10.0,
    keep_alive_s: Annotated[float, typer.Option(help="Seconds an idle keep-alive connection stays open.")] = 5.0,
    body_timeout_s: Annotated[float, typer.Option(help="The most seconds a request body may take to arrive (else "
                                                       "408).")] = 30.0,
    body_base_s: Annotated[float, typer.Option(help="A body's deadline is this plus Content-Length / "
                                                    "--body-min-rate, at most --body-timeout-s.")] = 2.0,
    body_min_rate: Annotated[int, typer.Option(help="Bytes per second a body must arrive at (see --body-base-s).")
                             ] = 32768,
    allowed_hosts: Annotated[Optional[str], typer.Option(
        help="Comma-separated Host header names to answer (against DNS rebinding), e.g. 'api.example,*.internal'; "
             "'*' for any. Default: localhost, 127.0.0.1 and [::1] when bound to loopback, any otherwise.")] = None,
    budget: Annotated[Optional[float], typer.Option(
        help="Default target average layers through the model's budget dial (`hadskip dial`, then export); a "
             "request's \"budget\" field overrides it. Default: the trained gates.")] = None,
) -> None:
    """Serve a model dir over HTTP with micro-batching: POST /predict, GET /health /info /metrics, /docs."""
    from hadskip.runtime.serve import ServeConfig, serve

    config = ServeConfig(host=host, port=port, backend=backend, max_batch=max_batch, max_wait_ms=max_wait_ms,
                         max_queue=max_queue, api_key=api_key, max_inputs=max_inputs, max_body_bytes=max_body_bytes,
                         threads=threads, access_log=access_log, max_connections=max_connections,
                         header_timeout_s=header_timeout_s, keep_alive_s=keep_alive_s, body_timeout_s=body_timeout_s,
                         budget=budget, max_body_connections=max_body_connections,
                         max_body_connections_per_ip=max_body_connections_per_ip, body_base_s=body_base_s,
                         body_min_rate=body_min_rate,
                         allowed_hosts=None if allowed_hosts is None else allowed_hosts.split(","))
    serve(model, config)
