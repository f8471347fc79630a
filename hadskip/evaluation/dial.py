"""Calibrating the budget dial of a trained run on dev: `hadskip dial RUN` (the Dial itself: runtime/dial.py).

The gate rule takes an offset (open iff logit_open - logit_closed > offset). Margins of later gates depend on
the layers earlier gates ran, so one pass at offset 0 cannot tell what another offset does. Rather than
bisecting the offset with a full dev pass per try, one sweep finds every row's gate pattern for EVERY offset:

    per row, a tree over offset intervals [lo, hi), starting from (-inf, inf) after the embeddings:
    at gate i a node with margin m splits into  open   [lo, min(hi, m))   -> layer i runs on it
                                                closed [max(lo, m), hi)   -> the hidden state is kept
    (NaN margins close the whole interval, as the rule does); the leaves partition the offset axis, each
    with the layers its row used there and the head's prediction.

The leaves of all rows give average layers and the metric as exact step functions of the offset (up to
float noise of the batch composition, as between any two evaluations). Cost: a row with k distinct patterns
runs about k/2 full passes' worth of layers (at most 2^L leaves a row), in place of ~20 passes a target.

Average layers is non-increasing in the offset for monotone gates, but need not be (closing gate 1 changes the
hidden state gate 2 sees). The sweep measures the largest rise (`max_rise`) and the choice of operating points
keeps offsets decreasing as targets grow, so the stored curve is monotone and interpolation is well defined.
For each target the chosen segment is, among those within `tol` layers of it (or the closest when none is), the
widest one: its midpoint lies farthest from every dev margin, so fp16 or another backend flips the fewest rows.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hadskip.data.batches import loader
from hadskip.data.metrics import compute_metric
from hadskip.errors import HadSkipError
from hadskip.evaluation.evaluate import default_device
from hadskip.modeling.checkpoint import encode_run_split, load_run
from hadskip.modeling.units import gate_margin
from hadskip.runtime.dial import Dial, DialPoint, write_dial
from hadskip.runtime.files import sha256_file
from hadskip.training.loop import progress_bar

CURVE_STEP = 0.05  # layers between the knots of the stored curve
TOLERANCE = 0.005  # layers: how close a segment's average must be to a target to compete on width
END_PAD = 1.0  # the offset this far beyond the outermost dev margin stands for "all open" / "all closed"


def default_targets(num_layers: int, trained_budget: float | None) -> list[float]:
    """1, 1.5, ..., L and the trained budget."""
    grid = [1.0 + 0.5 * j for j in range(int(round((num_layers - 1) / 0.5)) + 1)]
    if trained_budget is not None:
        grid.append(float(trained_budget))
    return sorted(set(round(t, 6) for t in grid))


def check_targets(targets, num_layers: int) -> list[float]:
    out = []
    for t in targets:
        try:
            v = float(t)
        except (TypeError, ValueError):
            raise HadSkipError(f"targets must be numbers of layers, got {t!r}") from None
        if not 0 <= v <= num_layers:  # NaN fails too
            raise HadSkipError(f"target {t} is outside 0..{num_layers} (average layers of this model)")
        out.append(v)
    if not out:
        raise HadSkipError("no targets given")
    return sorted(set(out))


# --- the sweep --------------------------------------------------------------------------------------------

class Leaves:
    """Every (row, offset interval) leaf of the sweep: arrays of equal length M."""

    def __init__(self, row, lo, hi, layers, pred):
        self.row = np.asarray(row, dtype=np.int64)  # (M,) row index in the split
        self.lo = np.asarray(lo, dtype=np.float64)  # (M,) interval [lo, hi) of offsets
        self.hi = np.asarray(hi, dtype=np.float64)
        self.layers = np.asarray(layers, dtype=np.int64)  # (M,) layers this row ran there
        self.pred = np.asarray(pred, dtype=np.int64)  # (M,) predicted class there

    def __len__(self) -> int:
        return len(self.row)

    def at(self, offset: float, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(layers (N,), predictions (N,)) of every row at `offset`."""
        hit = (self.lo <= offset) & (offset < self.hi)
        if hit.sum() != n_rows:  # the leaves of every row partition the offset axis
            raise RuntimeError(f"{hit.sum()} leaves cover offset {offset} for {n_rows} rows")
        layers, pred = np.zeros(n_rows, dtype=np.int64), np.zeros(n_rows, dtype=np.int64)
        layers[self.row[hit]], pred[self.row[hit]] = self.layers[hit], self.pred[hit]
        return layers, pred


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def sweep_batch(model, input_ids, attention_mask, token_type_ids, node_batch: int = 64) -> tuple:
    """The offset tree of one padded batch (see the module docstring), on the model's device.

    input_ids, attention_mask, token_type_ids: (B, T) tensors. Returns numpy arrays over the leaves:
    (row in the batch, lo, hi, layers used, logits (M, C))."""
    token_type_ids = model.token_types(input_ids, token_type_ids)  # the forward's (and the manifest's) rule
    with torch.inference_mode():
        h = model.embeddings(input_ids, attention_mask, token_type_ids)  # (N, T, H), N nodes
        b = input_ids.shape[0]
        row = np.arange(b)
        lo, hi = np.full(b, -np.inf), np.full(b, np.inf)
        used = np.zeros(b, dtype=np.int64)
        for i in range(model.num_layers):
            mask = attention_mask[torch.from_numpy(row).to(attention_mask.device)]  # (N, T)
            z = torch.cat([model.gates[i](h[s], mask[s]) for s in _chunks(len(row), node_batch)])  # (N, 2)
            m = gate_margin(z).cpu().numpy()  # the rule's float64 margin
            with np.errstate(invalid="ignore"):
                is_open = lo < m  # NaN: never open
                closed = ~(m >= hi)  # NaN: closed over the whole interval
            io, ic = np.flatnonzero(is_open), np.flatnonzero(closed)
            ti, tc = (torch.from_numpy(x).to(h.device) for x in (io, ic))
            h_open = h.index_select(0, ti)
            m_open = mask.index_select(0, ti)
            if len(io):
                h_open = torch.cat([model.layers[i](h_open[s], m_open[s]) for s in _chunks(len(io), node_batch)])
            h = torch.cat([h.index_select(0, tc), h_open])
            lo, hi = np.concatenate([np.fmax(lo, m)[ic], lo[io]]), np.concatenate([hi[ic], np.fmin(hi, m)[io]])
            row, used = np.concatenate([row[ic], row[io]]), np.concatenate([used[ic], used[io] + 1])
        mask = attention_mask[torch.from_numpy(row).to(attention_mask.device)]
        logits = torch.cat([model.head(h[s], mask[s]) for s in _chunks(len(row), node_batch)])
    return row, lo, hi, used, logits.float().cpu().numpy()


