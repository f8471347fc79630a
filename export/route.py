"""Which route a run dir ships as, and what that changes in its export (hadskip.runtime.manifest "route").

    a gated run (hadskip train, its stages)  -> gates/NN.onnx before every layer; RUN/dial.json copied if any
    a budgeted-exit run (K layers)           -> route "static": no gate graphs, every row runs the K layers;
                                                no dial (a budget other than K is refused at run time)
    an early-exit run (hadskip compare)      -> route "early-exit": no gate graphs, exit heads as exits/NN.onnx,
                                                and the exit dial calibrated here on the run's dev split
                                                (hadskip.evaluation.exit_dial): budget -> entropy threshold

A static model has no gates rather than gates fixed open: the runtime never runs a graph it does not need, the
manifest cannot claim an input-dependent route the model does not have, and a gate offset has nothing to turn.
--fuse-gates and --quantize (whose calibration routes through the gates) are refused for the two new routes.
A gated run with exit heads (--exit-heads, the skip + exit route) is refused: its heads have no route here yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hadskip.export.spec import ExportError
from hadskip.runtime.routes import route_of_run


@dataclass
class RoutePlan:
    kind: str  # "gated" | "static" | "early-exit"
    manifest: dict | None  # the manifest's "route" (None: gated, as model dirs always were)
    dial: object | None  # hadskip.runtime.dial.Dial to store in the manifest, or None
    exits: object | None  # the exit heads to export (torch modules, exit i after layer i), or None
    budget: float | None  # the manifest's budget
    trained_avg_layers: dict | None = None  # a static model's {"dev", "test"}: its K layers


def plan_route(run_dir: Path, model, tokenizer, info, *, fuse_gates: bool, quantize: str | None,
               progress=None) -> RoutePlan:
    """The RoutePlan of the run at `run_dir` (model, tokenizer, info from load_run). `progress(name)` is called
    before the exit dial's dev pass."""
    from hadskip.runtime.dial import read_dial

    kind = route_of_run(info.kind)
    L = model.num_layers
    if getattr(model, "exits", None) is not None:  # never export the gates alone, dropping the heads silently
        raise ExportError(f"{run_dir} has exit heads (hadskip train --exit-heads): the exit heads of a gated run do "
                          "not export yet; what exports: a run trained without --exit-heads, or compare's "
                          "budgeted-exit and early-exit runs")
    if kind == "gated":
        dial = read_dial(run_dir, run_dir / "model.safetensors")  # refused if calibrated on other weights
        if dial is not None and dial.num_layers != L:
            raise ExportError(f"{run_dir / 'dial.json'} is for {dial.num_layers} layers, the model has {L}")
        return RoutePlan("gated", None, dial, None, info.budget)
    for flag, on in (("--fuse-gates", fuse_gates), ("--quantize", quantize)):
        if on:
            raise ExportError(f"{flag} needs a gated model; {run_dir} is a {info.kind} run (route {kind}, no gates)")
    if kind == "static":
        mapping = (info.extra or {}).get("layer_map")
        teacher = max(mapping) if isinstance(mapping, list) and mapping else None
        return RoutePlan("static", {"kind": "static", "run_kind": info.kind, "teacher_layers": teacher}, None, None,
                         float(L), {"dev": float(L), "test": float(L)})
    from hadskip.evaluation.baselines.exits import load_exit_model
    from hadskip.evaluation.exit_dial import calibrate_exits

    multi, _, _ = load_exit_model(run_dir, device="cpu")
    if progress is not None:
        progress("exit dial (dev)")
    dial = calibrate_exits(multi, tokenizer, info, run_dir)
    return RoutePlan("early-exit", {"kind": "early-exit", "rule": "entropy", "run_kind": info.kind,
                                    "teacher_layers": L}, dial, multi.exits, None)
