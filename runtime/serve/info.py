"""What GET /info answers: the model, the limits, the budgets (trained, served), the dial, the manifest facts;
TEI's field names with --api tei. Every non-finite number becomes null and no absolute path leaves the server."""

from __future__ import annotations

import math

from hadskip.runtime.serve.request import scrub_paths


def hadskip_version() -> str:
    from hadskip import __version__

    return __version__


def json_safe(x):
    """`x` with every non-finite float as None (JSON has no NaN or inf) and every string's absolute paths cut
    to their last part (a backbone loaded from a local folder is named by its path)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, str):
        return scrub_paths(x)
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def served_avg_layers(state) -> float | None:
    """The layers the rows answered so far ran on average (None before the first)."""
    batcher = getattr(state, "batcher", None)
    rows = getattr(batcher, "rows_done", 0)
    return round(batcher.layers_done / rows, 4) if rows else None


def tei_info_body(state) -> dict:
    """text-embeddings-inference's /info fields (router/src/lib.rs Info; docs/openapi.json) as far as they
    apply, ours under "hadskip"."""
    rt, cfg = state.runtime, state.config
    ours = info_body(state)
    labels = list(rt.labels)
    return {"model_id": state.model_name, "model_sha": None, "model_dtype": ours.get("precision") or "float32",
            "served_model_name": state.model_name,
            "model_type": {"classifier": {"id2label": {str(n): x for n, x in enumerate(labels)},
                                          "label2id": {x: n for n, x in enumerate(labels)}}},
            "max_concurrent_requests": cfg.max_queue, "max_input_length": int(rt.max_seq_len),
            "max_batch_tokens": cfg.max_batch * int(rt.max_seq_len), "max_batch_requests": cfg.max_batch,
            "max_client_batch_size": cfg.max_inputs, "auto_truncate": False, "tokenization_workers": 1,
            "version": hadskip_version(), "sha": None, "docker_label": None, "hadskip": ours}


def latency_body(batcher) -> dict:
    """--latency-target-ms: the target, the floor, the budgets it steps to, the budget now, the measured costs."""
    costs = batcher.costs.costs()
    return {**batcher.policy.describe(), "budget_now": batcher.budget_now,
            "measured_ms": None if costs is None else {"call": costs.call_s * 1e3, "row": costs.row_s * 1e3,
                                                       "layer_row": costs.layer_row_s * 1e3}}


def info_body(state) -> dict:
    rt, cfg = state.runtime, state.config
    info = getattr(rt, "info", None)
    manifest = getattr(info, "manifest", None)
    out = {"model": state.model_name, "backend": rt.backend_name, "labels": list(rt.labels),
           "num_layers": int(rt.num_layers), "max_seq_len": int(rt.max_seq_len),
           "budget": getattr(info, "budget", None), "limits": cfg.limits(), "auth": cfg.api_key is not None,
           "version": hadskip_version(), "serving_budget": getattr(rt, "budget", None),
           "trained_avg_layers": getattr(info, "trained_avg_layers", None),
           "served_avg_layers": served_avg_layers(state)}
    policy = getattr(getattr(state, "batcher", None), "policy", None)
    out["latency"] = None if policy is None else latency_body(state.batcher)
    out["route"] = {"kind": getattr(info, "route", "gated"), "layers": int(rt.num_layers),
                    "teacher_layers": getattr(info, "teacher_layers", None)}  # static / early-exit: docs/guide.md
    dial = getattr(info, "dial", None)
    if dial is not None:
        out["dial"] = {"range": list(dial.budget_range), "metric": dial.metric, "split": dial.split,
                       "points": [{"budget": p.target, "avg_layers": p.avg_layers, "value": p.value}
                                  for p in dial.points]}
    if manifest is not None:
        bb = manifest.backbone
        out.update(backbone={k: bb.get(k) for k in ("name", "model_type", "hidden_size", "num_heads", "vocab_size")},
                   task=manifest.task.get("name"), precision=manifest.precision, engine=manifest.engine,
                   opset=manifest.opset, schema_version=manifest.schema_version, created=manifest.created,
                   optimization=manifest.optimization.get("layers") if isinstance(manifest.optimization, dict)
                   else None)
    return out
