"""DeviceGates: per (batch, seq, mode) the static buffers, the unit captures and the outer graph, built on the
second sight of a shape and launched per call; `open_device_gates` makes one where `why_not` allows.

Every unit is captured once by torch (`torch.cuda.CUDAGraph(keep_graph=True)`, `raw_cuda_graph()`) reading and
writing static buffers, and added as a child-graph node; the outer graph is instantiated once per shape and
launched per call.

Batch 1 (and mode "dense"): one IF node per layer, whose body runs the layer on every row and keeps its output
only in the open rows (`where`; at batch 1 a plain copy). Mode "compact" (batch > 1): a SWITCH node over row-count
buckets (1, 2, 4, ..., B): the kernel picks the smallest bucket holding the open rows, case k gathers them in
static shape (compact_rows: no host sync), runs the layer captured at that many rows and scatters back only the
valid ones (the padding slots go to a scratch row B). No capacity dropping: every row's decision is the rule's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from hadskip.modeling.cuda_conditional.bindings import ConditionalGraphError, call, first_line, load_bindings, why_not
from hadskip.modeling.cuda_conditional.graph import GateKernel, LayerStep, OuterGraph, assemble

MODES = ("dense", "compact")  # batch > 1: every row runs the layer, masked / the open rows gathered by bucket
COMPACTIONS = ("cumsum", "argsort", "nonzero_static")
GRAPH_LIMIT = 64  # shapes (batch, seq, mode) with an outer graph per DeviceGates


def buckets_for(rows: int) -> tuple[int, ...]:
    """Row-count buckets of the compact mode: powers of two below `rows`, then `rows`."""
    out, s = [], 1
    while s < rows:
        out.append(s)
        s *= 2
    return (*out, rows)


def compact_rows(open_rows: torch.Tensor, size: int, fill: int, how: str = "cumsum") -> torch.Tensor:
    """(size,) int64: the indices of the open rows in row order, then `fill`, computed in static shapes on the
    tensor's device (no host sync, so it can be captured). `size` must be at least the number of open rows.

    cumsum: each open row's slot is its running count - 1, scattered (closed rows go to a spare slot);
    argsort: a stable sort of the closed flags puts the open rows first; nonzero_static: torch's."""
    b = open_rows.shape[0]
    rows = torch.arange(b, device=open_rows.device)
    if how == "nonzero_static":
        return torch.nonzero_static(open_rows, size=size, fill_value=fill).reshape(size)
    if how == "argsort":
        order = torch.argsort((~open_rows).to(torch.uint8), stable=True)
        return torch.where(rows < open_rows.sum(), order, fill)[:size]
    if how == "cumsum":
        slot = torch.where(open_rows, torch.cumsum(open_rows.to(torch.int64), 0) - 1, b)
        out = torch.full((b + 1,), fill, dtype=torch.int64, device=open_rows.device)
        return out.scatter_(0, slot, rows)[:size]
    raise ValueError(f"unknown compaction {how!r}; choose one of {', '.join(COMPACTIONS)}")


