"""The model dir's manifest: what `hadskip export` writes and every runtime backend reads (torch-free).

    MODEL/manifest.json    this schema (versioned: another schema_version is refused)
    MODEL/tokenizer.json   tokenizers-library format
    MODEL/embeddings.onnx  input_ids, attention_mask, token_type_ids -> hidden   (inputs a graph does not use
                           may be absent from it: feed the ones `session.get_inputs()` names)
    MODEL/layers/NN.onnx   hidden, attention_mask -> hidden_out   (same io names for every layer)
    MODEL/gates/NN.onnx    hidden, attention_mask -> gate_logits  (B, 2) closed, open: router.gate_open decides
    MODEL/head.onnx        hidden, attention_mask -> logits
    MODEL/exits/NN.onnx    hidden, attention_mask -> logits   (route "early-exit": the exit after layer NN+1)
    MODEL/engines/...      TensorRT plans (engine "trt")
    MODEL/baseline/...     the full model exported by optimum-onnx (--with-baseline): units["baseline"] is
                           baseline/model.onnx, one graph input_ids, attention_mask[, token_type_ids] -> logits,
                           beside config.json and the tokenizer (ORTModelForSequenceClassification loads the dir);
                           export["baseline"]["model"] says which model: "teacher" (the run's fine-tuned teacher,
                           export["baseline"]["teacher_run"]) or "student-all-gates-open" (the run's own weights,
                           every layer run: same cost as the teacher, not its accuracy)
                           precision int8: baseline/model_quantized.onnx instead, quantized like the layers

The optional field "dial" holds the budget dial (hadskip.runtime.dial; its own "format" number versions it):
absent or null in model dirs exported without one, which load as before.

The optional field "route" (absent or null: "gated", as before): "static" or "early-exit", see
hadskip.runtime.routes. An older hadskip refuses those two in one line (their gate list does not fit
num_layers), so they need no schema bump.

Loading bounds the JSON before parsing it (its size, nesting depth, the digits of an integer; NaN and
infinities are refused), then checks the schema version, the type of every field (a bool is not an integer),
their values and ranges (engine, precision, opset >= 17, unique labels, a budget within 0..num_layers, a pad id
inside the vocabulary, max_seq_len within the position table when it is recorded), the cross-field rules (the
units of every layer, task.num_labels = the number of labels), that no file the manifest names resolves outside
the model dir (a symlink to elsewhere is refused), that every listed file exists, its size and its sha256,
naming the file and the field that fails, in one line. What only the graphs and the tokenizer can tell (each
unit's inputs and outputs, the tokenizer's ids within the embedding table, max_seq_len within the position
table) is checked when a backend opens them (runtime/backends/ort.py `check_io`, runtime/core.py).
Not included: signing; the sha256s catch corruption, not tampering.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hadskip.errors import HadSkipError
from hadskip.runtime.bounded_json import JsonBoundsError, first_non_finite, loads_bounded
from hadskip.runtime.dial import Dial, DialError
from hadskip.runtime.files import sha256_file  # noqa: F401  (also imported from here by export and tests)
from hadskip.runtime.routes import route_problem

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ENGINES = ("onnx", "trt")
PRECISIONS = ("fp32", "fp16", "int8")  # int8: dynamically quantized layer graphs (CPU)
MIN_OPSET = 17  # LayerNormalization is a single op from opset 17
UNIT_KEYS = ("embeddings", "layers", "gates", "head", "tokenizer")
GATE_FORMS = ("separate", "fused")  # fused: embeddings/layer graphs also output the later gates' logits
# bounds checked before json.loads: a manifest is a few kB (a dial adds ~100 B per 0.05 layers), 5 levels deep
MAX_MANIFEST_BYTES = 16 << 20
MAX_DEPTH = 64
MAX_INT_DIGITS = 20  # every integer of a manifest (sizes, counts, ids) fits in 64 bits
MAX_SEQ_LEN = 1 << 16  # tokens; beyond any encoder's position table, and what device buffers are sized by
MAX_HIDDEN = 1 << 16
MAX_PATH = 1024  # characters of a relative file path

IO = {
    "embeddings": {"inputs": ["input_ids", "attention_mask", "token_type_ids"], "outputs": ["hidden"]},
    "layer": {"inputs": ["hidden", "attention_mask"], "outputs": ["hidden_out"]},
    "gate": {"inputs": ["hidden", "attention_mask"], "outputs": ["gate_logits"]},
    "head": {"inputs": ["hidden", "attention_mask"], "outputs": ["logits"]},
    "exit": {"inputs": ["hidden", "attention_mask"], "outputs": ["logits"]},  # an early-exit model's exit heads
}


class ManifestError(HadSkipError):
    """A model dir that cannot be trusted or read; the message names the file."""


@dataclass
class Manifest:
    backbone: dict  # name, model_type, num_layers, hidden_size, num_heads, vocab_size, pad_token_id,
    #                 token_types (whether the model reads the tokenizer's token types; else all 0)
    task: dict  # TaskSpec as a dict (name, text_col, pair_col, label_col, num_labels, metric, label_names)
    labels: list[str]
    max_seq_len: int
    precision: str  # "fp32" | "fp16" | "int8" (the layer graphs; gates are always fp32)
    engine: str  # "onnx" | "trt"
    opset: int
    units: dict  # {"embeddings": path, "layers": [paths], "gates": [paths], "head": path,
    #                "tokenizer": path, "engines": {...} | None, "baseline": path | None,
    #                "gate_form": "separate" | "fused" (absent: separate; fused: hadskip.export.fuse_gates),
    #                "exits": [paths] (route "early-exit" only)}
    files: dict = field(default_factory=dict)  # relative path -> {"sha256": hex, "bytes": int}
    budget: float | None = None
    io: dict = field(default_factory=lambda: json.loads(json.dumps(IO)))
    validation: dict = field(default_factory=dict)  # unit name -> max abs diff vs PyTorch
    optimization: dict = field(default_factory=dict)  # e.g. {"layers": "ort-fused", "fused_ops": {...}}
    tools: dict = field(default_factory=dict)  # package -> version
    created: str = ""
    schema_version: int = SCHEMA_VERSION
    # added by the exporter (optional for readers; absent keys mean "not recorded"):
    tokenization: dict = field(default_factory=dict)  # max_length, truncation, padding(_side), pad_id, pad_token
    io_types: dict = field(default_factory=dict)  # {"embeddings"|"layer"|"gate"|"head": {io name: numpy dtype}}
    export: dict = field(default_factory=dict)  # options and validation shapes/tolerances of the export
    dial: dict | None = None  # the budget dial (hadskip.runtime.dial.Dial as a dict, versioned by its "format")
    quantization: dict = field(default_factory=dict)  # int8: tool, settings, per-unit ops, the dev check vs fp32
    route: dict | None = None  # how rows go through the layers (module docstring; None: gated)

    @property
    def num_layers(self) -> int:
        return int(self.backbone["num_layers"])

    @property
    def route_kind(self) -> str:
        return (self.route or {}).get("kind", "gated")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def file_table(model_dir: str | Path, relpaths: list[str]) -> dict:
    """{relpath: {"sha256", "bytes"}} for the given files of a model dir."""
    root = Path(model_dir)
    return {r: {"sha256": sha256_file(root / r), "bytes": (root / r).stat().st_size} for r in sorted(relpaths)}


def write_manifest(model_dir: str | Path, manifest: Manifest) -> Path:
    f = Path(model_dir) / MANIFEST
    f.write_text(manifest.to_json())
    return f


def load_manifest(model_dir: str | Path, verify: bool = True) -> Manifest:
    """Read and check MODEL/manifest.json; `verify` also checks every file's presence and sha256.

    Every failure is a ManifestError with a one-line message naming the file (and the field)."""
    root = Path(model_dir)
    f = root / MANIFEST
    if not root.is_dir():
        raise ManifestError(f"model dir {root} does not exist")
    real_root = root.resolve()
    if not f.is_file():
        raise ManifestError(f"{f} is missing: {root} is not an exported hadskip model dir")
    check_inside(real_root, f)
    data = read_json(f)
    if not isinstance(data, dict):
        raise ManifestError(f"{f} is not a JSON object")
    version = data.get("schema_version")
    if not _is_int(version) or version != SCHEMA_VERSION:  # True == 1 in Python: a bool is refused here
        raise ManifestError(f"{f} has schema_version {_show(version)}; this hadskip reads {SCHEMA_VERSION} "
                            "(re-export the model with this version)")
    try:
        manifest = Manifest(**data)
    except TypeError as exc:
        raise ManifestError(f"{f} does not match schema {SCHEMA_VERSION}: {exc}") from exc
    check_types(data, f)
    _check_fields(manifest, f)
    manifest_dial(manifest, f)
    check_route(manifest, f)
    for rel in dict.fromkeys([*manifest.files, *unit_files(manifest)]):
        check_inside(real_root, root / rel)
    if verify:
        for rel, meta in manifest.files.items():
            p = root / rel
            try:
                size = p.stat().st_size if p.is_file() else None
            except OSError as exc:  # a name too long, a permission
                raise ManifestError(f"{f}: file {_show(rel)} cannot be read ({exc.strerror or exc})") from None
            if size is None:
                raise ManifestError(f"{p} is listed in {f} but missing")
            if size != meta["bytes"]:
                raise ManifestError(f"{p} is corrupted: it has {size} bytes, {f} says {meta['bytes']}")
            if sha256_file(p) != meta.get("sha256"):
                raise ManifestError(f"{p} is corrupted: its sha256 does not match {f}")
        listed = set(manifest.files)
        for rel in unit_files(manifest):
            if rel not in listed:
                raise ManifestError(f"{root / rel} is used by {f} but has no sha256 entry")
    return manifest


def read_json(f: Path, limit: int = MAX_MANIFEST_BYTES):
    """The JSON value in file f, bounded before it is parsed (hadskip.runtime.bounded_json): at most `limit`
    bytes, MAX_DEPTH levels of nesting, MAX_INT_DIGITS digits per integer; NaN, Infinity and numbers that
    overflow to them are refused naming the field. ManifestError in one line."""
    try:
        size = f.stat().st_size
        if size > limit:
            raise ManifestError(f"{f} has {size} bytes; a manifest has at most {limit} (not a hadskip manifest?)")
        text = f.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{f} is not UTF-8 text (byte {exc.start}): not a hadskip manifest") from None
    except OSError as exc:
        raise ManifestError(f"cannot read {f}: {exc.strerror or exc}") from None
    try:
        data = loads_bounded(text, MAX_DEPTH, MAX_INT_DIGITS)
    except JsonBoundsError as exc:
        tail = "" if "JSON" in str(exc) or "integer" in str(exc) else ": not a hadskip manifest"
        raise ManifestError(f"{f} {exc}{tail}") from None
    where = first_non_finite(data)
    if where is not None:
        raise ManifestError(f"{f}: {where[0]} must be a finite number, got {where[1]}")
    return data


def manifest_dial(manifest: Manifest, f: Path | str = MANIFEST):
    """The manifest's budget dial as a hadskip.runtime.dial.Dial (None when it has none); ManifestError when
    it does not read or does not fit the model."""
    if manifest.dial is None:
        return None
    try:
        dial = Dial.from_dict(manifest.dial, f"{f}: dial")
    except DialError as exc:
        raise ManifestError(str(exc)) from exc
    if dial.num_layers != manifest.num_layers:
        raise ManifestError(f"{f}: dial is for {dial.num_layers} layers, the model has {manifest.num_layers}")
    return dial


def check_route(manifest: Manifest, f: Path | str = MANIFEST) -> None:
    """The route and the units it needs (hadskip.runtime.routes): L gates (gated) or none; L-1 exits or none."""
    problem = route_problem(manifest.route, manifest.num_layers, manifest.units, manifest.dial is not None)
    if problem:
        raise ManifestError(f"{f}{problem}")


def check_inside(real_root: Path, path: Path) -> None:
    """Refuse `path` when it (through a symlink anywhere on the way) resolves outside the model dir. A model dir
    that is a snapshot of the Hugging Face hub cache (HF_HUB_CACHE/models--OWNER--NAME/snapshots/COMMIT, see
    runtime/hub.py) holds links into that repo's blobs folder: those resolve inside the repo's cache folder."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ManifestError(f"{path} cannot be resolved ({exc})") from exc
    if real_root.parent.name == "snapshots" and real_root.parent.parent.name.startswith("models--"):
        blobs = real_root.parent.parent / "blobs"
        if blobs in target.parents:
            return
    if target != real_root and real_root not in target.parents:
        raise ManifestError(f"{path} resolves to {target}, outside the model dir {real_root}; "
                            "refusing to follow the link (copy the file into the model dir instead)")


