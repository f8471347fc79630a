"""The `hadskip` command: a table of commands, each parsing its arguments and calling one library function.

Each area registers its commands from its own module (cli/data.py, cli/train.py, ...). No module here
imports torch at import time, so `hadskip --help` is fast and works with only the runtime installed.
"""

from __future__ import annotations

import sys

import typer

from hadskip.errors import HadSkipError

app = typer.Typer(
    name="hadskip",
    help="Learn per-input layer skipping for BERT-family encoders, export it, and run it fast.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_AREAS = ("data", "train", "export", "run", "serve", "triton")


def _register() -> None:
    import importlib

    for area in _AREAS:
        try:
            module = importlib.import_module(f"hadskip.cli.{area}")
        except ModuleNotFoundError as exc:
            if exc.name == f"hadskip.cli.{area}":
                continue  # area not built yet
            raise
        module.register(app)


@app.callback()
def _root() -> None:
    """Learn per-input layer skipping for BERT-family encoders, export it, and run it fast."""


@app.command()
def version() -> None:
    """Print the hadskip version."""
    from hadskip import __version__

    typer.echo(__version__)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app, turning HadSkipError into one line on stderr and exit code 2."""
    try:
        app(args=argv, prog_name="hadskip")  # standalone: click formats its own usage errors
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except HadSkipError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
