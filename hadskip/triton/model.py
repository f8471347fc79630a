"""The Triton Python-backend model: `hadskip triton-repo` copies this file to REPO/NAME/1/model.py.

It runs inside Triton's Python stub (one stub process per model instance) and imports only numpy,
`hadskip.runtime` (torch-free) and `triton_python_backend_utils` (provided by the stub), so it needs an
environment with `pip install hadskip` (plus onnxruntime-gpu or tensorrt for the GPU backends).

One `execute` call gets every request the dynamic batcher gathered. Their rows go through ONE
`Runtime.predict` call (sorted by length, each row routed through its own layers), and every request gets its
own response:

    inputs   TEXT       BYTES (B, 1)  UTF-8 text
             TEXT_PAIR  BYTES (B, 1)  optional: the second text of each row (pair tasks)
    outputs  LABEL_ID   INT64 (B, 1)  argmax of PROBS
             PROBS      FP32  (B, C)  softmax over the labels (config.pbtxt names labels.txt for classification)
             LAYERS     INT8  (B, L)  1 where the layer ran for that row, else 0

Bad rows (empty or whitespace-only text, text that is not UTF-8, a text over the byte limit) fail their own
request with INVALID_ARG; the other requests of the same execution are answered. Wrong dtypes, wrong shapes and
batches over max_batch_size never reach this code: Triton refuses them against config.pbtxt. An exception from
the runtime fails the requests of that execution (INTERNAL) and the instance keeps serving.

Parameters (config.pbtxt): HADSKIP_MODEL_DIR (relative to this version's folder, or absolute), HADSKIP_BACKEND
(ort-cpu | ort-cuda | trt), HADSKIP_THREADS (ORT intra-op threads; empty: ORT's default), HADSKIP_MAX_TEXT_BYTES.
The GPU of a KIND_GPU instance comes from Triton (`model_instance_device_id`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from hadskip.errors import HadSkipError
from hadskip.runtime import Runtime
from hadskip.runtime.text import EmptyTextError


class InputError(ValueError):
    """A request whose rows cannot be classified; its message goes back to the client."""


def _error(message: str, code: str) -> pb_utils.InferenceResponse:
    codes = getattr(pb_utils.TritonError, code, None)  # error codes exist from Triton 23.10 on
    err = pb_utils.TritonError(message) if codes is None else pb_utils.TritonError(message, codes)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


def _texts(request, name: str, max_bytes: int) -> list[str] | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy()  # (B, 1) object array of bytes
    out = []
    for n, raw in enumerate(values.reshape(-1)):
        raw = raw if isinstance(raw, bytes) else bytes(raw)
        if len(raw) > max_bytes:
            raise InputError(f"{name}[{n}] has {len(raw)} bytes; the limit is {max_bytes}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{name}[{n}] is not valid UTF-8 (byte {exc.start})") from None
        if not text.strip():
            raise InputError(f"{name}[{n}] is empty")
        out.append(text)
    return out


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        model_dir = Path(params["HADSKIP_MODEL_DIR"])
        if not model_dir.is_absolute():
            model_dir = Path(args["model_repository"]) / str(args["model_version"]) / model_dir
        backend = params.get("HADSKIP_BACKEND", "ort-cpu")
        threads = int(params["HADSKIP_THREADS"]) if params.get("HADSKIP_THREADS") else None
        self.max_batch = max(1, int(config.get("max_batch_size", 0)))
        self.max_text_bytes = int(params.get("HADSKIP_MAX_TEXT_BYTES") or 1 << 20)
        options: dict = {"threads": threads}
        if backend in ("ort-cuda", "trt"):
            options.update(device_id=int(args.get("model_instance_device_id") or 0), max_batch=self.max_batch)
        # verify=True: every graph's sha256 is checked against the manifest before the instance is ready
        self.runtime = Runtime.load(model_dir, backend=backend, verify=True, **options)

    def _rows(self, request) -> tuple[list, list]:
        """(inputs, budgets) of one request; a budget of None runs the model's default operating point."""
        texts = _texts(request, "TEXT", self.max_text_bytes)
        if texts is None:
            raise InputError("the request lacks TEXT")
        pairs = _texts(request, "TEXT_PAIR", self.max_text_bytes)
        budgets = self._budgets(request, len(texts))
        if pairs is None:
            return texts, budgets
        if len(pairs) != len(texts):
            raise InputError(f"TEXT has {len(texts)} rows and TEXT_PAIR {len(pairs)}")
        return list(zip(texts, pairs, strict=True)), budgets

    def _budgets(self, request, rows: int) -> list:
        """The optional BUDGET input (FP32 [B, 1]): a target average of layers per row through the model's
        budget dial (hadskip.runtime.dial), checked here so a bad one fails only its own request."""
        tensor = pb_utils.get_input_tensor_by_name(request, "BUDGET")
        if tensor is None:
            return [None] * rows
        values = np.asarray(tensor.as_numpy(), dtype=np.float64).reshape(-1)
        if values.size != rows:
            raise InputError(f"BUDGET has {values.size} rows and TEXT {rows}")
        out = []
        for n, v in enumerate(values):
            try:
                self.runtime.offset_for(float(v))  # one line for NaN, out of range, or a model without a dial
            except HadSkipError as exc:
                raise InputError(f"BUDGET[{n}]: {exc}") from None
            out.append(float(v))
        return out

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        rows: list = []
        budgets: list = []  # per row: a dial budget, or None (the model's default)
        spans: list[tuple[int, int, int]] = []  # (request index, first row, row count)
        for n, request in enumerate(requests):
            try:
                items, row_budgets = self._rows(request)
            except InputError as exc:
                responses[n] = _error(str(exc), "INVALID_ARG")
                continue
            spans.append((n, len(rows), len(items)))
            rows.extend(items)
            budgets.extend(row_budgets)
        if not spans:
            return responses
        try:
            per_row = budgets if any(b is not None for b in budgets) else None
            preds = self.runtime.predict(rows, batch_size=self.max_batch, budget=per_row)
        except EmptyTextError as exc:  # a text with no tokens fails its own request; the others run again
            bad = set(exc.indices)
            for n, start, count in spans:
                hit = [i - start for i in range(start, start + count) if i in bad]
                if hit:
                    responses[n] = _error(f"TEXT[{hit[0]}] is empty: no tokens after the tokenizer's "
                                          "normalisation", "INVALID_ARG")
            keep = [n for n, r in enumerate(responses) if r is None]
            for n, answer in zip(keep, self.execute([requests[n] for n in keep]) if keep else [], strict=True):
                responses[n] = answer
            return responses
        except Exception as exc:  # noqa: BLE001 - any runtime failure fails these requests, not the instance
            message = f"inference failed: {type(exc).__name__}: {str(exc)[:200]}"
            for n, _, _ in spans:
                responses[n] = _error(message, "INTERNAL")
            return responses
        probs = preds.probabilities.astype(np.float32, copy=False)  # (N, C)
        label_ids = preds.label_ids.astype(np.int64).reshape(-1, 1)  # (N, 1)
        layers = preds.gates.astype(np.int8)  # (N, L)
        for n, start, count in spans:
            rows_of = slice(start, start + count)
            responses[n] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(values[rows_of]))
                for name, values in (("LABEL_ID", label_ids), ("PROBS", probs), ("LAYERS", layers))
            ])
        return responses

    def finalize(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()
