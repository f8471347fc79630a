"""The model dir's manifest: what `hadskip export` writes and every runtime backend reads (torch-free).

    MODEL/manifest.json    this schema (versioned: another schema_version is refused)
    MODEL/tokenizer.json   tokenizers-library format
    MODEL/embeddings.onnx  input_ids, attention_mask, token_type_ids -> hidden   (inputs a graph does not use
                           may be absent from it: feed the ones `session.get_inputs()` names)
    MODEL/layers/NN.onnx   hidden, attention_mask -> hidden_out   (same io names for every layer)
    MODEL/gates/NN.onnx    hidden, attention_mask -> gate_logits  (B, 2); open = gate_logits[:,1] > [:,0]
    MODEL/head.onnx        hidden, attention_mask -> logits
    MODEL/engines/...      TensorRT plans (engine "trt")
    MODEL/baseline/...     the full teacher exported by optimum-onnx (--with-baseline): units["baseline"] is
                           baseline/model.onnx, one graph input_ids, attention_mask[, token_type_ids] -> logits,
                           beside config.json and the tokenizer (ORTModelForSequenceClassification loads the dir);
                           precision int8: baseline/model_quantized.onnx instead, quantized like the layers

Loading checks the schema version, the fields and their values (engine, precision, opset >= 17, the units
of every layer), that every listed file exists, and each file's sha256, naming the file that fails.
Not included: signing; the sha256s catch corruption, not tampering.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hadskip.errors import HadSkipError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ENGINES = ("onnx", "trt")
PRECISIONS = ("fp32", "fp16", "int8")  # int8: dynamically quantized layer graphs (CPU)
MIN_OPSET = 17  # LayerNormalization is a single op from opset 17
UNIT_KEYS = ("embeddings", "layers", "gates", "head", "tokenizer")
GATE_FORMS = ("separate", "fused")  # fused: embeddings/layer graphs also output the later gates' logits

IO = {
    "embeddings": {"inputs": ["input_ids", "attention_mask", "token_type_ids"], "outputs": ["hidden"]},
    "layer": {"inputs": ["hidden", "attention_mask"], "outputs": ["hidden_out"]},
    "gate": {"inputs": ["hidden", "attention_mask"], "outputs": ["gate_logits"]},
    "head": {"inputs": ["hidden", "attention_mask"], "outputs": ["logits"]},
}


class ManifestError(HadSkipError):
    """A model dir that cannot be trusted or read; the message names the file."""


@dataclass
class Manifest:
    backbone: dict  # name, model_type, num_layers, hidden_size, num_heads, vocab_size, pad_token_id
    task: dict  # TaskSpec as a dict (name, text_col, pair_col, label_col, num_labels, metric, label_names)
    labels: list[str]
    max_seq_len: int
    precision: str  # "fp32" | "fp16" | "int8" (the layer graphs; gates are always fp32)
    engine: str  # "onnx" | "trt"
    opset: int
    units: dict  # {"embeddings": path, "layers": [paths], "gates": [paths], "head": path,
    #                "tokenizer": path, "engines": {...} | None, "baseline": path | None,
    #                "gate_form": "separate" | "fused" (absent: separate; fused: hadskip.export.fuse_gates)}
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
    quantization: dict = field(default_factory=dict)  # int8: tool, settings, per-unit ops, the dev check vs fp32

    @property
    def num_layers(self) -> int:
        return int(self.backbone["num_layers"])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_table(model_dir: str | Path, relpaths: list[str]) -> dict:
    """{relpath: {"sha256", "bytes"}} for the given files of a model dir."""
    root = Path(model_dir)
    return {r: {"sha256": sha256_file(root / r), "bytes": (root / r).stat().st_size} for r in sorted(relpaths)}


def write_manifest(model_dir: str | Path, manifest: Manifest) -> Path:
    f = Path(model_dir) / MANIFEST
    f.write_text(manifest.to_json())
    return f


def load_manifest(model_dir: str | Path, verify: bool = True) -> Manifest:
    """Read and check MODEL/manifest.json; `verify` also checks every file's presence and sha256."""
    root = Path(model_dir)
    f = root / MANIFEST
    if not root.is_dir():
        raise ManifestError(f"model dir {root} does not exist")
    if not f.is_file():
        raise ManifestError(f"{f} is missing: {root} is not an exported hadskip model dir")
    try:
        data = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{f} is not valid JSON (truncated or corrupted?): {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{f} is not a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{f} has schema_version {version!r}; this hadskip reads {SCHEMA_VERSION} "
                            "(re-export the model with this version)")
    try:
        manifest = Manifest(**data)
    except TypeError as exc:
        raise ManifestError(f"{f} does not match schema {SCHEMA_VERSION}: {exc}") from exc
    _check_fields(manifest, f)
    if len(manifest.units.get("layers", [])) != manifest.num_layers or \
            len(manifest.units.get("gates", [])) != manifest.num_layers:
        raise ManifestError(f"{f} lists {len(manifest.units.get('layers', []))} layers and "
                            f"{len(manifest.units.get('gates', []))} gates for a {manifest.num_layers}-layer model")
    if verify:
        for rel, meta in manifest.files.items():
            p = root / rel
            if not p.is_file():
                raise ManifestError(f"{p} is listed in {f} but missing")
            if sha256_file(p) != meta.get("sha256"):
                raise ManifestError(f"{p} is corrupted: its sha256 does not match {f}")
        listed = set(manifest.files)
        for rel in unit_files(manifest):
            if rel not in listed:
                raise ManifestError(f"{root / rel} is used by {f} but has no sha256 entry")
    return manifest


