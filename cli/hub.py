"""`hadskip push MODEL_DIR REPO_ID`: a model dir to the Hugging Face hub (hadskip.runtime.push)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from hadskip.cli.options import Json


def push(
    model: Annotated[str, typer.Argument(help="Model dir written by `hadskip export` (checked against its manifest's "
                                              "sha256s before anything is sent).")],
    repo_id: Annotated[str, typer.Argument(help="Hub model repo to push to, owner/name (created when missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private; an existing public repo is "
                                                            "then refused.")] = False,
    revision: Annotated[Optional[str], typer.Option(help="Branch to push to (created from main when missing; "
                                                         "default: main).")] = None,
    card: Annotated[str, typer.Option(help="README.md of the repo: auto (the model dir's README.md if any, else "
                                           "the repo's if it has one, else a generated model card), generated "
                                           "(replace the repo's with the generated card), none, or a file.")
                    ] = "auto",
    run: Annotated[Optional[str], typer.Option(help="The run dir the model was exported from (checked by its "
                                                    "weights' sha256): the card then shows its compare table "
                                                    "(RUN/compare.json or its compare folder's).")] = None,
    message: Annotated[Optional[str], typer.Option(help="Commit message.")] = None,
    as_json: Json = False,
) -> None:
    """Push a model dir to a Hugging Face hub model repo with a generated model card; load it anywhere with
    hadskip.pipeline("owner/name"), `hadskip predict owner/name`, `hadskip serve-local owner/name`. The token is
    huggingface_hub's (HF_TOKEN or `hf auth login`)."""
    from hadskip.runtime.push import push as push_model
    from hadskip.runtime.push import report_line

    report = push_model(model, repo_id, private=private, revision=revision, card=card, run=run, message=message)
    typer.echo(json.dumps(report.to_dict()) if as_json else report_line(report))
