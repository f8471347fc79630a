"""Gates fused into the graph before them: a routed row costs one session call per layer it runs, none per gate.

    embeddings.onnx   input_ids, attention_mask, token_type_ids -> hidden, gate_logits_next (B, L, 2)
    layers/NN.onnx    hidden, attention_mask -> hidden_out, gate_logits_next (B, L-1-NN, 2)   (NN < L-1)

gate_logits_next[:, j] are the logits of gate NN+1+j (of gate j after the embeddings) on this graph's output.
Every later gate, not only the next: when layer i is skipped the row's hidden state does not change, so the
logits of gate i+1 on it were already computed by the graph that produced it (hadskip.runtime.backends.ort_fused
keeps them per row). A skipped layer therefore needs no gate call at all, and the separate gate graphs are only
kept for the backends that do not read the fused output (ort-cuda, trt, and hadskip versions before this one,
which read output 0 and ignore the rest). The extra work per call is a masked mean and a d -> d_g -> 2 FFN per
later gate: well under 1% of a layer.

The composition is done on the ONNX graphs the export already validated (after fusion and int8 quantization),
so the gates stay exactly the fp32 gate graphs; each composed graph is checked against its parts in
onnxruntime. Not included: TensorRT engines of the composed graphs (they are built from the separate ones).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hadskip.export.spec import ExportError, ValidationError

OUTPUT = "gate_logits_next"
ATOL = 1e-5  # the composed graph runs the same nodes as its parts; only kernel choices may differ


def compose(base_path: Path, gate_paths: list[Path], out_path: Path, hidden_name: str) -> None:
    """Write `base` (embeddings or a layer graph) + the gate graphs fed by its output `hidden_name`, with one
    more output OUTPUT (B, len(gate_paths), 2). The gates' own attention_mask input becomes the base's (added
    as a graph input when the base does not use the mask)."""
    import onnx
    from onnx import TensorProto, helper

    base = onnx.load(str(base_path))
    g = base.graph
    if OUTPUT in {o.name for o in g.output}:
        raise ExportError(f"{base_path.name} already has a {OUTPUT} output")
    inputs = {i.name for i in g.input}
    names = []
    for j, path in enumerate(gate_paths):
        gate = onnx.load(str(path))
        gg = gate.graph
        prefix = f"gate_next_{j}/"
        rename = {"hidden": hidden_name, "attention_mask": "attention_mask"}
        if "attention_mask" not in inputs and any(i.name == "attention_mask" for i in gg.input):
            g.input.append(next(i for i in gg.input if i.name == "attention_mask"))
            inputs.add("attention_mask")

        def name(n: str, rename=rename, prefix=prefix) -> str:
            return rename.get(n, prefix + n) if n else n

        for init in gg.initializer:
            init.name = name(init.name)
            g.initializer.append(init)
        for vi in gg.value_info:
            vi.name = name(vi.name)
            g.value_info.append(vi)
        for node in gg.node:
            node.name = prefix + node.name
            node.input[:] = [name(x) for x in node.input]
            node.output[:] = [name(x) for x in node.output]
            g.node.append(node)
        out = name(gg.output[0].name)
        unsq = f"{prefix}unsqueezed"
        g.node.append(helper.make_node("Unsqueeze", [out, "gate_next/axis1"], [unsq], name=f"{prefix}Unsqueeze"))
        names.append(unsq)
        _merge_opsets(base, gate)
    g.initializer.append(helper.make_tensor("gate_next/axis1", TensorProto.INT64, [1], [1]))
    g.node.append(helper.make_node("Concat", names, [OUTPUT], name="gate_next/Concat", axis=1))
    g.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", len(names), 2]))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(base, str(out_path))


def _merge_opsets(base, other) -> None:
    have = {o.domain: o for o in base.opset_import}
    for o in other.opset_import:
        if o.domain not in have:
            base.opset_import.append(o)
        elif have[o.domain].version != o.version:
            raise ExportError(f"cannot fuse graphs of opset {have[o.domain].version} and {o.version} "
                              f"(domain {o.domain or 'ai.onnx'})")
    base.ir_version = max(base.ir_version, other.ir_version)


def fuse_model_dir(model_dir: Path, units: dict, hidden_size: int, vocab_size: int, cases, seed: int = 0) -> dict:
    """Replace embeddings.onnx and layers/NN.onnx (NN < L-1) of `model_dir` (being built) by their fused
    forms; gates/ stays. Returns {"form": "fused", "output": OUTPUT, "max_abs_diff": {unit: diff}}."""
    n = len(units["layers"])
    gates = [model_dir / p for p in units["gates"]]
    plan = [("embeddings", units["embeddings"], "hidden", gates)]
    plan += [(f"layer_{i:02d}", units["layers"][i], "hidden_out", gates[i + 1:]) for i in range(n - 1)]
    diffs = {}
    for name, rel, hidden_name, later in plan:
        src = model_dir / rel
        fused = src.with_suffix(".fused-gates.onnx")
        compose(src, later, fused, hidden_name)
        diffs[name] = check(src, later, fused, name, hidden_size, vocab_size, cases, seed)
        fused.replace(src)
    return {"form": "fused", "output": OUTPUT, "max_abs_diff": diffs}


def check(base: Path, gates: list[Path], fused: Path, name: str, hidden_size: int, vocab_size: int, cases,
          seed: int = 0) -> float:
    """Max abs diff of the fused graph's outputs vs its parts run one after another (raises past ATOL)."""
    from hadskip.export.spec import ort_session

    rng = np.random.default_rng(seed)
    parts = [ort_session(base)] + [ort_session(p) for p in gates]
    whole = ort_session(fused)
    worst = 0.0
    for batch, seq in cases:
        lengths = rng.integers(1, seq + 1, batch)
        lengths[0] = seq
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
        if name == "embeddings":
            feed = {"input_ids": rng.integers(5, vocab_size, (batch, seq)).astype(np.int64) * mask,
                    "attention_mask": mask, "token_type_ids": np.zeros((batch, seq), np.int64)}
        else:
            feed = {"hidden": rng.standard_normal((batch, seq, hidden_size)).astype(np.float32),
                    "attention_mask": mask}
        h = _run(parts[0], feed)[0]
        ref = [_run(s, {"hidden": h, "attention_mask": mask})[0] for s in parts[1:]]  # each (B, 2)
        got_h, got = _run(whole, feed)
        if got.shape != (batch, len(gates), 2):
            raise ExportError(f"fused {name}: {OUTPUT} has shape {got.shape}, expected {(batch, len(gates), 2)}")
        diff = float(np.abs(got_h - h).max())
        if ref:
            diff = max(diff, float(np.abs(got - np.stack(ref, axis=1)).max()))
        if not np.isfinite(diff) or diff > ATOL:
            raise ValidationError(f"{name} (gates fused)", diff if np.isfinite(diff) else float("inf"), ATOL,
                                  (batch, seq))
        worst = max(worst, diff)
    return worst


def _run(session, feed: dict) -> list:
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feed.items() if k in wanted})