def sweep(model, enc, pad_id: int, batch_size: int = 32, progress=None) -> Leaves:
    """The leaves of every row of `enc` (hadskip.data.batches.Encoded), batches in length order.
    `progress(rows_done)` is called after each batch."""
    model.eval()
    device = next(model.parameters()).device
    dl = loader(enc, batch_size, pad_id, shuffle=False)
    parts = []
    done = 0
    for idx, batch in zip(dl.dataset.batch_indices(), dl, strict=True):
        b = {k: v.to(device) for k, v in batch.items()}
        row, lo, hi, used, logits = sweep_batch(model, b["input_ids"], b["attention_mask"], b["token_type_ids"])
        parts.append((np.asarray(idx)[row], lo, hi, used, logits.argmax(axis=1)))
        done += len(idx)
        if progress is not None:
            progress(done)
    if not parts:
        return Leaves([], [], [], [], [])
    return Leaves(*(np.concatenate(p) for p in zip(*parts, strict=True)))


# --- from leaves to a dial --------------------------------------------------------------------------------

class Steps:
    """Average layers as a step function of the offset: segment j is [bounds[j-1], bounds[j]) with
    bounds[-1] = -inf and bounds[n] = +inf (n + 1 segments)."""

    def __init__(self, leaves: Leaves, n_rows: int):
        finite = np.concatenate([leaves.lo, leaves.hi])
        self.bounds = np.unique(finite[np.isfinite(finite)])  # (n,)
        n = len(self.bounds)
        start = np.searchsorted(self.bounds, leaves.lo, side="right")  # lo = -inf -> 0
        end = np.where(np.isposinf(leaves.hi), n + 1, np.searchsorted(self.bounds, leaves.hi, side="right"))
        total = np.zeros(n + 2, dtype=np.int64)
        np.add.at(total, start, leaves.layers)
        np.add.at(total, end, -leaves.layers)
        self.total = np.cumsum(total)[: n + 1]  # (n + 1,) layers summed over rows, per segment
        self.n_rows = n_rows
        self.avg = self.total / max(1, n_rows)
        lo = np.concatenate([[-np.inf], self.bounds])
        hi = np.concatenate([self.bounds, [np.inf]])
        self.width = hi - lo  # inf for the two outer segments

    def offset(self, j: int) -> float:
        """A representative offset of segment j: its midpoint, or END_PAD beyond the outermost bound."""
        if len(self.bounds) == 0:
            return 0.0
        if j == 0:
            return float(self.bounds[0] - END_PAD)
        if j == len(self.bounds):
            return float(self.bounds[-1] + END_PAD)
        return float((self.bounds[j - 1] + self.bounds[j]) / 2)

    def max_rise(self) -> float:
        """The largest rise of average layers as the offset grows (0 when non-increasing)."""
        suffix_max = np.maximum.accumulate(self.total[::-1])[::-1]
        return float((suffix_max - self.total).max(initial=0)) / max(1, self.n_rows)

    def choose(self, targets: list[float], tol: float = TOLERANCE) -> list[int]:
        """A segment for each target (in the order given): targets are served from the largest down, each
        at an offset no smaller than the previous one's, the widest segment within `tol` of the target."""
        chosen: dict[int, int] = {}
        first = 0
        for k in sorted(range(len(targets)), key=lambda k: -targets[k]):
            err = np.abs(self.avg[first:] - targets[k])
            near = err <= max(float(err.min()), tol)
            j = first + int(np.argmax(np.where(near, self.width[first:], -1.0)))
            chosen[k] = first = j
        return [chosen[k] for k in range(len(targets))]


