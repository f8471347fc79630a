"""The model dir's manifest: what `hadskip export` writes and every runtime backend reads (torch-free).

    MODEL/manifest.json    this schema (versioned: another schema_version is refused)
    MODEL/tokenizer.json   tokenizers-library format
    MODEL/embeddings.onnx  input_ids, attention_mask, token_type_ids -> hidden   (inputs a graph does not use
                           may be absent from it: feed the ones `session.get_inputs()` names)
    MODEL/layers/NN.onnx   hidden, attention_mask -> hidden_out   (same io names for every layer)
    MODEL/gates/NN.onnx    hidden, attention_mask -> gate_logits  (B, 2); open = gate_logits[:,1] > [:,0]
    MODEL/head.onnx        hidden, attention_mask -> logits
    MODEL/engines/...      TensorRT plans (engine "trt")
    MODEL/baseline/...     the full teacher exported by optimum-onnx (--with-baseline)

Loading checks the schema version, that every listed file exists, and each file's sha256, naming the file
that fails. Not included: signing; the sha256s catch corruption, not tampering.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hadskip.errors import HadSkipError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

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
    precision: str  # "fp32" | "fp16"
    engine: str  # "onnx" | "trt"
    opset: int
    units: dict  # {"embeddings": path, "layers": [paths], "gates": [paths], "head": path,
    #                "tokenizer": path, "engines": {...} | None, "baseline": path | None}
    files: dict = field(default_factory=dict)  # relative path -> {"sha256": hex, "bytes": int}
    budget: float | None = None
    io: dict = field(default_factory=lambda: json.loads(json.dumps(IO)))
    validation: dict = field(default_factory=dict)  # unit name -> max abs diff vs PyTorch
    optimization: dict = field(default_factory=dict)  # e.g. {"layers": "ort-fused", "fused_ops": {...}}
    tools: dict = field(default_factory=dict)  # package -> version
    created: str = ""
    schema_version: int = SCHEMA_VERSION

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
        needed = [manifest.units["embeddings"], manifest.units["head"], manifest.units["tokenizer"],
                  *manifest.units["layers"], *manifest.units["gates"]]
        for rel in needed:
            if rel not in listed:
                raise ManifestError(f"{root / rel} is used by {f} but has no sha256 entry")
    return manifest
