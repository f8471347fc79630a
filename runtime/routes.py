"""The routes a model dir can take through its layers (manifest "route"; docs/architecture.md, model-dir contract):

    gated        a gate before every layer decides per row (units["gates"]: L graphs); the paper's method
    static       every row runs all L layers: a budgeted-exit run (the teacher's first L of teacher_layers)
    early-exit   an exit head after each layer but the last (units["exits"]: L-1 graphs); a row stops at the first
                 whose entropy is below the threshold (hadskip.runtime.exits), the dial maps budgets to thresholds

which run kinds ship as which route, and the units and fields each needs (checked by runtime/manifest.py).
"""

from __future__ import annotations

import json

ROUTES = ("gated", "static", "early-exit")
EXIT_RULES = ("entropy",)
RUN_KIND_ROUTES = {"budgeted-exit": "static", "early-exit": "early-exit"}  # other run kinds are gated


def route_of_run(kind: str) -> str:
    """The route a run dir of this kind (hadskip.modeling.checkpoint RunInfo.kind) ships and runs as."""
    return RUN_KIND_ROUTES.get(kind, "gated")


def route_problem(route: dict | None, num_layers: int, units: dict, has_dial: bool) -> str | None:
    """Why a manifest's route does not fit its units (a message tail after the manifest's path), or None."""
    L, kind = num_layers, (route or {}).get("kind", "gated")
    if kind not in ROUTES:
        return f": route.kind must be one of {', '.join(ROUTES)}, got {json.dumps(kind)}"
    teacher = (route or {}).get("teacher_layers")
    if teacher is not None and (not isinstance(teacher, int) or isinstance(teacher, bool) or teacher < L):
        return f": route.teacher_layers must be a whole number >= num_layers {L}, got {json.dumps(teacher)}"
    if kind == "early-exit" and route.get("rule") not in EXIT_RULES:
        return f": route.rule must be one of {', '.join(EXIT_RULES)}, got {json.dumps(route.get('rule'))}"
    layers, gates, exits = len(units["layers"]), len(units["gates"]), len(units.get("exits") or [])
    if kind == "gated" and not exits and (layers != L or gates != L):
        return f" lists {layers} layers and {gates} gates for a {L}-layer model"
    want_gates, want_exits = (L, 0) if kind == "gated" else (0, L - 1 if kind == "early-exit" else 0)
    if layers != L or gates != want_gates or exits != want_exits:
        return (f" lists {layers} layers, {gates} gates and {exits} exits for a {L}-layer {kind} model (it needs "
                f"{L}, {want_gates} and {want_exits})")
    if kind == "static" and has_dial:
        return ": a static model runs all its layers and has no dial, but dial is set"
    return None