def unit_files(manifest: Manifest) -> list[str]:
    """Every file the units name: graphs, tokenizer, TensorRT plans (engine "trt") and the baseline graph."""
    u = manifest.units
    rels = [u["embeddings"], u["head"], u["tokenizer"], *u["layers"], *u["gates"], *(u.get("exits") or [])]
    engines = u.get("engines")
    if manifest.engine == "trt" and isinstance(engines, dict):
        rels += [engines[k] for k in ("embeddings", "head") if engines.get(k)]
        rels += [*engines.get("layers", []), *engines.get("gates", []), *engines.get("exits", [])]
    if u.get("baseline"):
        rels.append(u["baseline"])
    return rels


# --- typed validation: every field a reader may touch has one type; a message names the field and value ---

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _optional(test):
    return lambda v: v is None or test(v)


_INT, _POS = (_is_int, "an integer"), (lambda v: _is_int(v) and v >= 1, "a positive integer")
_STR, _DICT = (lambda v: isinstance(v, str), "a string"), (lambda v: isinstance(v, dict), "an object")
_PATH = (lambda v: isinstance(v, str) and v != "", "a relative file path (a non-empty string)")
_PATHS = (lambda v: _is_str_list(v) and all(v), "a list of relative file paths")

TOP_TYPES = {
    "schema_version": _INT, "backbone": _DICT, "task": _DICT,
    "labels": (lambda v: _is_str_list(v) and len(v) >= 1, "a non-empty list of strings"),
    "max_seq_len": _POS, "precision": _STR, "engine": _STR, "opset": _INT, "units": _DICT, "files": _DICT,
    "budget": (_optional(_is_number), "a number or null"), "io": _DICT, "validation": _DICT,
    "optimization": _DICT, "tools": _DICT, "created": _STR, "tokenization": _DICT, "io_types": _DICT,
    "export": _DICT, "dial": (_optional(lambda v: isinstance(v, dict)), "an object or null"),
    "quantization": _DICT, "route": (_optional(lambda v: isinstance(v, dict)), "an object or null"),
}
BACKBONE_TYPES = {  # num_layers and hidden_size are required; the others are checked when present
    "num_layers": _POS, "hidden_size": _POS, "name": _STR, "model_type": _STR, "num_heads": _POS,
    "intermediate_size": (_optional(_POS[0]), "a positive integer or null"), "vocab_size": _POS,
    "pad_token_id": (_optional(lambda v: _is_int(v) and v >= 0), "a non-negative integer or null"),
    "type_vocab_size": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "max_position_embeddings": (_optional(_POS[0]), "a positive integer or null"), "gate_hidden": _POS,
    "token_types": (lambda v: isinstance(v, bool), "true or false"),
}
UNIT_TYPES = {"embeddings": _PATH, "layers": _PATHS, "gates": _PATHS, "head": _PATH, "tokenizer": _PATH,
              "engines": (_optional(lambda v: isinstance(v, dict)), "an object or null"),
              "baseline": (_optional(_PATH[0]), "a relative file path or null"),
              "gate_form": (lambda v: v in GATE_FORMS, f"one of {', '.join(GATE_FORMS)}"), "exits": _PATHS}
