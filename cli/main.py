"""The `hadskip` command: a plain table of commands, each parsing its arguments and calling one library function.

COMMANDS below lists every command with the function that implements it (in cli/data.py, cli/train.py, ...)
and the pip extra it needs. No module here imports torch at import time, so `hadskip --help` is fast and works
with only the runtime installed; a command whose extra is missing stops with one line naming the extra, and
only when that command is run. A CLI module that fails to import is a broken install and fails loudly.

Every bad input ends as one line on stderr, `error: ...`, and exit status 2: a HadSkipError from the library,
or a usage error from the argument parser (bad option value, missing argument, unknown command).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from typing import Callable, NamedTuple

import typer

from hadskip.cli import data, export, hub, run, serve, train, triton
from hadskip.errors import HadSkipError, MissingExtraError

# The packages of each extra that its commands import (checked before the command runs).
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "transformers", "accelerate", "safetensors"),
    "export": ("torch", "transformers", "onnx"),
    "serve": ("fastapi", "uvicorn", "fastapi_offline"),
    "hub": ("huggingface_hub",),
}
# Optional packages imported deeper than a command's own extra check, and the extra that installs each.
OPTIONAL = {"torch": "train", "transformers": "train", "accelerate": "train", "safetensors": "train",
            "datasets": "train", "matplotlib": "train", "onnx": "export", "optimum": "export",
            "fastapi": "serve", "uvicorn": "serve", "fastapi_offline": "serve", "tensorrt": "trt",
            "huggingface_hub": "hub"}


class Command(NamedTuple):
    name: str
    function: Callable
    extra: str | None  # the pip extra the command needs beyond the base install


COMMANDS: tuple[Command, ...] = (
    Command("finetune", train.finetune, "train"),
    Command("train", train.train, "train"),
    Command("eval", train.evaluate, "train"),
    Command("dial", train.dial, "train"),
    Command("compare", train.compare, "train"),
    Command("export", export.export, "export"),
    Command("predict", run.predict, None),
    Command("bench", run.bench, None),
    Command("serve-local", serve.serve_local, "serve"),
    Command("triton-repo", triton.triton_repo, None),
    Command("push", hub.push, "hub"),
)
GROUPS = (("data", data.data_app),)

app = typer.Typer(
    name="hadskip",
    help="Learn per-input layer skipping for BERT-family encoders, export it, and run it fast.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # help text is rich markup (hence the escaped brackets in _help)
)


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a finder refused it, or a half-removed package without __spec__
        return False


def require_extra(extra: str, command: str) -> None:
    """Raise MissingExtraError (one line naming the extra) if a package of `extra` is not installed."""
    for package in EXTRAS[extra]:
        if not _installed(package):
            raise MissingExtraError(package, extra, f"`hadskip {command}`")


def _with_extra(cmd: Command) -> Callable:
    """The command's function, preceded by the check of its extra (the signature is kept for Typer)."""
    if cmd.extra is None:
        return cmd.function

    @functools.wraps(cmd.function)
    def checked(*args, **kwargs):
        require_extra(cmd.extra, cmd.name)
        return cmd.function(*args, **kwargs)

    return checked


def _help(cmd: Command) -> str:
    doc = (cmd.function.__doc__ or "").strip()
    if cmd.extra is None:
        return doc
    return f"{doc}\n\nNeeds the {cmd.extra} extra: pip install 'hadskip\\[{cmd.extra}]'."  # \\[: not rich markup


@app.callback()
def _root() -> None:
    """Learn per-input layer skipping for BERT-family encoders, export it, and run it fast."""


@app.command()
def version() -> None:
    """Print the hadskip version."""
    from hadskip import __version__

    typer.echo(__version__)


for _cmd in COMMANDS:
    app.command(_cmd.name, help=_help(_cmd))(_with_extra(_cmd))
for _name, _group in GROUPS:
    app.add_typer(_group, name=_name)

# The parser's exception classes, found from typer's public BadParameter: typer vendors click in recent
# versions (typer._click) and re-uses click's classes in older ones.
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app; bad input of any kind becomes one line `error: ...` on stderr and exit 2."""
    try:
        rv = app(args=argv, prog_name="hadskip", standalone_mode=False)
    except _CLICK_ERROR as exc:  # the parser's own errors: bad option values, missing arguments, unknown commands
        if type(exc).__name__ == "NoArgsIsHelpError":  # `hadskip` or `hadskip data` alone: the help
            exc.show()
            return exc.exit_code
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"error: {_one_line(exc.format_message())}{hint}", err=True)
        return 2
    except HadSkipError as exc:
        typer.echo(f"error: {_one_line(exc)}", err=True)
        return 2
    except ModuleNotFoundError as exc:  # an optional package imported deep inside a command
        top = (exc.name or "").split(".")[0]
        if top not in OPTIONAL:
            raise  # not an optional dependency: a broken install, shown in full
        typer.echo(f"error: {MissingExtraError(top, OPTIONAL[top])}", err=True)
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
