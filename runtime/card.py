"""The model card (the hub repo's README.md) of a model dir: its one job is text from the manifest (and a compare
result, when there is one). `hadskip push` (runtime/push.py) decides whether it is uploaded.

    model_card(manifest, "user/sst2-h3", compare=None) -> str

YAML front matter (library_name hadskip, pipeline_tag text-classification, tags) written by huggingface_hub's
ModelCardData, so it is the hub's own format and quoting; then the labels in order, the backbone family, layers,
the trained budget, the budget dial (target -> dev average layers and metric), the compare table when given, and
how to load the model (`hadskip.pipeline`, `hadskip predict`, `serve-local`). Every value that comes from a file
is one escaped table cell of at most MAX_CELL characters, and long lists are cut to MAX_ROWS rows with a line
saying how many were left out, so a card stays small whatever the manifest or compare.json holds.
"""

from __future__ import annotations

import math
import re

from hadskip.errors import require
from hadskip.runtime.manifest import Manifest, ManifestError, manifest_dial

MAX_CELL = 80  # characters of one value in a table cell
MAX_ROWS = 64  # rows of one table (labels, dial points, compare rows)
_TAG = re.compile(r"[^a-z0-9]+")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~<>])")


def _cell(value, limit: int = MAX_CELL) -> str:
    """A value as one Markdown table cell: control characters and line breaks as spaces, cut to `limit`,
    Markdown/HTML special characters escaped (a label cannot break the table or inject markup)."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(value)).split())
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", text) or " "


def _num(x, digits: int = 4) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list[str]], what: str) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows[:MAX_ROWS]]
    if len(rows) > MAX_ROWS:
        out.append(f"\n({len(rows) - MAX_ROWS} more {what} not shown; the manifest has them all)")
    return out


def front_matter(manifest: Manifest) -> str:
    """The YAML header: library_name, pipeline_tag, tags (hadskip, layer-skipping, onnx, the family)."""
    hub = require("huggingface_hub", "hub", "writing a model card")
    family = _TAG.sub("-", str(manifest.backbone.get("model_type", "")).lower()).strip("-")[:40]
    tags = ["hadskip", "layer-skipping", "onnx", "text-classification", *([family] if family else [])]
    data = hub.ModelCardData(library_name="hadskip", pipeline_tag="text-classification", tags=tags)
    return f"---\n{data.to_yaml()}\n---\n"


def _facts(manifest: Manifest) -> list[str]:
    bb, task = manifest.backbone, manifest.task
    trained = (manifest.export or {}).get("trained_avg_layers")
    trained = trained if isinstance(trained, dict) else {}
    rows = [
        ["task", f"{_cell(task.get('name', ''))} ({_cell(task.get('metric', ''))})"],
        ["backbone", f"{_cell(bb.get('name', ''))} (family {_cell(bb.get('model_type', ''))})"],
        ["layers", f"{manifest.num_layers} (hidden size {_num(bb.get('hidden_size'))})"],
        ["trained budget", "every layer (no budget)" if manifest.budget is None else
         f"{_num(manifest.budget)} layers on average"
         + (f"; trained: dev {_num(trained.get('dev'), 2)}, test {_num(trained.get('test'), 2)}"
            if trained else "")],
        ["precision / engine", f"{_cell(manifest.precision)} / {_cell(manifest.engine)}"],
        ["max sequence length", f"{manifest.max_seq_len} tokens"],
    ]
    return _table(["", ""], rows, "facts")


def _labels(manifest: Manifest) -> list[str]:
    rows = [[str(i), _cell(label)] for i, label in enumerate(manifest.labels)]
    return ["## Labels", "", "In the order of the model's outputs:", "", *_table(["id", "label"], rows, "labels")]


def _dial(manifest: Manifest) -> list[str]:
    try:
        dial = manifest_dial(manifest)
    except ManifestError:
        dial = None
    if dial is None:
        return ["## Budget dial", "", "None: the model runs its trained gates (export a run calibrated with "
                "`hadskip dial` to choose a budget at load time)."]
    metric = _cell(dial.metric or manifest.task.get("metric", "metric"))
    lo, hi = dial.budget_range
    rows = [[_num(p.target, 3), _num(p.avg_layers, 3), _num(p.value)] for p in dial.points]
    return ["## Budget dial", "",
            f"One model, many operating points: `budget=` (or `--budget`) sets the target average of layers, "
            f"from {_num(lo, 2)} to {_num(hi, 2)}. Measured on {_cell(dial.split)} ({dial.examples} examples):", "",
            *_table(["target layers", f"{_cell(dial.split)} avg layers", f"{_cell(dial.split)} {metric}"], rows,
                    "dial points")]


def _compare(compare: dict | None) -> list[str]:
    if not isinstance(compare, dict) or not isinstance(compare.get("rows"), list):
        return []
    metric = _cell(compare.get("metric", "metric"))
    rows = [[_cell(r.get("method", ""), 40), _num(r.get("budget"), 3), _num(r.get("value")),
             _num(r.get("avg_layers"), 2), _num(r.get("dev_value")), _num(r.get("dev_avg_layers"), 2)]
            for r in compare["rows"] if isinstance(r, dict)]
    if not rows:
        return []
    return ["## Compared with other ways to skip layers", "",
            f"`hadskip compare` on {_cell(compare.get('task', ''))}, every method trained from the same teacher:", "",
            *_table(["method", "budget", f"test {metric}", "test avg layers", f"dev {metric}", "dev avg layers"],
                    rows, "rows")]


def _usage(repo_id: str) -> list[str]:
    rid = repo_id.replace("`", "")
    return ["## Use", "",
            "The runtime needs no torch: `pip install 'hadskip[hub]'` (add `serve` for the HTTP server).", "",
            "```python", "import hadskip", "", f'pipe = hadskip.pipeline("{rid}")', 'pipe("a fine movie")',
            'pipe({"text": "premise", "text_pair": "hypothesis"}, top_k=None)', "```", "",
            "```bash", f"hadskip predict {rid} -i texts.txt        # one JSON line per input",
            f"hadskip serve-local {rid}                   # POST /predict, TEI-compatible routes", "```", "",
            "Each input runs only the layers its gates open; the answer says which (`layers`)."]


def model_card(manifest: Manifest, repo_id: str, compare: dict | None = None) -> str:
    """The README.md text of a hub repo holding this model dir (see the module docstring)."""
    family = _cell(manifest.backbone.get("model_type", "encoder"))
    lines = [f"# {_cell(repo_id, 200)}", "",
             f"A {family} text classifier with learned per-input layer skipping (HadSkip), exported by hadskip for "
             "its torch-free runtime: per-layer ONNX graphs, a gate before each layer, and the sha256 of every "
             "file in `manifest.json` (checked when loaded).", "",
             *_facts(manifest), "", *_labels(manifest), "", *_dial(manifest), ""]
    table = _compare(compare)
    if table:
        lines += [*table, ""]
    lines += _usage(repo_id)
    return front_matter(manifest) + "\n" + "\n".join(lines) + "\n"