ENGINE_TYPES = {"embeddings": _PATH, "head": _PATH, "layers": _PATHS, "gates": _PATHS, "exits": _PATHS}
FILE_TYPES = {"sha256": (lambda v: isinstance(v, str) and len(v) == 64 and not set(v) - set("0123456789abcdef"),
                         "64 lowercase hex digits"),
              "bytes": (lambda v: _is_int(v) and v >= 0, "a non-negative integer")}
ROUTE_TYPES = {"kind": _STR, "rule": _STR, "run_kind": _STR,
               "teacher_layers": (_optional(_is_int), "an integer or null")}
REQUIRED = {"backbone": ("num_layers", "hidden_size"), "units": UNIT_KEYS, "files": ("sha256", "bytes")}


def _show(value) -> str:
    """A value as JSON on one line, cut to a readable length."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_object(obj: dict, types: dict, where: str, f: Path, required: tuple = ()) -> None:
    for key in required:
        if key not in obj:
            raise ManifestError(f"{f}: {where.rstrip('.')} lacks {key}")
    for key, (test, what) in types.items():
        if key in obj and not test(obj[key]):
            raise ManifestError(f"{f}: {where}{key} must be {what}, got {_show(obj[key])}")


def check_types(data: dict, f: Path) -> None:
    """The type of every top-level field and of the nested fields readers use; ManifestError on the first."""
    if "files" not in data:  # its default (no files) would load a model dir whose graphs nothing vouches for
        raise ManifestError(f"{f} lacks files (the sha256 of every file): not a complete hadskip manifest")
    _check_object(data, TOP_TYPES, "", f)
    _check_object(data["backbone"], BACKBONE_TYPES, "backbone.", f, REQUIRED["backbone"])
    _check_object(data["units"], UNIT_TYPES, "units.", f, REQUIRED["units"])
    if isinstance(data.get("route"), dict):
        _check_object(data["route"], ROUTE_TYPES, "route.", f, ("kind",))
    engines = data["units"].get("engines")
    if isinstance(engines, dict):
        _check_object(engines, ENGINE_TYPES, "units.engines.", f)
    for rel, meta in data["files"].items():
        if not isinstance(meta, dict):
            raise ManifestError(f"{f}: files[{_show(rel)}] must be an object, got {_show(meta)}")
        _check_object(meta, FILE_TYPES, f"files[{_show(rel)}].", f, REQUIRED["files"])
    for name, value in data.get("validation", {}).items():
        if not _optional(_is_number)(value):
            raise ManifestError(f"{f}: validation.{name} must be a number or null, got {_show(value)}")
    task = data["task"]
    _check_object(task, {"name": _STR, "num_labels": _POS,
                         "label_names": (_optional(_is_str_list), "a list of strings or null")}, "task.", f)


def _check_fields(manifest: Manifest, f: Path) -> None:
    """Values a reader relies on (types are checked already); the message names the manifest and the field."""
    if manifest.engine not in ENGINES:
        raise ManifestError(f"{f}: engine {manifest.engine!r} is not one of {', '.join(ENGINES)}")
    if manifest.precision not in PRECISIONS:
        raise ManifestError(f"{f}: precision {manifest.precision!r} is not one of {', '.join(PRECISIONS)}")
    if manifest.opset < MIN_OPSET:
        raise ManifestError(f"{f}: opset {manifest.opset!r} < {MIN_OPSET} (LayerNorm must be one op)")
    if manifest.units.get("gate_form", "separate") not in GATE_FORMS:
        raise ManifestError(f"{f}: gate_form {manifest.units.get('gate_form')!r} is not one of {', '.join(GATE_FORMS)}")
    if manifest.engine == "trt" and not isinstance(manifest.units.get("engines"), dict):
        raise ManifestError(f"{f}: engine 'trt' but units['engines'] lists no TensorRT plans")
    _check_ranges(manifest, f)
    for rel in [*manifest.files, *unit_files(manifest)]:
        p = Path(rel)
        if rel == "" or p.is_absolute() or ".." in p.parts or "\0" in rel:
            raise ManifestError(f"{f}: file path {_show(rel)} leaves the model dir")
        if len(rel) > MAX_PATH:
            raise ManifestError(f"{f}: file path {_show(rel)} is over {MAX_PATH} characters")


def _check_ranges(manifest: Manifest, f: Path) -> None:
    """Ranges and cross-field rules of the values the runtime relies on (types are checked already)."""
    labels, bb, L = manifest.labels, manifest.backbone, manifest.num_layers
    seen: set[str] = set()
    for label in labels:
        if label in seen:  # probs is a {label: p} object: a repeated label would drop a class
            raise ManifestError(f"{f}: labels must be unique, {_show(label)} appears twice")
        seen.add(label)
    num_labels = manifest.task.get("num_labels")
    if num_labels is not None and num_labels != len(labels):
        raise ManifestError(f"{f}: task.num_labels is {num_labels} but labels lists {len(labels)}")
    budget = manifest.budget
    if budget is not None and not (math.isfinite(budget) and 0 <= budget <= L):
        raise ManifestError(f"{f}: budget must be a number of layers within 0..{L}, got {_show(budget)}")
    if bb["hidden_size"] > MAX_HIDDEN:
        raise ManifestError(f"{f}: backbone.hidden_size {bb['hidden_size']} is over the limit of {MAX_HIDDEN}")
    table = bb.get("max_position_embeddings")
    if manifest.max_seq_len > MAX_SEQ_LEN:
        raise ManifestError(f"{f}: max_seq_len {manifest.max_seq_len} is over the limit of {MAX_SEQ_LEN} tokens")
    if table is not None and manifest.max_seq_len > table:
        raise ManifestError(f"{f}: max_seq_len {manifest.max_seq_len} is beyond the position table "
                            f"(backbone.max_position_embeddings {table})")
    vocab, pad = bb.get("vocab_size"), bb.get("pad_token_id")
    if vocab is not None and pad is not None and pad >= vocab:
        raise ManifestError(f"{f}: backbone.pad_token_id {pad} is outside the vocabulary "
                            f"(backbone.vocab_size {vocab})")
