"""The names a model dir's labels get (the manifest's `labels`, label i first), in this order of preference:

1. `hadskip export --label-names a,b,...` (`label_names=` of export_model): checked here (one per label, unique,
   non-empty); a mere reordering of the task's own names is refused, since label i is fixed by training;
2. the task's label names (string labels of a folder task, a registry task's names);
3. the run's transformers config `id2label`, when it names its labels (not transformers' LABEL_0, LABEL_1, ...)
   and the config is a sequence classifier's (a fine-tuned classifier folder used as the teacher/backbone);
4. "0", "1", ... (the label ids as strings).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hadskip.export.spec import ExportError

_DEFAULT_NAME = re.compile(r"LABEL_\d+")


def parse_label_names(value: str | Sequence[str]) -> list[str]:
    """`a,b,c` (or a list) -> names, each stripped; ExportError unless each is non-empty and unique."""
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value)]
    if not names or any(not n for n in names):
        raise ExportError(f"--label-names {','.join(names)!r}: every name must be non-empty (comma-separated, "
                          "label 0 first)")
    seen = set()
    for n in names:
        if n in seen:
            raise ExportError(f"--label-names: {n!r} appears twice; names must be unique")
        seen.add(n)
    return names


def _id2label_names(hf_config: dict, num_labels: int) -> list[str] | None:
    archs = hf_config.get("architectures") or []
    raw = hf_config.get("id2label") or {}
    if not any(str(a).endswith("ForSequenceClassification") for a in archs) or len(raw) != num_labels:
        return None
    try:
        names = [str(raw[k]) for k in sorted(raw, key=int)]
    except (TypeError, ValueError):
        return None
    if [int(k) for k in sorted(raw, key=int)] != list(range(num_labels)) or len(set(names)) != num_labels:
        return None
    if all(_DEFAULT_NAME.fullmatch(n) for n in names) or not all(n.strip() for n in names):
        return None
    return names


def resolve_labels(task: dict, hf_config: dict, num_labels: int,
                   given: str | Sequence[str] | None = None) -> tuple[list[str], str]:
    """(label names, where they came from: "--label-names" | "task" | "id2label" | "ids")."""
    own = [str(n) for n in (task.get("label_names") or [])]
    if given is not None:
        names = parse_label_names(given)
        if len(names) != num_labels:
            raise ExportError(f"--label-names gives {len(names)} names but the model has {num_labels} labels")
        if own and sorted(names) == sorted(own) and names != own:
            raise ExportError(f"--label-names {','.join(names)} reorders the task's own labels "
                              f"({','.join(own)}): label i is fixed by training, so this would mislabel every "
                              "prediction; give the names in the task's order")
        return names, "--label-names"
    if own:
        return own, "task"
    names = _id2label_names(hf_config, num_labels)
    if names is not None:
        return names, "id2label"
    return [str(i) for i in range(num_labels)], "ids"