def unit_files(manifest: Manifest) -> list[str]:
    """Every file the units name: graphs, tokenizer, TensorRT plans (engine "trt") and the baseline graph."""
    u = manifest.units
    rels = [u["embeddings"], u["head"], u["tokenizer"], *u["layers"], *u["gates"]]
    engines = u.get("engines")
    if manifest.engine == "trt" and isinstance(engines, dict):
        rels += [engines[k] for k in ("embeddings", "head") if engines.get(k)]
        rels += [*engines.get("layers", []), *engines.get("gates", [])]
    if u.get("baseline"):
        rels.append(u["baseline"])
    return rels


def _check_fields(manifest: Manifest, f: Path) -> None:
    """Values a reader relies on; the message names the manifest and the field."""
    if manifest.engine not in ENGINES:
        raise ManifestError(f"{f}: engine {manifest.engine!r} is not one of {', '.join(ENGINES)}")
    if manifest.precision not in PRECISIONS:
        raise ManifestError(f"{f}: precision {manifest.precision!r} is not one of {', '.join(PRECISIONS)}")
    if not isinstance(manifest.opset, int) or manifest.opset < MIN_OPSET:
        raise ManifestError(f"{f}: opset {manifest.opset!r} < {MIN_OPSET} (LayerNorm must be one op)")
    if not isinstance(manifest.units, dict) or any(k not in manifest.units for k in UNIT_KEYS):
        missing = [k for k in UNIT_KEYS if not isinstance(manifest.units, dict) or k not in manifest.units]
        raise ManifestError(f"{f}: units lacks {', '.join(missing)}")
    if manifest.units.get("gate_form", "separate") not in GATE_FORMS:
        raise ManifestError(f"{f}: gate_form {manifest.units.get('gate_form')!r} is not one of {', '.join(GATE_FORMS)}")
    if manifest.engine == "trt" and not isinstance(manifest.units.get("engines"), dict):
        raise ManifestError(f"{f}: engine 'trt' but units['engines'] lists no TensorRT plans")
    if not isinstance(manifest.backbone, dict) or "num_layers" not in manifest.backbone:
        raise ManifestError(f"{f}: backbone lacks num_layers")
    for rel in [*manifest.files, *unit_files(manifest)]:
        p = Path(rel)
        if p.is_absolute() or ".." in p.parts:
            raise ManifestError(f"{f}: file path {rel!r} leaves the model dir")
