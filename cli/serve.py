"""`hadskip serve-local MODEL_DIR`: serve a model dir over HTTP on this machine (hadskip.runtime.serve.serve).
Its options are generated from ServeConfig's fields (runtime/serve/config.py holds each default and help text)."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

from hadskip.cli.options import config_command
from hadskip.runtime.serve.config import ServeConfig

_MODEL = inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[str, typer.Argument(
    help="Model dir written by `hadskip export` (a run dir for --backend torch).")])


def _serve(config: ServeConfig, model: str) -> None:
    from hadskip.runtime.serve import serve

    serve(model, config)


serve_local = config_command(
    ServeConfig, _serve, internal={}, extra=(_MODEL,),
    doc="Serve a model dir over HTTP with micro-batching: POST /predict, GET /health /info /metrics, /docs.")
