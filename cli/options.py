"""CLI options defined once: those several commands share (`--budget`, `--backend`, `--json`), and
`config_command`, which builds a command's options from a settings dataclass (hadskip.training.config), so a
setting's default and help text live only on its field: `field(default=..., metadata={"help": ...})`.

A field becomes `--field-name`; metadata "flag" names another flag (`--beta` for weights.budget); a bool field
that defaults to True and has a flag is switched off by it (`--no-gate-init`, `--quiet` for progress); a bool
that defaults to False is a plain switch (`--force`). Fields of a nested dataclass (weights) are offered only
where they name a flag. Every other field must be listed as internal, with the reason, by the command.
Typer reads the generated function's `__signature__` and `__annotations__` like any hand-written one.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Annotated, Any, Callable, Optional

import typer

Budget = Annotated[Optional[float], typer.Option(
    help="Target average layers through the model's budget dial (`hadskip dial`; a model dir has it once "
         "exported); default: the trained gates.")]
Revision = Annotated[Optional[str], typer.Option(
    help="With a Hugging Face hub repo id (user/name) for the model: the branch, tag or commit to fetch (default: "
         "main). A local folder of that name wins over the hub.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (logs and progress go to "
                                                   "stderr).")]


def backend_help() -> str:
    """The --backend help: every backend name this install can open, with its line (runtime backend registry)."""
    from hadskip.runtime.backends import describe_backends

    return "; ".join(f"{name}: {line}" for name, line in describe_backends().items()) + "."


Backend = Annotated[str, typer.Option(help=backend_help())]


@dataclass(frozen=True)
class ConfigOption:
    """One CLI option made from a dataclass field: `path` is the field (nested: ("weights", "budget"))."""

    path: tuple[str, ...]
    param: str  # the Python parameter name typer sees
    flag: str
    annotation: Any
    default: Any
    help: str
    invert: bool  # the flag sets the field to False
    panel: str | None
    envvar: str | None = None  # metadata "envvar": the option's environment variable (a secret, say)
    show_default: bool = True  # metadata "show_default"


def field_help(cls: type, name: str) -> str:
    """The help text of field `name` of dataclass `cls` (for an option of another command that sets the same)."""
    return next(f for f in fields(cls) if f.name == name).metadata["help"]


def _optional(tp: Any) -> Any:
    """`int | None` as typing.Optional[int] (the form every typer version reads)."""
    if isinstance(tp, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return Optional[args[0]] if len(args) == 1 else tp
    return tp


def _declared_by(cls: type, name: str) -> type:
    """The base-most class of `cls` that declares field `name` (its help panel)."""
    return next(k for k in reversed(cls.__mro__) if name in vars(k).get("__annotations__", {}))


def config_options(cls: type, internal: dict[str, str], panels: dict[type, str] | None = None,
                   prefix: tuple[str, ...] = (), panel: str | None = None) -> list[ConfigOption]:
    """The CLI options of dataclass `cls`: one per field, except the dotted names in `internal`; a field's help
    panel is that of the class declaring it (`panels`), a nested field's that of its parent field."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        path = (*prefix, f.name)
        dotted = ".".join(path)
        if dotted in internal:
            continue
        if is_dataclass(hints[f.name]):
            out += config_options(hints[f.name], internal, None, path, (panels or {}).get(_declared_by(cls, f.name)))
            continue
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no help text and is not listed as internal")
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        tp = _optional(f.metadata.get("cli_type", hints[f.name]))  # cli_type: how the CLI reads a richer type
        invert = tp is bool and default is True
        if tp is bool and default is True and "flag" not in f.metadata:
            raise TypeError(f"{dotted}: a bool that defaults to True needs a 'flag' that switches it off")
        out.append(ConfigOption(path, flag.lstrip("-").replace("-", "_"), flag, tp, default, f.metadata["help"],
                                invert, panel or (panels or {}).get(_declared_by(cls, f.name)),
                                f.metadata.get("envvar"), f.metadata.get("show_default", True)))
    return out


def _build(cls: type, values: dict[tuple[str, ...], Any]):
    """cls(**values) with the nested dataclass fields (weights) built from their own values."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        inner = {p[1:]: v for p, v in values.items() if p[0] == f.name and len(p) > 1}
        if (f.name,) in values:
            kwargs[f.name] = values[(f.name,)]
        elif inner:
            kwargs[f.name] = _build(hints[f.name], inner)
    return cls(**kwargs)


def config_command(cls: type, run: Callable[..., None], *, internal: dict[str, str], doc: str,
                   panels: dict[type, str] | None = None, extra: tuple[inspect.Parameter, ...] = ()) -> Callable:
    """A Typer command whose options are cls's fields (config_options) plus `extra` parameters; it calls
    `run(cls(...), **extra_values)`."""
    options = config_options(cls, internal, panels)
    params = [inspect.Parameter(
        o.param, inspect.Parameter.KEYWORD_ONLY, default=False if o.invert else o.default,
        annotation=Annotated[o.annotation, typer.Option(o.flag, help=o.help, rich_help_panel=o.panel, envvar=o.envvar,
                                                        show_default=o.show_default)])
        for o in options]
    params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in extra]

    def command(**kwargs):
        values = {o.path: (not kwargs.pop(o.param)) if o.invert else kwargs.pop(o.param) for o in options}
        return run(_build(cls, values), **kwargs)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    command.options = options  # type: ignore[attr-defined]  # for tests and help checks
    return command