def build_dial(leaves: Leaves, labels: np.ndarray, metric: str, num_labels: int, num_layers: int,
               targets: list[float], tol: float = TOLERANCE, step: float = CURVE_STEP, **facts) -> Dial:
    """The Dial from a sweep's leaves: points at `targets`, and curve knots every `step` layers between the
    smallest and the largest target (plus the targets themselves, so a target's knot is its point)."""
    n = len(labels)
    if n == 0:
        raise HadSkipError("cannot calibrate on an empty split")
    steps = Steps(leaves, n)
    lo_t, hi_t = min(targets), max(targets)
    knots = sorted(set([*targets, *np.round(np.arange(lo_t, hi_t + step / 2, step), 6)]))
    knots = [k for k in knots if lo_t <= k <= hi_t]
    segs = steps.choose(knots + list(targets), tol)
    knot_segs, point_segs = segs[: len(knots)], segs[len(knots):]
    value: dict[int, float] = {}

    def measured(j: int) -> float:
        if j not in value:
            layers, pred = leaves.at(steps.offset(j), n)
            if layers.sum() != steps.total[j]:
                raise RuntimeError(f"segment {j}: {layers.sum()} layers, steps say {steps.total[j]}")
            value[j] = compute_metric(metric, pred, labels, num_labels)
        return value[j]

    def point(j: int, target: float) -> DialPoint:
        return DialPoint(offset=steps.offset(j), avg_layers=float(steps.avg[j]), value=measured(j), target=target)

    curve = [point(j, t) for t, j in zip(knots, knot_segs, strict=True)]  # targets ascending, offsets not increasing
    points = [point(j, t) for j, t in zip(point_segs, targets, strict=True)]
    rise = steps.max_rise()
    return Dial(num_layers=num_layers, points=points, curve=curve, metric=metric, examples=n,
                monotone=rise == 0, max_rise=rise,
                extra={"segments": len(steps.avg), "leaves": len(leaves), "tolerance": tol, "curve_step": step},
                **facts)


