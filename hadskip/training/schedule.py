"""Schedule math of HadSkip's stage III: the homotopic budgets k = L, L-1, ..., K and the epochs of each phase
(every variant trains as long as the full homotopy), and the stage III epochs a finished run trained."""

from __future__ import annotations

import math
from dataclasses import fields

from hadskip.errors import HadSkipError
from hadskip.modeling.checkpoint import RunInfo
from hadskip.runtime.dial import BUDGET_MARGIN, budget_gap
from hadskip.training.config import HadSkipConfig


def homotopy_schedule(num_layers: int, budget: float, homotopy: bool = True,
                      start: float | None = None) -> list[float]:
    """k = start, start-1, ..., down to the budget (start defaults to L; fractional budgets end on themselves):
    L=6, K=2.5 -> 6,5,4,3,2.5; start=4, K=2 -> 4,3,2."""
    if budget > num_layers:
        raise HadSkipError(f"budget {budget} is more than the backbone's {num_layers} layers")
    top = float(num_layers if start is None else start)
    if not budget <= top <= num_layers:
        raise HadSkipError(f"the homotopy must start between the budget {budget:g} and {num_layers} layers, "
                           f"got {top:g}")
    if not homotopy:
        return [float(budget)]
    # rounded: 5.9 - 3 is 2.9000000000000004, which would make a phase next to the final k = 2.9
    ks = [round(top - j, 9) for j in range(int(math.floor(top - budget + 1e-9)) + 1)]
    ks = [k for k in ks if k > budget + 1e-9]
    return [*ks, float(budget)]


def phase_epochs(num_layers: int, cfg: HadSkipConfig) -> list[float]:
    """Epochs of each phase of stage III. The total is always that of the full homotopy L, ..., K
    (phase_epochs per phase before the last, final_phase_epochs for k = K), so the ablations (no homotopy, a
    later start) train exactly as long: the earlier phases they do run get phase_epochs each, the last phase
    the rest."""
    full = homotopy_schedule(num_layers, cfg.budget, True)
    total = cfg.phase_epochs * (len(full) - 1) + cfg.final_phase_epochs
    sched = homotopy_schedule(num_layers, cfg.budget, cfg.homotopy, cfg.homotopy_start)
    early = [cfg.phase_epochs] * (len(sched) - 1)
    return [*early, total - sum(early)]


def stage3_epochs(info: RunInfo, num_layers: int) -> float:
    """Total stage III epochs a finished HadSkip run trained: what it recorded (run.json extra.phase_epochs),
    else what its recorded config gives (runs written before phase_epochs was recorded)."""
    if info.extra.get("phase_epochs"):
        return float(sum(info.extra["phase_epochs"]))
    known = {f.name for f in fields(HadSkipConfig)}
    config = {k: v for k, v in info.extra.get("config", {}).items() if k in known and k != "weights"}
    cfg = HadSkipConfig(**{**config, "budget": float(info.budget)})
    if not cfg.homotopy:  # such runs trained final_phase_epochs only at K
        return float(cfg.final_phase_epochs)
    return float(sum(phase_epochs(num_layers, cfg)))


def budget_miss(budget: float, dev_avg_layers: float, final_phase_epochs: float,
                margin: float = BUDGET_MARGIN) -> dict | None:
    """None when the dev average of layers is within `margin` of the budget; else what `hadskip train` reports
    (a warning line, "budget_missed" in its JSON and in run.json's metrics), with the next step: a longer final
    phase (more --final-phase-epochs) or `hadskip dial`, which calibrates the budget exactly on dev."""
    gap = budget_gap(dev_avg_layers, budget, margin)
    if gap is None:
        return None
    more = gap > 0
    hint = (f"train the last phase longer (--final-phase-epochs above {final_phase_epochs:g}) or run "
            f"`hadskip dial` on the run and serve with --budget {budget:g}") if more else \
        f"run `hadskip dial` on the run and serve with --budget {budget:g} to use the layers the budget allows"
    message = (f"the dev average is {dev_avg_layers:.2f} layers, {abs(gap):.2f} {'over' if more else 'under'} "
               f"the budget {budget:g} (margin {margin:g}); {hint}")
    return {"budget": float(budget), "dev_avg_layers": round(float(dev_avg_layers), 4), "gap": round(gap, 4),
            "margin": margin, "message": message}