class TorchCapture:
    """Captures a unit call into a kept torch CUDA graph (all of one shape share a memory pool: they never run
    at the same time, and everything they pass on lives in buffers allocated outside the capture)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: list = []

    def warmup(self, fns: list[Callable[[], None]]) -> None:
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for fn in fns:
                fn()
        current.wait_stream(side)

    def __call__(self, fn: Callable[[], None]) -> int:
        g = torch.cuda.CUDAGraph(keep_graph=True)
        with torch.cuda.graph(g, pool=self.pool):
            fn()
        self.graphs.append(g)
        return int(g.raw_cuda_graph())


@dataclass
class Units:
    """What the outer graph runs: unit callables with the signatures of hadskip.modeling.units (gates and head
    returning fp32), and the facts the buffers need."""

    embeddings: Callable
    gates: Sequence[Callable]
    layers: Sequence[Callable]
    head: Callable
    hidden_size: int
    num_labels: int
    dtype: torch.dtype = torch.float32  # of the hidden states


class _Shape:
    """Static buffers and the outer graph of one (batch, seq, mode)."""

    def __init__(self, units: Units, device, b: int, t: int, mode: str, compaction: str):
        n_layers = len(units.layers)
        z = dict(device=device)
        self.b, self.t, self.mode = b, t, mode
        self.ids = torch.zeros((b, t), dtype=torch.int64, **z)
        self.tt = torch.zeros((b, t), dtype=torch.int64, **z)
        self.mask_ext = torch.ones((b + 1, t), dtype=torch.int64, **z)  # row b: the scratch row of compact mode
        self.mask = self.mask_ext[:b]
        self.h_ext = torch.zeros((b + 1, t, units.hidden_size), dtype=units.dtype, **z)
        self.h = self.h_ext[:b]
        self.glog = torch.zeros((n_layers, b, 2), dtype=torch.float32, **z)
        self.dec = torch.zeros((n_layers, b), dtype=torch.uint8, **z)
        self.used = torch.zeros(b, dtype=torch.int32, **z)
        self.cap = torch.full((b,), n_layers + 1, dtype=torch.int32, **z)
        self.offsets = torch.zeros(b, dtype=torch.float64, **z)
        self.logits = torch.zeros((b, units.num_labels), dtype=torch.float32, **z)
        self.buckets = buckets_for(b) if mode == "compact" else ()
        self.bucket_sizes = torch.tensor(self.buckets or (0,), dtype=torch.int32, device=device)
        self.units, self.compaction = units, compaction
        self.outer: OuterGraph | None = None

    # the unit calls as captured: each reads and writes the static buffers only
    def embeddings(self) -> None:
        self.h.copy_(self.units.embeddings(self.ids, self.mask, self.tt))
        self.used.zero_()

    def gate(self, i: int) -> Callable[[], None]:
        return lambda: self.glog[i].copy_(self.units.gates[i](self.h, self.mask))

    def dense(self, i: int) -> Callable[[], None]:
        def run() -> None:
            out = self.units.layers[i](self.h, self.mask)
            if self.b == 1:  # the body runs only when the one row's gate opened
                self.h.copy_(out)
            else:
                self.h.copy_(torch.where(self.dec[i].bool()[:, None, None], out, self.h))
        return run

    def compact(self, i: int, size: int) -> Callable[[], None]:
        def run() -> None:
            idx = compact_rows(self.dec[i].bool(), size, self.b, self.compaction)  # padding: the scratch row b
            out = self.units.layers[i](self.h_ext.index_select(0, idx), self.mask_ext.index_select(0, idx))
            self.h_ext.index_copy_(0, idx, out)
        return run

    def head(self) -> None:
        self.logits.copy_(self.units.head(self.h, self.mask))

    def build(self, api, kernel_func, ctx, capture) -> None:
        n_layers = len(self.units.layers)
        bodies = [[self.dense(i)] if not self.buckets else [self.compact(i, s) for s in self.buckets]
                  for i in range(n_layers)]
        gates = [self.gate(i) for i in range(n_layers)]
        fns = [self.embeddings, *gates, *[f for body in bodies for f in body], self.head]
        warmup = getattr(capture, "warmup", None)
        if warmup is not None:
            warmup(fns)
        emb = capture(self.embeddings)
        steps = []
        for i in range(n_layers):
            steps.append(LayerStep(
                gate=capture(gates[i]), bodies=[capture(f) for f in bodies[i]],
                logits=self.glog[i].data_ptr(), offsets=self.offsets.data_ptr(), used=self.used.data_ptr(),
                cap=self.cap.data_ptr(), decisions=self.dec[i].data_ptr(), rows=self.b,
                buckets=self.bucket_sizes.data_ptr() if self.buckets else 0, nbuckets=len(self.buckets)))
        head = capture(self.head)
        self.outer = assemble(api, kernel_func, ctx, emb, steps, head)
        self.outer.keep.append(capture)

    def run(self, ids, mask, tt, offsets: np.ndarray, cap: np.ndarray, stream: int) -> tuple[np.ndarray, np.ndarray]:
        self.ids.copy_(torch.from_numpy(ids))
        self.mask.copy_(torch.from_numpy(mask))
        self.tt.copy_(torch.from_numpy(tt))
        self.offsets.copy_(torch.from_numpy(offsets))
        self.cap.copy_(torch.from_numpy(cap))
        self.outer.launch(stream)
        gates = self.dec.cpu().numpy().T.astype(bool)  # (B, L); waits for the graph
        return self.logits.cpu().numpy(), gates

    def close(self) -> None:
        if self.outer is not None:
            self.outer.close()
            self.outer = None


class DeviceGates:
    """Outer graphs by (batch, seq, mode) for one model; see the module docstring. `api`, `capture`, `arch` and
    `stream` are cuda-bindings, the unit capture, the compute capability and the launch stream (tests pass
    stand-ins); by default those of `device`."""

    def __init__(self, units: Units, device: torch.device | str, mode: str = "dense", *, api=None, capture=None,
                 arch: tuple[int, int] | None = None, stream: Callable[[], int] | None = None,
                 limit: int = GRAPH_LIMIT, max_tokens: int | None = None, compaction: str = "cumsum"):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if compaction not in COMPACTIONS:
            raise ValueError(f"unknown compaction {compaction!r}; choose one of {', '.join(COMPACTIONS)}")
        self.units, self.device = units, torch.device(device)
        self.mode, self.limit, self.max_tokens, self.compaction = mode, limit, max_tokens, compaction
        self.api = api if api is not None else load_bindings()
        self.capture = capture or (lambda: TorchCapture(self.device))
        self.stream = stream or (lambda: torch.cuda.current_stream(self.device).cuda_stream)
        self.arch = arch or torch.cuda.get_device_capability(self.device)
        self.shapes: dict[tuple, _Shape] = {}
        self.seen: set[tuple] = set()
        self.failed: dict[tuple, str] = {}
        self.kernel: GateKernel | None = None
        self.builds = self.launches = 0

    def _context(self):
        d = self.api.driver
        call(d, "cuInit", 0)
        ctx = call(d, "cuCtxGetCurrent")
        if not int(ctx):
            raise ConditionalGraphError("no current CUDA context on this thread (torch has not used the device)")
        return ctx

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray,
            gate_offset: float | np.ndarray = 0.0, max_layers: int | np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray] | None:
        """(logits (B, C) float32, gates (B, L) bool) of one trimmed, right-padded batch through its outer graph,
        or None where the host path must run it: first sight of a shape (as hadskip.modeling.cuda_graphs), more
        tokens than max_tokens, the limit, or a build that failed."""
        b, t = input_ids.shape
        mode = "dense" if b == 1 else self.mode
        key = (b, t, mode)
        shape = self.shapes.get(key)
        if shape is None:
            if key in self.failed or len(self.shapes) >= self.limit or \
                    (self.max_tokens is not None and b * t > self.max_tokens):
                return None
            if key not in self.seen:
                self.seen.add(key)
                return None
            shape = None
            try:
                with torch.inference_mode():
                    shape = _Shape(self.units, self.device, b, t, mode, self.compaction)  # torch makes the context
                    ctx = self._context()  # current on this thread, which the driver calls below need
                    if self.kernel is None:
                        self.kernel = GateKernel(self.api, self.arch)
                    shape.build(self.api, self.kernel.func, ctx, self.capture())
            except Exception as exc:  # noqa: BLE001 - any build failure means: this shape takes the host path
                self._give_up(key, shape, "not built", exc)
                return None
            self.shapes[key] = shape
            self.builds += 1
        n_layers = len(self.units.layers)
        offsets = np.array(np.broadcast_to(np.asarray(gate_offset, dtype=np.float64), (b,)))
        cap = np.full(b, n_layers + 1, dtype=np.int32) if max_layers is None else \
            np.array(np.broadcast_to(np.minimum(np.asarray(max_layers), n_layers + 1), (b,)), dtype=np.int32)
        try:
            with torch.inference_mode():
                out = shape.run(np.ascontiguousarray(input_ids, np.int64),
                                np.ascontiguousarray(attention_mask, np.int64),
                                np.ascontiguousarray(token_type_ids, np.int64), offsets, cap, self.stream())
        except ConditionalGraphError as exc:
            del self.shapes[key]
            self._give_up(key, shape, "failed to launch", exc)
            return None
        self.launches += 1
        return out

    def _give_up(self, key: tuple, shape: _Shape | None, what: str, exc: BaseException) -> None:
        """A shape whose graph failed: released, remembered, and said in one line; the host path runs it."""
        if shape is not None:
            shape.close()
        if self.device.type == "cuda":
            try:  # leave no error pending on the device
                torch.cuda.synchronize(self.device)
            except RuntimeError:
                pass
        self.failed[key] = first_line(exc)
        print(f"[hadskip] gates of batch {key[0]} x seq {key[1]} stay on the host ({key[2]} graph {what}): "
              f"{self.failed[key]}", file=sys.stderr)

    def close(self) -> None:
        for shape in self.shapes.values():
            shape.close()
        self.shapes.clear()
        self.seen.clear()
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None


def open_device_gates(units: Units, device: torch.device, mode: str = "dense", *, max_tokens: int | None = None,
                      api: SimpleNamespace | None = None, loader: Callable[[], SimpleNamespace] = load_bindings,
                      gpu: bool | None = None, **kwargs) -> tuple[DeviceGates | None, str | None]:
    """(DeviceGates, None) where gates can be decided on `device`, else (None, why), having printed that in one
    line on stderr: the routed batches then take the router's host loop."""
    why = why_not(device, mode, api, loader, gpu)
    if why is None:
        try:
            return DeviceGates(units, device, mode, api=api or loader(), max_tokens=max_tokens, **kwargs), None
        except Exception as exc:  # noqa: BLE001 - whatever stops it, the host path still runs
            why = first_line(exc)
    print(f"[hadskip] gates decided on the host (a round trip per gate), not in one CUDA graph: {why}",
          file=sys.stderr)
    return None, why
