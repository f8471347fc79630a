"""`hadskip serve-local MODEL_DIR`: serve a model dir over HTTP on this machine (hadskip.runtime.serve.serve).
Its options are generated from ServeConfig's fields (runtime/serve/config.py holds each default and help text)."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

from hadskip.cli.options import Revision, config_command
from hadskip.runtime.serve.config import ServeConfig

_MODEL = inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[str, typer.Argument(
    help="Model dir written by `hadskip export` (a run dir for --backend torch), or a Hugging Face hub repo id "
         "(user/name) holding one.")])
_REVISION = inspect.Parameter("revision", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Revision)


def _serve(config: ServeConfig, model: str, revision: str | None = None) -> None:
    from hadskip.runtime.serve import serve

    if revision is None:
        serve(model, config)
    else:
        serve(model, config, revision=revision)


serve_local = config_command(
    ServeConfig, _serve, internal={}, extra=(_MODEL, _REVISION),
    doc="Serve a model dir over HTTP with micro-batching: POST /predict, GET /health /info /metrics, /docs.")
