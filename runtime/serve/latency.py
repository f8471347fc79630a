"""`serve-local --latency-target-ms T`: when the queue would break T, queued rows run at a lower budget through
the model's dial (never below --min-budget) instead of waiting or getting 429. Pure: no web framework, no clock.

    CostModel    the batcher's moving estimate of a runtime call's seconds: call + rows * (row + layers * layer),
                 fitted to the calls it made (exponentially weighted least squares, coefficients >= 0)
    Load         what the batcher sees when it takes a batch: its rows, the rows still queued behind it, how long
                 the oldest and the newest of them have waited
    choose_budget(load, costs, target_s, budgets, floor, requested) -> the budget to run this batch at
    LatencyPolicy  the settings checked against the model's dial: the target, the floor, the budgets to step down

The rule: a batch run at budget b finishes its own rows at `oldest wait + S(batch, b)` and, if every later batch
also runs at b, the last queued row at `newest wait + S(batch, b) + S(the queue, b)`, with S from the cost
model and b layers a row (what the dial's calibration aims at). The answer is the requested budget when both fit
in T, else the highest dial budget below it that fits, else the floor. Each batch is decided again when it is
taken, so the budget follows the load both ways. More load never gives a higher budget, the answer is never
above the requested budget, and never below the floor (unless the request itself asked for less).
Not included: a guarantee. The estimate covers queueing and inference, not HTTP; a load the floor cannot carry
still queues (and --max-queue still answers 429).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from hadskip.errors import HadSkipError
from hadskip.runtime.dial import Dial, DialError


@dataclass(frozen=True)
class Costs:
    """Seconds of one runtime call: call_s + rows * (row_s + layers_per_row * layer_row_s)."""

    call_s: float  # per call (session launches, padding, the host round trips)
    row_s: float  # per row, outside the layers (tokens, embeddings, gates, head)
    layer_row_s: float  # per layer run by one row

    def seconds(self, rows: int, layers_per_row: float) -> float:
        return self.call_s + rows * (self.row_s + layers_per_row * self.layer_row_s) if rows > 0 else 0.0

    def drain_s(self, rows: int, layers_per_row: float, max_batch: int) -> float:
        """Seconds to run `rows` queued rows in calls of at most `max_batch` rows."""
        full, rest = divmod(max(0, rows), max_batch)
        return full * self.seconds(max_batch, layers_per_row) + self.seconds(rest, layers_per_row)


class CostModel:
    """The batcher's moving estimate of `Costs`: each runtime call (rows, layers its rows ran, seconds) is one
    observation; older ones weigh less (`half_life` calls). Fitted by least squares on the weighted sums, with
    every coefficient kept >= 0 (the best fit over the subsets of the three terms, at most 7 tiny solves), and a
    small ridge so that a first call, or calls that all look alike, still give an answer."""

    def __init__(self, half_life: float = 50.0, ridge: float = 1e-6):
        self.decay = 0.5 ** (1.0 / half_life)
        self.ridge = ridge
        self.xx = np.zeros((3, 3))
        self.xy = np.zeros(3)
        self.yy = 0.0
        self.calls = 0
        self._costs: Costs | None = None
        self._lock = threading.Lock()  # the worker observes, a /metrics or /info reader may fit meanwhile

    def observe(self, rows: int, row_layers: int, seconds: float) -> None:
        """One runtime call of `rows` rows that ran `row_layers` layers in all and took `seconds`."""
        if rows < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        x = np.array([1.0, float(rows), float(row_layers)])
        with self._lock:
            self.xx = self.decay * self.xx + np.outer(x, x)
            self.xy = self.decay * self.xy + x * seconds
            self.yy = self.decay * self.yy + seconds * seconds
            self.calls += 1
            self._costs = None

    def costs(self) -> Costs | None:
        """The current estimate (None before the first call)."""
        with self._lock:
            if self.calls == 0:
                return None
            if self._costs is None:
                self._costs = Costs(*self._fit())
            return self._costs

    def _fit(self) -> list[float]:
        scale = np.sqrt(np.maximum(np.diag(self.xx), 1e-300))  # the terms differ by orders of magnitude
        a = self.xx / np.outer(scale, scale)
        b = self.xy / scale
        best, best_loss = [0.0, 0.0, 0.0], self.yy
        for k in (3, 2, 1):
            for keep in combinations(range(3), k):
                idx = list(keep)
                sub = a[np.ix_(idx, idx)] + self.ridge * np.eye(k)
                theta = np.linalg.solve(sub, b[idx])
                if (theta < 0).any():
                    continue
                loss = self.yy - 2 * theta @ b[idx] + theta @ a[np.ix_(idx, idx)] @ theta
                if loss < best_loss - 1e-12 * max(self.yy, 1e-300):
                    best, best_loss = [0.0, 0.0, 0.0], loss
                    for i, t in zip(idx, theta, strict=True):
                        best[i] = float(t / scale[i])
        return best


@dataclass(frozen=True)
class Load:
    """The queue as the batcher sees it when it takes a batch."""

    batch_rows: int  # rows in the batch about to run
    queued_rows: int  # rows still waiting behind it
    oldest_wait_s: float  # how long the batch's first row has waited
    newest_wait_s: float  # how long the last queued row has waited
    max_batch: int


def expected_s(load: Load, costs: Costs, budget: float) -> float:
    """The latest finish, from arrival, of the batch's first row and the queue's last row, all at `budget`."""
    own = costs.seconds(load.batch_rows, budget)
    last = load.newest_wait_s + own + costs.drain_s(load.queued_rows, budget, load.max_batch)
    return max(load.oldest_wait_s + own, last)


def choose_budget(load: Load, costs: Costs | None, target_s: float, budgets, floor: float,
                  requested: float) -> float:
    """The budget to run a batch at: `requested` (the layers the rows asked for, or the server's default)
    when the expected latency fits `target_s`, else the highest of `budgets` (the dial's points) below it that
    fits, never below `floor`; the floor when none fits. Without a cost estimate yet: `requested`."""
    if costs is None or requested <= floor or expected_s(load, costs, requested) <= target_s:
        return requested
    for b in sorted((b for b in budgets if floor < b < requested), reverse=True):
        if expected_s(load, costs, b) <= target_s:
            return b
    return floor


@dataclass(frozen=True)
class LatencyPolicy:
    """--latency-target-ms and --min-budget, checked against the model's dial."""

    target_s: float
    floor: float
    budgets: tuple[float, ...]  # the dial's points at or above the floor, ascending: where it steps down to
    default_layers: float  # the layers a row at the server's default runs on average (dev)

    @classmethod
    def make(cls, target_ms: float, min_budget: float | None, default_budget: float | None, dial: Dial | None,
             where: str) -> LatencyPolicy:
        """The policy for a model with `dial` (None: refused, saying how to make one) served at
        `default_budget` (None: the trained gates, whose dev average the dial measured at offset 0)."""
        if dial is None:
            raise DialError(f"--latency-target-ms needs a budget dial to lower the budget through, and {where} "
                            "has none: run `hadskip dial RUN` on its run dir before `hadskip export`")
        lo, hi = dial.budget_range
        floor = lo if min_budget is None else float(min_budget)
        dial.offset_for(floor, where)  # a floor outside the dial's range: one line naming the range
        floor = min(max(floor, lo), hi)
        if default_budget is not None:
            default_layers = float(default_budget)
        else:  # the trained rule is offset 0: its dev average from the curve (offsets fall as targets rise)
            offsets = [p.offset for p in reversed(dial.curve)]
            layers = [p.avg_layers for p in reversed(dial.curve)]
            default_layers = float(np.interp(0.0, offsets, layers))
        budgets = tuple(sorted({floor, *(p.target for p in dial.points if p.target >= floor)}))
        return cls(target_s=target_ms / 1000.0, floor=floor, budgets=budgets, default_layers=default_layers)

    def layers(self, budget: float | None) -> float:
        """The layers a row asking for `budget` runs on average (None: the server's default)."""
        return self.default_layers if budget is None else float(budget)

    def plan(self, load: Load, costs: Costs | None, requested: list[float | None]) -> tuple[float, list]:
        """(the budget chosen for the batch, the budget each job runs at): a job keeps what it asked (None: the
        server's default) unless that is above the chosen budget, which it then runs at."""
        top = max(self.layers(b) for b in requested)
        chosen = choose_budget(load, costs, self.target_s, self.budgets, self.floor, top)
        return chosen, [b if self.layers(b) <= chosen else chosen for b in requested]

    def describe(self) -> dict:
        return {"target_ms": self.target_s * 1000.0, "min_budget": self.floor, "budgets": list(self.budgets),
                "default_layers": round(self.default_layers, 4)}


def check_settings(target_ms: float | None, min_budget: float | None) -> None:
    """ServeConfig's checks of the two options (before the model loads)."""
    if target_ms is not None and not (math.isfinite(target_ms) and 0 < target_ms <= 3_600_000):
        raise HadSkipError(f"latency_target_ms must be in (0, 3600000] milliseconds, got {target_ms}")
    if min_budget is not None:
        if target_ms is None:
            raise HadSkipError("min_budget is the floor of --latency-target-ms; set --latency-target-ms too")
        if not math.isfinite(min_budget):
            raise HadSkipError(f"min_budget must be a finite number of layers, got {min_budget}")
