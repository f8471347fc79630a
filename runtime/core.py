"""Runtime: a model dir (or, for the torch backend, a run dir) + a backend -> predictions with layers used.

    rt = Runtime.load(model_dir, backend="ort-cpu")
    rt.predict(texts_or_pairs, batch_size=32) -> Predictions   # sorted by length into batches, input order kept
    rt.run_batch(input_ids, attention_mask, token_type_ids, forced=None) -> BatchResult(logits, gates)

    Runtime.load(model_dir, budget=2.5); rt.predict(texts, budget=4)   # the budget dial (runtime/dial.py):
                                                   # a target average of layers -> a gate offset

A static model dir (a budgeted-exit export) runs every layer on every row; an early-exit one runs the exit loop
of runtime/exits.py, its budget picking the exit threshold (runtime/routes.py).
Not included: request queueing or dynamic batching across callers (the server builds that on run_batch).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hadskip.errors import HadSkipError
from hadskip.runtime.backends import OPTIMIZATIONS, BackendOptions, find_opener
from hadskip.runtime.dial import DialError, resolve_knob
from hadskip.runtime.exits import route_exits, softmax  # noqa: F401 (softmax: also imported from here)
from hadskip.runtime.hub import resolve_model
from hadskip.runtime.manifest import MANIFEST, ManifestError
from hadskip.runtime.model_info import ModelInfo, info_from_manifest, precision_note  # noqa: F401 (re-exported)
from hadskip.runtime.router import Backend, BatchResult, route, row_lengths
from hadskip.runtime.text import EmptyTextError, Encoded, TextEncoder, TextInput




@dataclass
class Prediction:
    label: str
    label_id: int
    probs: dict[str, float]
    layers: list[int]  # indices (0-based) of the layers that ran for this input
    tokens: int  # tokens after truncation
    truncated: bool  # the input was longer than max_seq_len and was cut

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict:
        return {"label": self.label, "label_id": self.label_id, "probs": self.probs, "layers": self.layers,
                "num_layers": self.num_layers, "tokens": self.tokens, "truncated": self.truncated}


class Predictions(Sequence):
    """Results of `Runtime.predict` in input order: a sequence of Prediction plus whole-array views."""

    def __init__(self, label_names: list[str], probabilities: np.ndarray, gates: np.ndarray, tokens: np.ndarray,
                 truncated: np.ndarray, logits: np.ndarray | None = None):
        self.label_names = list(label_names)
        self.logits = logits  # (N, C) float32, the head's raw scores (None: not kept)
        self.probabilities = probabilities  # (N, C) float32
        self.gates = gates  # (N, L) bool
        self.tokens = tokens  # (N,) int
        self.truncated = truncated  # (N,) bool

    def __len__(self) -> int:
        return len(self.probabilities)

    def __getitem__(self, n):
        if isinstance(n, slice):
            return [self[i] for i in range(*n.indices(len(self)))]
        p = self.probabilities[n]
        k = int(p.argmax())
        return Prediction(label=self.label_names[k], label_id=k,
                          probs={name: float(x) for name, x in zip(self.label_names, p, strict=True)},
                          layers=np.flatnonzero(self.gates[n]).tolist(), tokens=int(self.tokens[n]),
                          truncated=bool(self.truncated[n]))

    @property
    def label_ids(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1) if len(self) else np.zeros(0, dtype=np.int64)

    @property
    def labels(self) -> list[str]:
        return [self.label_names[k] for k in self.label_ids]

    @property
    def layers(self) -> list[list[int]]:
        return [np.flatnonzero(g).tolist() for g in self.gates]

    @property
    def num_layers(self) -> np.ndarray:
        return self.gates.sum(axis=1)  # (N,) layers used per input

    @property
    def avg_layers(self) -> float:
        return float(self.num_layers.mean()) if len(self) else 0.0

    def to_dicts(self) -> list[dict]:
        return [p.to_dict() for p in self]


class Runtime:
    """A loaded model on one backend. Use `Runtime.load`."""

    def __init__(self, backend: Backend, info: ModelInfo, budget: float | None = None):
        self.backend, self.info = backend, info
        if info.route == "early-exit" and not callable(getattr(backend, "run_exit", None)):
            raise HadSkipError(f"{info.source or 'the model'} is an early-exit model and backend {backend.name} "
                               "cannot run exit heads; use ort-cpu or ort-cuda")
        self.encoder = TextEncoder(info.tokenizer_file, info.max_seq_len, info.pad_token_id, not info.token_types)
        if info.manifest is not None:
            check_embeddings(backend, info, self.encoder)
        self.budget: float | None = None  # the dial setting predict uses by default (None: the trained rule)
        self.gate_offset = 0.0  # its gate offset (gated models)
        self.exit_threshold = 0.0  # its exit threshold (early-exit models; 0: no row exits early)
        self.set_budget(budget)

    @classmethod
    def load(cls, model_dir: str | Path, backend: str = "ort-cpu", *, threads: int | None = None,
             device_id: int = 0, device: str | None = None, max_batch: int = 32, cuda_graphs: str = "auto",
             optimization: str = "all", verify: bool = True, budget: float | None = None,
             revision: str | None = None, dtype: str = "fp32") -> Runtime:
        """Load a model dir on `backend`: a local folder, or a Hugging Face hub repo id ("user/name", fetched into
        the HF cache at `revision`, None: main; a local folder of that name wins; runtime/hub.py).

        threads: intra-op threads per ORT session (None: onnxruntime's default); for the torch backend,
        torch's (process-wide) intra-op thread count; trt has no host threads to set. device_id: the GPU for
        ort-cuda/trt. device: torch device for the torch backend ("cpu", "cuda:0"; None: CUDA if present).
        max_batch: rows the GPU buffers are first sized for (they grow on demand). cuda_graphs: trt and torch
        on CUDA ("auto": CUDA graphs per shape for small calls; "on"; "off").
        optimization: ORT graph optimisation level (disable|basic|extended|all). verify: check sha256s.
        dtype: the torch backend's precision, "fp32", "fp16" (CUDA) or "bf16"; an exported model dir has its own
        (hadskip export --fp16), so another backend refuses anything but fp32.
        budget: the target average of layers `predict` runs at by default, through the model's budget dial
        (None: the trained gates as they are, offset 0); a model without a dial, or a budget outside its
        calibrated range, is a HadSkipError.
        The torch backend also takes a run dir (hadskip.modeling.checkpoint) instead of a model dir. `backend` is
        looked up in one registry (hadskip.runtime.backends: the built-ins, registered and entry-point plug-ins).
        """
        if optimization not in OPTIMIZATIONS:
            raise HadSkipError(f"unknown optimization {optimization!r}; choose one of {', '.join(OPTIMIZATIONS)}")
        path = resolve_model(model_dir, revision)
        options = BackendOptions(threads=threads, device_id=device_id, device=device, max_batch=max_batch,
                                 cuda_graphs=cuda_graphs, optimization=optimization, verify=verify, dtype=dtype)
        if dtype != "fp32" and backend != "torch":
            raise HadSkipError(f"dtype {dtype} is for the torch backend; {backend} runs the model dir's own precision "
                               "(hadskip export --fp16 writes fp16 graphs)")
        be, info = find_opener(backend)(path, options)
        info.source = info.source or str(path)
        try:
            return cls(be, info, budget=budget)
        except Exception:
            close = getattr(be, "close", None)
            if close is not None:
                close()
            raise

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.info.num_layers

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    @property
    def max_seq_len(self) -> int:
        return self.info.max_seq_len

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def route(self) -> str:
        """How rows go through the layers: "gated", "static" or "early-exit" (hadskip.runtime.routes)."""
        return self.info.route

    @property
    def _where(self) -> str:
        return self.info.source or "the model"

    # -- the budget dial ----------------------------------------------------------------------------------
    def offset_for(self, budget: float | None) -> float:
        """The knob of a target average of `budget` layers (None: the default set at load): the gate offset of a
        gated model, the exit threshold of an early-exit one (both through the dial); a static model takes only
        its own layer count (0.0). DialError in one line otherwise."""
        if budget is None:
            return self.exit_threshold if self.route == "early-exit" else self.gate_offset
        if self.info.dial is None and self.info.dial_problem:
            raise DialError(self.info.dial_problem)
        return resolve_knob(self.route, self.info.dial, budget, self._where, self.num_layers, self.info.teacher_layers)

    def set_budget(self, budget: float | None) -> None:
        """Make `budget` (None: the trained rule, offset 0; for an early-exit model threshold 0, every layer)
        the default of `predict`."""
        knob = 0.0 if budget is None else self.offset_for(budget)
        if self.route == "early-exit":
            self.exit_threshold = knob
        else:
            self.gate_offset = knob
        self.budget = None if budget is None else float(budget)

    # -- running ------------------------------------------------------------------------------------------
    def run_batch(self, input_ids, attention_mask, token_type_ids=None, forced=None,
                  gate_offset: float | np.ndarray | None = None, max_layers=None,
                  exit_threshold: float | np.ndarray | None = None) -> BatchResult:
        """One right-padded batch: logits (B, C) and the layers each row ran (B, L). Gated models: `forced`
        (B, L) 0/1 sets the gates, else a gate opens where its margin logit_open - logit_closed > gate_offset
        (router.gate_open; None: the offset of the budget set at load, 0 without one). Early-exit models: a row
        stops at the first exit whose entropy < exit_threshold (hadskip.runtime.exits; None: the budget's set at
        load). Static models run every layer on every row. `max_layers`: a per-row hard cap. Options of another
        route are refused in one line."""
        route_kind = self.route
        if np.shape(input_ids)[0] == 0:  # an empty batch: nothing to run (a graph would fail on 0 rows)
            row_lengths(attention_mask)
            return BatchResult(np.zeros((0, len(self.labels)), dtype=np.float32),
                               np.zeros((0, self.num_layers), dtype=bool))
        if exit_threshold is not None and route_kind != "early-exit":
            raise HadSkipError(f"exit_threshold is for early-exit models; {self._where} is a {route_kind} model")
        if route_kind != "gated" and (forced is not None or gate_offset is not None):
            raise HadSkipError(f"{self._where} is a {route_kind} model without gates: forced gates and gate "
                               "offsets do not apply (use a budget)")
        if route_kind == "early-exit":
            threshold = self.exit_threshold if exit_threshold is None else exit_threshold
            return route_exits(self.backend, input_ids, attention_mask, token_type_ids, threshold, max_layers)
        if route_kind == "static":
            if max_layers is not None and (np.asarray(max_layers) < self.num_layers).any():
                raise HadSkipError(self._static_cap_message(max_layers))
            forced = np.ones((np.shape(input_ids)[0], self.num_layers), dtype=bool)
        offset = self.gate_offset if gate_offset is None else gate_offset
        return route(self.backend, input_ids, attention_mask, token_type_ids, forced, offset, max_layers)

    def _static_cap_message(self, max_layers) -> str:
        return (f"{self._where} is a static model that runs its {self.num_layers} layers for every input: "
                f"max_layers must be at least {self.num_layers}, got {np.min(max_layers)}")

    def check_max_layers(self, max_layers) -> int | None:
        """A hard cap on the layers any row runs: a whole number within 0..L (None: no cap), else HadSkipError.
        An early-exit model runs at least 1 layer; a static one all of its L."""
        if max_layers is None:
            return None
        low = {"early-exit": 1, "static": self.num_layers}.get(self.route, 0)
        if isinstance(max_layers, bool) or not isinstance(max_layers, (int, np.integer)) \
                or not 0 <= max_layers <= self.num_layers:
            raise HadSkipError(f"max_layers must be a whole number of layers within {low}..{self.num_layers}, "
                               f"got {max_layers!r}")
        if max_layers < low:
            raise HadSkipError(self._static_cap_message(max_layers) if self.route == "static" else
                               f"{self._where} is an early-exit model: a row runs at least 1 layer, so max_layers "
                               f"must be within 1..{self.num_layers}, got {max_layers}")
        return int(max_layers)

    def _knob(self, knob) -> dict:
        """run_batch's keyword for a knob from offset_for: gate_offset, exit_threshold, or none (static)."""
        return {"gated": {"gate_offset": knob}, "early-exit": {"exit_threshold": knob}}.get(self.route, {})

    def encode(self, inputs: Sequence[TextInput]) -> Encoded:
        return self.encoder.encode(inputs)

    def predict(self, inputs: Sequence[TextInput] | str, batch_size: int = 32,
                budget: float | Sequence[float | None] | None = None, allow_empty: bool = False,
                max_layers: int | Sequence[int | None] | None = None) -> Predictions:
        """Classify texts (or (text, text_pair) tuples). Inputs are sorted by token length into batches,
        so padding costs little, and the results come back in input order. `budget`: a target average of
        layers for this call through the budget dial, or one per input (None: the one set at load).
        An input with a text that has no tokens (empty, or only characters the tokenizer drops) is an
        EmptyTextError naming every such input, unless `allow_empty` (evaluation on a dataset as it is).
        `max_layers`: a hard cap, no row runs more layers (0..L; or one per input, None: no cap), next to the
        average `budget`."""
        if isinstance(inputs, str):
            inputs = [inputs]
        if batch_size < 1:
            raise HadSkipError(f"batch_size must be >= 1, got {batch_size}")
        per_row = isinstance(budget, (list, tuple, np.ndarray))
        if per_row:
            if len(budget) != len(inputs):
                raise HadSkipError(f"{len(budget)} budgets for {len(inputs)} inputs")
            offsets = np.array([self.offset_for(b) for b in budget], dtype=np.float64)  # (N,)
        offset = None if per_row else self.offset_for(budget)
        caps = None
        if isinstance(max_layers, (list, tuple, np.ndarray)):
            if len(max_layers) != len(inputs):
                raise HadSkipError(f"{len(max_layers)} max_layers for {len(inputs)} inputs")
            caps = np.array([self.num_layers if c is None else self.check_max_layers(c) for c in max_layers],
                            dtype=np.int64)  # (N,)
        elif max_layers is not None:
            caps = np.full(len(inputs), self.check_max_layers(max_layers), dtype=np.int64)
        enc = self.encode(list(inputs))
        if not allow_empty and enc.empty is not None and enc.empty.any():
            raise EmptyTextError(np.flatnonzero(enc.empty).tolist())
        n = len(enc.ids)
        lengths = enc.lengths
        probs = np.zeros((n, len(self.labels)), dtype=np.float32)
        logits = np.zeros((n, len(self.labels)), dtype=np.float32)
        gates = np.zeros((n, self.num_layers), dtype=bool)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            ids, mask, tt = self.encoder.pad_batch(enc, rows)
            res = self.run_batch(ids, mask, tt, max_layers=None if caps is None else caps[rows],
                                 **self._knob(offsets[rows] if per_row else offset))
            if res.logits.shape[1] != len(self.labels):
                raise HadSkipError(f"the head gives {res.logits.shape[1]} logits for {len(self.labels)} labels")
            probs[rows], gates[rows], logits[rows] = softmax(res.logits), res.gates, res.logits
        return Predictions(self.labels, probs, gates, lengths, enc.truncated, logits)

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Runtime(backend={self.backend.name!r}, layers={self.num_layers}, labels={self.labels})"


def check_embeddings(backend: Backend, info: ModelInfo, encoder: TextEncoder) -> None:
    """Cross-check a model dir's tokenizer and embeddings graph against the manifest, once at load: every id
    the tokenizer can give and the pad id inside backbone.vocab_size, and the embeddings graph run on a
    full-length row (max_seq_len tokens, the largest id, token type 1 where the model reads types) beside a
    padded one, which fails where the position, word or type table is too small. The run is on the CPU: the
    backend's own embeddings session when it is a CPU one, else a CPU session of the same graph (a GPU gather
    out of its table fails silently or corrupts the context). ManifestError naming the field, in one line."""
    manifest = info.manifest
    where = Path(info.source) / MANIFEST
    tok = encoder.tokenizer
    top = max(tok.get_vocab(with_added_tokens=True).values(), default=0)  # the largest id the tokenizer gives
    vocab = manifest.backbone.get("vocab_size")
    if vocab is not None and top >= vocab:
        raise ManifestError(f"{where}: {manifest.units['tokenizer']} gives token ids up to {top}, beyond "
                            f"backbone.vocab_size {vocab} (the tokenizer of another model?)")
    pad = encoder.pad_token_id
    if not 0 <= pad < (vocab if vocab is not None else top + 1):
        raise ManifestError(f"{where}: the pad id {pad} is outside the vocabulary of {vocab or top + 1} ids "
                            "(backbone.pad_token_id)")
    import onnxruntime as ort

    sessions = getattr(backend, "sessions", None)
    session = sessions.get(("embeddings", 0)) if isinstance(sessions, dict) else None
    if session is None or session.get_providers()[:1] != ["CPUExecutionProvider"]:
        from hadskip.runtime.backends.ort import open_session, session_options

        session = open_session(Path(info.source) / manifest.units["embeddings"], session_options(1, "disable"),
                               ["CPUExecutionProvider"])
    t = info.max_seq_len
    word = top if top != pad else max(top - 1, 0)
    ids = np.full((2, t), word, dtype=np.int64)
    mask = np.ones((2, t), dtype=np.int64)
    ids[1, 1:], mask[1, 1:] = pad, 0
    types = np.zeros((2, t), dtype=np.int64)
    types[0] = int(info.token_types)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # the failure is reported below, in one line
    try:
        out = session.run(None, {i.name: feed[i.name] for i in session.get_inputs() if i.name in feed}, quiet)[0]
    except Exception as exc:  # noqa: BLE001 - onnxruntime's error types are not importable stably
        text = " ".join(str(exc).split())
        found = re.search(r"Name:'([^']*)' Status Message: (.*)", text)
        why = f"{found.group(1)}: {found.group(2)}" if found else text
        raise ManifestError(f"{where}: the embeddings graph fails on max_seq_len {t} tokens of ids up to {word} "
                            f"(pad id {pad}, token type {int(info.token_types)}), so a table is too small for "
                            f"the manifest: {why[:200]}") from None
    if tuple(out.shape) != (2, t, manifest.backbone["hidden_size"]):
        raise ManifestError(f"{where}: the embeddings graph gives shape {tuple(out.shape)} for (2, {t}) ids; "
                            f"expected (2, {t}, backbone.hidden_size {manifest.backbone['hidden_size']})")
