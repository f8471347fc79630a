"""`hadskip data ...`: look at a task's data before training on it."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

data_app = typer.Typer(help="Inspect task data (registry names, GLUE via the hub, or a folder).", no_args_is_help=True)


@data_app.command("show")
def show(
    task: Annotated[str, typer.Argument(help="rotten-tomatoes, glue/<name>, or a folder with train/dev/test files.")],
    text_col: Annotated[Optional[str], typer.Option(help="Text column of a folder task (default: text).")] = None,
    pair_col: Annotated[
        Optional[str], typer.Option(help="Second-text column of a folder task (default: text_pair if present).")
    ] = None,
    label_col: Annotated[Optional[str], typer.Option(help="Label column of a folder task (default: label).")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Override the task metric: accuracy, f1 or mcc.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --max-examples subsample.")] = 0,
    split_seed: Annotated[int, typer.Option(help="Seed of the train/dev/test split (registry tasks).")] = 0,
    max_examples: Annotated[Optional[int], typer.Option(help="Keep at most this many examples per split.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Print split sizes, label balance per split and three training examples."""
    from hadskip.data import describe

    info = describe(task, text_col=text_col, pair_col=pair_col, label_col=label_col, metric=metric, seed=seed,
                    max_examples=max_examples, split_seed=split_seed)
    if as_json:
        typer.echo(json.dumps(info))
        return
    _print(info)


def _print(info: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    console = Console()
    cols = info["columns"]
    pair = f", pair={cols['pair']}" if cols["pair"] else ""
    console.print(f"[bold]{escape(info['task'])}[/bold]  ({escape(info['source'])}; metric {info['metric']}; "
                  f"{info['num_labels']} labels; text={escape(cols['text'] + pair)}, label={escape(cols['label'])})")
    sizes = Table("split", "examples", *map(escape, info["label_names"]))
    for name, s in info["splits"].items():
        n = s["examples"]
        sizes.add_row(name, str(n), *(f"{c} ({c / n:.0%})" for c in s["label_counts"].values()))
    console.print(sizes)
    examples = Table("label", "text", *(["pair"] if cols["pair"] else []), title="examples (train)")
    for ex in info["examples"]:
        examples.add_row(*(Text(ex[k]) for k in ("label", "text", "pair") if k in ex))  # data is not markup
    console.print(examples)
