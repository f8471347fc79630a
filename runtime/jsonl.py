"""`hadskip predict`'s file handling: JSONL or plain lines in, one JSON object per input out.

    in   .jsonl/.json: {"text": ..., "text_pair": ... (optional), "id": ... (optional, echoed)} per line
         .txt or other: one text per line;  "-": stdin, JSONL if the first non-blank line is "{..."
    out  {"index", ["id"], "label", "label_id", "probs", "layers", "num_layers", "tokens", "truncated"} per input

`index` is the input's line number counted from 0, so results join back to the input file. In a .txt input
every line gives one output line: a blank or whitespace-only line, or one the tokenizer leaves no token of
(control or zero-width characters), gives {"index", "error": "empty text"} (as the server refuses empty text)
instead of a prediction. In JSONL, blank lines hold no record and give nothing;
a record whose text (or text_pair) is blank gives such an error entry.
Whole-input errors (not UTF-8, a NUL byte, malformed JSON, a lone surrogate, a missing "text") stop with
one line naming the line number.

Inputs are read in chunks (sorted by length within a chunk), so big files stream in bounded memory. Stdin is
answered as it arrives: the lines already there (up to a chunk) are classified together and their answers
written and flushed before waiting for more, so a caller may write a line and read its answer back.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hadskip.errors import HadSkipError
from hadskip.runtime.core import Runtime
from hadskip.runtime.text import EmptyTextError, TextInput

FORMATS = ("auto", "jsonl", "txt")
EMPTY = "empty text"


@dataclass
class Row:
    """One input of the file: its 0-based line number, the text or pair (None when `error` says why not),
    and the fields echoed into its output line."""

    index: int
    input: TextInput | None
    extra: dict
    error: str | None = None


PAUSE = None  # from a live source: no more input has arrived yet (answer what is read so far)


class Arriving:
    """The lines of a stream (stdin) as they arrive, read by a daemon thread: iterating yields each line, and
    PAUSE whenever no further line is there yet, before waiting for one. Read errors are raised in order."""

    def __init__(self, fh):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._end = object()
        threading.Thread(target=self._read, args=(fh,), daemon=True, name="hadskip-stdin").start()

    def _read(self, fh) -> None:
        try:
            for line in fh:
                self._queue.put(line)
        except Exception as exc:  # noqa: BLE001 - handed to the reading side, raised there
            self._queue.put(exc)
        self._queue.put(self._end)

    def __iter__(self):
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                yield PAUSE
                item = self._queue.get()
            if item is self._end:
                return
            if isinstance(item, Exception):
                raise item
            yield item


def _lines(fh: Iterable[str | bytes], where: str) -> Iterator[tuple[int, str] | None]:
    """(0-based line number, line without its newline) of every line; bytes are decoded as strict UTF-8.
    A PAUSE from the source is passed on as is."""
    n = -1
    for raw in fh:
        if raw is PAUSE:
            yield PAUSE
            continue
        n += 1
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise HadSkipError(f"{where} line {n + 1} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                                   f"offset {exc.start}); is it a binary file?") from None
        else:
            line = raw
        if n == 0:
            line = line.removeprefix("\ufeff")  # a UTF-8 byte order mark
        if "\x00" in line:
            raise HadSkipError(f"{where} line {n + 1} holds a NUL byte; is it a binary file?")
        yield n, line.rstrip("\r\n")


def _text(value, n: int, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise HadSkipError(f'{where} line {n + 1}: "{key}" must be a string')
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON \ud800 escape
        raise HadSkipError(f'{where} line {n + 1}: "{key}" is not valid Unicode (lone surrogate at character '
                           f"{exc.start})") from None
    return value


def _parse_json(n: int, line: str, where: str) -> Row:
    try:
        obj = json.loads(line)
    except ValueError as exc:  # JSONDecodeError, or an integer of more digits than Python converts
        raise HadSkipError(f"{where} line {n + 1} is not valid JSON: {exc}") from None
    except RecursionError:
        raise HadSkipError(f"{where} line {n + 1} is not valid JSON: nested too deeply") from None
    if isinstance(obj, str):
        obj = {"text": obj}
    if not isinstance(obj, dict) or "text" not in obj:
        raise HadSkipError(f'{where} line {n + 1} needs a string "text" field (and optionally "text_pair")')
    text = _text(obj["text"], n, "text", where)
    pair = None if obj.get("text_pair") is None else _text(obj["text_pair"], n, "text_pair", where)
    extra = {}
    if "id" in obj:
        try:
            json.dumps(obj["id"], allow_nan=False)
        except (ValueError, RecursionError):  # 1e999 reads as inf, which is not JSON
            raise HadSkipError(f'{where} line {n + 1}: "id" cannot be written back as JSON') from None
        extra["id"] = obj["id"]
    if not text.strip() or (pair is not None and not pair.strip()):
        return Row(n, None, extra, EMPTY)
    return Row(n, (text, pair) if pair is not None else text, extra)


def read_inputs(fh: Iterable[str | bytes], fmt: str = "auto", where: str = "input") -> Iterator[Row | None]:
    """One Row per input line of `fh` (text or binary lines; see the module docstring for the rules). A PAUSE
    in `fh` (an Arriving source) is passed on once the format is known."""
    if fmt not in FORMATS:
        raise HadSkipError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    lines = _lines(fh, where)
    head = []  # blank lines before the first non-blank one, which decides "auto"
    for item in lines if fmt == "auto" else ():
        if item is PAUSE:  # the format is not known yet: wait on
            continue
        head.append(item)
        if item[1].strip():
            break
    if fmt == "auto":
        fmt = "jsonl" if head and head[-1][1].lstrip().startswith("{") else "txt"
    for item in itertools.chain(head, lines):
        if item is PAUSE:
            yield PAUSE
            continue
        n, line = item
        if fmt == "txt":
            yield Row(n, line, {}) if line.strip() else Row(n, None, {}, EMPTY)
        elif line.strip():
            yield _parse_json(n, line, where)


def _format_of(path: str, fmt: str) -> str:
    if fmt != "auto" or path == "-":
        return fmt
    suffix = Path(path).suffix.lower()
    return "jsonl" if suffix in (".jsonl", ".json", ".ndjson") else "txt" if suffix == ".txt" else "auto"


def _check_paths(input: str, output: str) -> None:
    """Refuse unusable paths before the (slow) model load."""
    if input != "-":
        src = Path(input)
        if not src.exists():
            raise HadSkipError(f"input file {input} does not exist")
        if src.is_dir():
            raise HadSkipError(f"input {input} is a folder, not a file")
    if output != "-":
        dst = Path(output)
        if dst.is_dir():
            raise HadSkipError(f"output {output} is a folder; give a file name")
        if not dst.parent.is_dir():
            raise HadSkipError(f"output folder {dst.parent} does not exist")
        if input != "-" and dst.exists() and dst.resolve() == Path(input).resolve():
            raise HadSkipError(f"output {output} is the input file; writing would erase it")


def _open(path: str, mode: str, what: str):
    try:
        return open(path, mode) if "b" in mode else open(path, mode, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise HadSkipError(f"cannot {what} {path}: {exc.strerror or exc}") from None


def _block(rows: Iterator[Row | None], chunk: int) -> list[Row]:
    """The next up to `chunk` rows; from a live source, cut short at a PAUSE once it holds a row (what has
    arrived is answered before waiting for more). Empty at the end of the input."""
    block: list[Row] = []
    for row in rows:
        if row is PAUSE:
            if block:
                return block
            continue
        block.append(row)
        if len(block) >= chunk:
            break
    return block


def read_input_file(path: str, fmt: str = "auto") -> list:
    """Every non-blank input of a .txt / .jsonl file (read_inputs' rules), as texts or (text, text_pair) tuples."""
    with _open(path, "rb", "read") as fh:
        return [r.input for r in read_inputs(fh, _format_of(path, fmt), where=path) if r.error is None]


def predict_file(model: str | Path, input: str, output: str = "-", backend: str = "ort-cpu", batch_size: int = 32,
                 fmt: str = "auto", chunk: int = 4096, progress: Callable[[int], None] | None = None,
                 max_layers: int | None = None, **load_options) -> dict:
    """Classify every input of `input` ("-": stdin) into JSONL at `output` ("-": stdout); returns a summary
    {"inputs", "empty", "avg_layers", "truncated", "backend", "output", "budget"} (`empty`: error entries
    written; `budget`: the dial setting, load_options["budget"], or None). `max_layers`: a hard cap on the layers
    any input runs (Runtime.predict)."""
    if fmt not in FORMATS:
        raise HadSkipError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    _check_paths(input, output)
    count, empty, layers, truncated = 0, 0, 0, 0
    with contextlib.ExitStack() as stack:
        rt = stack.enter_context(Runtime.load(model, backend=backend, **load_options))
        cap = {"max_layers": rt.check_max_layers(max_layers)} if max_layers is not None else {}
        src = Arriving(sys.stdin.buffer) if input == "-" else stack.enter_context(_open(input, "rb", "read"))
        dst = sys.stdout if output == "-" else stack.enter_context(_open(output, "w", "write"))
        rows = read_inputs(src, _format_of(input, fmt), where="stdin" if input == "-" else input)
        try:
            while block := _block(rows, chunk):
                todo = [r for r in block if r.error is None]
                try:
                    preds = iter(rt.predict([r.input for r in todo], batch_size=batch_size, **cap) if todo else [])
                except EmptyTextError as exc:  # texts with no tokens: error entries, like blank lines
                    for i in exc.indices:
                        todo[i].error = EMPTY
                    todo = [r for r in todo if r.error is None]
                    preds = iter(rt.predict([r.input for r in todo], batch_size=batch_size, **cap) if todo else [])
                for r in block:
                    if r.error is not None:
                        dst.write(json.dumps({"index": r.index, **r.extra, "error": r.error}) + "\n")
                        empty += 1
                        continue
                    p = next(preds)
                    dst.write(json.dumps({"index": r.index, **r.extra, **p.to_dict()}) + "\n")
                    count += 1
                    layers += p.num_layers
                    truncated += p.truncated
                dst.flush()
                if progress is not None:
                    progress(count + empty)
        except OSError as exc:  # a read or write failing mid-way (disk full, a removed file, a device error)
            raise HadSkipError(f"predict stopped after {count + empty} inputs: {exc}") from None
    return {"inputs": count, "empty": empty, "avg_layers": layers / count if count else 0.0,
            "truncated": truncated, "backend": rt.backend_name, "output": output, "budget": rt.budget}
