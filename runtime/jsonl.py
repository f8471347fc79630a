"""`hadskip predict`'s file handling: JSONL or plain lines in, one JSON object per input out.

    in   .jsonl/.json: {"text": ..., "text_pair": ... (optional), "id": ... (optional, echoed)} per line
         .txt or other: one text per line (blank lines skipped);  "-": stdin, JSONL if the first line is "{..."
    out  {"index", ["id"], "label", "label_id", "probs", "layers", "num_layers", "tokens", "truncated"} per line

Inputs are read in chunks (sorted by length within a chunk), so big files stream in bounded memory.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Callable

from hadskip.errors import HadSkipError
from hadskip.runtime.core import Runtime
from hadskip.runtime.text import TextInput

FORMATS = ("auto", "jsonl", "txt")


def _lines(fh: IO[str]) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(fh, 1):
        line = line.rstrip("\r\n")
        if line.strip():
            yield n, line


def _parse_json(n: int, line: str, where: str) -> tuple[TextInput, dict]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise HadSkipError(f"{where} line {n} is not valid JSON: {exc}") from exc
    if isinstance(obj, str):
        return obj, {}
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise HadSkipError(f'{where} line {n} needs a string "text" field (and optionally "text_pair")')
    pair = obj.get("text_pair")
    if pair is not None and not isinstance(pair, str):
        raise HadSkipError(f'{where} line {n}: "text_pair" must be a string')
    extra = {"id": obj["id"]} if "id" in obj else {}
    return (obj["text"], pair) if pair is not None else obj["text"], extra


def read_inputs(fh: IO[str], fmt: str = "auto", where: str = "input") -> Iterator[tuple[TextInput, dict]]:
    """(input, fields to echo) per non-blank line of `fh`."""
    if fmt not in FORMATS:
        raise HadSkipError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    lines = _lines(fh)
    first = next(lines, None)
    if first is None:
        return
    if fmt == "auto":
        fmt = "jsonl" if first[1].lstrip().startswith("{") else "txt"
    for n, line in itertools.chain([first], lines):
        yield _parse_json(n, line, where) if fmt == "jsonl" else (line, {})


def _format_of(path: str, fmt: str) -> str:
    if fmt != "auto" or path == "-":
        return fmt
    suffix = Path(path).suffix.lower()
    return "jsonl" if suffix in (".jsonl", ".json", ".ndjson") else "txt" if suffix == ".txt" else "auto"


def predict_file(model: str | Path, input: str, output: str = "-", backend: str = "ort-cpu", batch_size: int = 32,
                 fmt: str = "auto", chunk: int = 4096, progress: Callable[[int], None] | None = None,
                 **load_options) -> dict:
    """Classify every input of `input` ("-": stdin) into JSONL at `output` ("-": stdout); returns a summary
    {"inputs", "avg_layers", "truncated", "backend", "output"}."""
    if input != "-" and not Path(input).is_file():
        raise HadSkipError(f"input file {input} does not exist")  # before the (slow) model load
    rt = Runtime.load(model, backend=backend, **load_options)
    src = sys.stdin if input == "-" else open(input, encoding="utf-8")  # noqa: SIM115 - closed below
    dst = sys.stdout if output == "-" else open(output, "w", encoding="utf-8")  # noqa: SIM115
    count, layers, truncated = 0, 0, 0
    try:
        items = read_inputs(src, _format_of(input, fmt), where="stdin" if input == "-" else input)
        while block := list(itertools.islice(items, chunk)):
            preds = rt.predict([x for x, _ in block], batch_size=batch_size)
            for (_, extra), p in zip(block, preds, strict=True):
                dst.write(json.dumps({"index": count, **extra, **p.to_dict()}) + "\n")
                count += 1
                layers += p.num_layers
                truncated += p.truncated
            dst.flush()
            if progress is not None:
                progress(count)
    finally:
        if src is not sys.stdin:
            src.close()
        if dst is not sys.stdout:
            dst.close()
        rt.close()
    return {"inputs": count, "avg_layers": layers / count if count else 0.0, "truncated": truncated,
            "backend": rt.backend_name, "output": output}