def _gated_model(run_dir: Path, batch_size: int, device: str | None):
    """(model on its device, tokenizer, RunInfo) of a gated run; refuses a run without trained gates."""
    if batch_size < 1:
        raise HadSkipError(f"batch_size must be >= 1, got {batch_size}")
    model, tokenizer, info = load_run(run_dir)
    if not info.is_gated:
        raise HadSkipError(f"{run_dir} is a {info.kind} run without trained gates; calibrate a `hadskip train` run")
    return model.to(device or default_device()), tokenizer, info


def _encoded_split(tokenizer, info, split: str):
    """(encoded split, pad id, task spec) of the run's own task."""
    run_split = encode_run_split(tokenizer, info, split)
    if len(run_split.enc) == 0:
        raise HadSkipError(f"the {split} split of {run_split.spec.name} is empty: nothing to calibrate on")
    return run_split.enc, run_split.pad_id, run_split.spec


def _sweep_with_bar(model, enc, pad: int, batch_size: int, progress: bool, split: str) -> Leaves:
    with progress_bar(progress) as bar:
        task = bar.add_task(f"dial sweep ({split})", total=len(enc), status="")
        with torch.no_grad():
            return sweep(model, enc, pad, batch_size, progress=lambda done: bar.update(task, completed=done))


def sweep_split(run_dir: str | Path, split: str = "dev", batch_size: int = 32, progress: bool = True,
                device: str | None = None):
    """(leaves, labels (N,), task spec, RunInfo, L) of a gated run's sweep over one split of its task."""
    model, tokenizer, info = _gated_model(Path(run_dir), batch_size, device)
    enc, pad, spec = _encoded_split(tokenizer, info, split)
    leaves = _sweep_with_bar(model, enc, pad, batch_size, progress, split)
    return leaves, enc.labels, spec, info, model.num_layers


def calibrate(run_dir: str | Path, targets: list[float] | None = None, split: str = "dev", batch_size: int = 32,
              tol: float = TOLERANCE, progress: bool = True, write: bool = True, device: str | None = None) -> Dial:
    """Calibrate RUN's budget dial on `split` and (write=True) store it as RUN/dial.json.

    targets: average layers to record points at (default: 1, 1.5, ..., L and the trained budget)."""
    run_dir = Path(run_dir)
    model, tokenizer, info = _gated_model(run_dir, batch_size, device)
    L = model.num_layers
    targets = check_targets(default_targets(L, info.budget) if targets is None else targets, L)  # before the data
    enc, pad, spec = _encoded_split(tokenizer, info, split)
    t0 = time.perf_counter()
    leaves = _sweep_with_bar(model, enc, pad, batch_size, progress, split)
    dial = build_dial(leaves, enc.labels, spec.metric, spec.num_labels, L, targets, tol,
                      task=spec.name, split=split, trained_budget=info.budget,
                      model_sha256=sha256_file(run_dir / "model.safetensors"))
    dial.extra["seconds"] = round(time.perf_counter() - t0, 2)
    if write:
        write_dial(run_dir, dial)
    return dial
