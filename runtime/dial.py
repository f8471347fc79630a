"""The budget dial (torch-free): one trained model, many operating points, through an offset on the gate margin.

A gate opens iff logit_open - logit_closed > offset (hadskip.runtime.router.gate_open); a larger offset closes
more gates. `hadskip dial RUN` (hadskip/evaluation/dial.py) measures, on the dev split, which offset gives which average
number of layers and which dev metric, and stores the result as a `Dial`:

    RUN/dial.json           the Dial of the run (written by `hadskip dial`, checked against model.safetensors)
    MODEL/manifest.json     "dial": the same object, copied by `hadskip export` (null or absent: no dial)

    {"format": 1, "num_layers": L, "task", "split", "metric", "examples", "trained_budget", "model_sha256",
     "monotone": bool, "max_rise": float,
     "points": [{"target", "offset", "avg_layers", "value"}, ...],   # the requested targets, target ascending
     "curve":  [{"target", "offset", "avg_layers", "value"}, ...]}  # knots every 0.05 layers and the targets

A budget B (a target average of layers) maps to an offset by linear interpolation of offset over target along
`curve` (targets strictly increasing, offsets non-increasing), so a calibrated target gets exactly the offset
whose dev figures `points` reports. A budget outside the curve's targets (plus RANGE_SLACK) is refused in one
line naming the range.
Not included: a guarantee on other data than dev; the average layers on other inputs follows their margins.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hadskip.errors import HadSkipError
from hadskip.runtime.files import sha256_file

DIAL_FILE = "dial.json"
DIAL_FORMAT = 1
RANGE_SLACK = 0.01  # layers: a budget this close outside the calibrated range maps to the range's end
BUDGET_MARGIN = 0.25  # layers: an average further than this from its budget missed it (train, eval, bench say so)


def budget_gap(avg_layers: float, budget: float, margin: float = BUDGET_MARGIN) -> float | None:
    """avg_layers - budget when it is beyond `margin` (the budget was missed), else None: the one rule that
    `hadskip train`, `eval` and `bench` warn by."""
    gap = float(avg_layers) - float(budget)
    return gap if abs(gap) > margin else None


class DialError(HadSkipError):
    """A dial that cannot be read or used, or a budget it cannot serve; the message is one line."""


@dataclass
class DialPoint:
    offset: float  # the gate offset of this operating point
    avg_layers: float  # average layers per input on the calibration split at that offset
    value: float | None  # the task metric on the calibration split at that offset (None: not measured)
    target: float  # the average of layers this point was chosen for (avg_layers is what it gives on dev)


@dataclass
class Dial:
    """A calibrated offset -> average layers -> metric curve for one trained model (see the module docstring)."""

    num_layers: int
    points: list[DialPoint]
    curve: list[DialPoint]
    task: str = ""
    split: str = "dev"
    metric: str = ""
    examples: int = 0
    trained_budget: float | None = None
    model_sha256: str = ""  # sha256 of the run's model.safetensors it was calibrated on
    monotone: bool = True  # average layers never rose with the offset on the calibration split
    max_rise: float = 0.0  # the largest such rise, in layers (0 when monotone)
    format: int = DIAL_FORMAT
    extra: dict = field(default_factory=dict)  # free-form facts (seconds, paths swept, tolerance)

    @property
    def budget_range(self) -> tuple[float, float]:
        """(lowest, highest) budget the curve serves: its first and last target."""
        return self.curve[0].target, self.curve[-1].target

    def offset_for(self, budget: float, where: str = "the model") -> float:
        """The gate offset for a target average of `budget` layers (linear between knots); DialError if the
        budget is not a number or lies outside the calibrated range."""
        b = _budget_number(budget)
        lo, hi = self.budget_range
        if not lo - RANGE_SLACK <= b <= hi + RANGE_SLACK:
            raise DialError(f"budget {b:g} is outside the calibrated range {lo:.2f}..{hi:.2f} layers of {where} "
                            f"(calibrate a wider range with `hadskip dial RUN --targets ...` and export again)")
        x = np.array([p.target for p in self.curve], dtype=np.float64)
        y = np.array([p.offset for p in self.curve], dtype=np.float64)
        return float(np.interp(min(max(b, lo), hi), x, y))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d, where: str = "dial") -> Dial:
        """A Dial from its JSON object, every field checked; DialError naming `where` and the field."""
        if not isinstance(d, dict):
            raise DialError(f"{where} must be a JSON object, got {type(d).__name__}")
        fmt = d.get("format")
        if not _is_int(fmt) or fmt != DIAL_FORMAT:
            raise DialError(f"{where} has format {fmt!r}; this hadskip reads {DIAL_FORMAT} (run `hadskip dial` again)")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DialError(f"{where} has unknown fields {unknown}")
        n = d.get("num_layers")
        if not _is_int(n) or n < 1:
            raise DialError(f"{where}.num_layers must be a positive integer, got {n!r}")
        for key, test, what in (("task", _is_str, "a string"), ("split", _is_str, "a string"),
                                ("metric", _is_str, "a string"), ("model_sha256", _is_str, "a string"),
                                ("examples", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
                                ("trained_budget", lambda v: v is None or _is_finite(v), "a number or null"),
                                ("monotone", lambda v: isinstance(v, bool), "true or false"),
                                ("max_rise", lambda v: _is_finite(v) and v >= 0, "a non-negative number"),
                                ("extra", lambda v: isinstance(v, dict), "an object")):
            if key in d and not test(d[key]):
                raise DialError(f"{where}.{key} must be {what}, got {_show(d[key])}")
        points = _points(d.get("points"), f"{where}.points", n)
        curve = _points(d.get("curve"), f"{where}.curve", n)
        if not curve:
            raise DialError(f"{where}.curve is empty")
        for a, b in zip(curve, curve[1:], strict=False):
            if not (b.target > a.target and b.offset <= a.offset):
                raise DialError(f"{where}.curve must have targets strictly increasing and offsets not increasing, "
                                f"got (target {a.target}, offset {a.offset}) then ({b.target}, {b.offset})")
        rest = {k: d[k] for k in d if k not in ("points", "curve")}
        return cls(points=points, curve=curve, **rest)


def _points(items, where: str, num_layers: int) -> list[DialPoint]:
    if not isinstance(items, list):
        raise DialError(f"{where} must be a list, got {_show(items)}")
    out = []
    for j, p in enumerate(items):
        keys = {"target", "offset", "avg_layers", "value"}
        if not isinstance(p, dict) or set(p) != keys:
            raise DialError(f"{where}[{j}] must be an object with exactly {sorted(keys)}, got {_show(p)}")
        for k in keys:
            if not (_is_finite(p[k]) or (k == "value" and p[k] is None)):
                raise DialError(f"{where}[{j}].{k} must be a finite number, got {_show(p[k])}")
        for k in ("avg_layers", "target"):
            if not 0 <= p[k] <= num_layers:
                raise DialError(f"{where}[{j}].{k} {p[k]} is outside 0..{num_layers}")
        out.append(DialPoint(offset=float(p["offset"]), avg_layers=float(p["avg_layers"]),
                             value=None if p["value"] is None else float(p["value"]), target=float(p["target"])))
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str(v) -> bool:
    return isinstance(v, str)


def _is_finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v) -> str:
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _budget_number(budget) -> float:
    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise DialError(f"budget must be a number of layers, got {_show(budget)}") from None
    if isinstance(budget, bool) or not math.isfinite(b):
        raise DialError(f"budget must be a finite number of layers, got {_show(budget)}")
    return b


def no_dial(where: str) -> DialError:
    """The error for a budget asked of a model without a dial: says how to make one."""
    return DialError(f"{where} has no budget dial: run `hadskip dial RUN` on its run dir"
                     " (and `hadskip export` again for a model dir)")


def read_dial(run_dir: str | Path, model_file: str | Path | None = None) -> Dial | None:
    """RUN/dial.json as a Dial, or None when there is none. When `model_file` (the run's model.safetensors) is
    given, a dial calibrated on other weights (the run was trained again) is refused."""
    f = Path(run_dir) / DIAL_FILE
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DialError(f"{f} is not valid JSON ({exc}); run `hadskip dial` again") from exc
    dial = Dial.from_dict(data, str(f))
    if model_file is not None and Path(model_file).is_file() and dial.model_sha256 != sha256_file(model_file):
        raise DialError(f"{f} was calibrated on other weights than {model_file} (trained again?); "
                        "run `hadskip dial` again")
    return dial


def write_dial(run_dir: str | Path, dial: Dial) -> Path:
    """Write RUN/dial.json (through a temp file and a rename)."""
    f = Path(run_dir) / DIAL_FILE
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dial.to_dict(), indent=2))
    tmp.replace(f)
    return f


def static_budget(budget, num_layers: int, where: str, teacher_layers: int | None = None) -> float:
    """A static model (route "static": every row runs its num_layers layers) has no knob: a budget of its own
    layer count (within RANGE_SLACK) gives 0.0, any other one is a DialError."""
    b = _budget_number(budget)
    if abs(b - num_layers) <= RANGE_SLACK:
        return 0.0
    of = f", the first {num_layers} of its teacher's {teacher_layers}" if teacher_layers else ""
    raise DialError(f"{where} is a static model that runs {num_layers} layers for every input{of}: it takes no "
                    f"budget but {num_layers}, got {b:g}")


def resolve_knob(route: str, dial: Dial | None, budget, where: str, num_layers: int,
                 teacher_layers: int | None = None) -> float:
    """The knob for `budget` (None: 0.0) on a model of this route (hadskip.runtime.routes): the gate
    offset (gated) or the exit threshold (early-exit) through the dial; static models take only their own K."""
    if route == "static" and budget is not None:
        return static_budget(budget, num_layers, where, teacher_layers)
    if route == "early-exit" and budget is not None and dial is None:
        _budget_number(budget)
        raise DialError(f"{where} has no exit dial: export the early-exit run again (`hadskip export` calibrates "
                        "it on dev)")
    return resolve_offset(dial, budget, where)


def resolve_offset(dial: Dial | None, budget, where: str) -> float:
    """The gate offset for `budget` (None: offset 0, the trained rule) from `dial`; DialError when there is no
    dial or the budget is outside its range."""
    if budget is None:
        return 0.0
    _budget_number(budget)
    if dial is None:
        raise no_dial(where)
    return dial.offset_for(budget, where)
