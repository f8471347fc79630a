"""CUDA graphs for the torch backend: one graph per unit and input shape (the shape bucket), replayed.

At batch 1 a MiniLM-sized layer is a few dozen small kernels, and launching them one by one from Python
takes longer than running them, so eager time barely follows the number of layers that run. A captured
graph replays all of a unit's kernels with one launch, so a routed row pays for the layers it runs.

    graphs = UnitGraphs(device)
    out = graphs.run(("layer", 3), model.layers[3], hidden, mask)   # (B, T, H), a static buffer

Per (unit, shapes and dtypes of the inputs): the first call runs eagerly (lazy cuBLAS set-up; a shape seen
once never pays a capture), the second is captured into a graph with static input buffers (after one warm-up
run on a side stream, as torch's CUDA-graph notes ask) and replayed; later calls copy their inputs into the
static buffers and replay. The returned tensor is the graph's static output: valid until the same unit runs
again at the same shape (the router reads or copies it before then). Each graph has its own memory pool,
since units replay in an order that depends on the gates. A capture that fails (an op that syncs, say) is
not retried for that key, which then runs eagerly.
With `max_tokens`, calls of more tokens (batch x seq) than that run eagerly: there kernels, not launches, rule.
Not included: padding shapes into coarser buckets (each exact shape is its own bucket, at most `limit`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

GRAPH_TOKENS = 4096  # batch*seq up to which launches, not kernels, dominate a unit's time (as the trt backend)
GRAPH_LIMIT = 512


class UnitGraphs:
    """Graphs of unit calls by (key, input shapes); see the module docstring."""

    def __init__(self, device: torch.device | str, limit: int = GRAPH_LIMIT, max_tokens: int | None = GRAPH_TOKENS):
        self.device = torch.device(device)
        self.limit, self.max_tokens = limit, max_tokens
        self.seen: set[tuple] = set()
        self.graphs: dict[tuple, tuple[object, list[torch.Tensor], torch.Tensor]] = {}
        self.failed: dict[tuple, str] = {}  # key -> why its capture failed
        self.captures = self.replays = 0

    def run(self, key: tuple, fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        """fn(*args), through the graph of (key, input shapes) when there is or may be one."""
        gkey = (key, tuple((tuple(a.shape), a.dtype) for a in args))
        entry = self.graphs.get(gkey)
        if entry is None:
            if gkey in self.failed or not self._wanted(gkey, args):
                return fn(*args)
            if gkey not in self.seen:
                self.seen.add(gkey)
                return fn(*args)
            try:
                entry = self.graphs[gkey] = self._capture(fn, args)
                self.captures += 1
            except Exception as exc:  # noqa: BLE001 - any capture failure means: run this key eagerly
                self.failed[gkey] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                print(f"[hadskip] CUDA graph capture of {key} at {[tuple(a.shape) for a in args]} failed, "
                      f"running it eagerly: {self.failed[gkey]}", file=sys.stderr)
                self._recover()
                return fn(*args)
        graph, static, out = entry
        for dst, src in zip(static, args, strict=True):
            if dst is not src:
                dst.copy_(src)
        graph.replay()
        self.replays += 1
        return out

    def _wanted(self, gkey: tuple, args) -> bool:
        if len(self.graphs) >= self.limit:
            return False
        if self.max_tokens is not None and args and args[0].dim() >= 2:
            return int(args[0].shape[0]) * int(args[0].shape[1]) <= self.max_tokens
        return True

    def _capture(self, fn, args) -> tuple[object, list[torch.Tensor], torch.Tensor]:
        """(graph, static inputs, static output) of one call of fn."""
        static = [a.clone() for a in args]
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            fn(*static)  # warm-up off the capture stream
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn(*static)
        return graph, static, out

    def _recover(self) -> None:
        """After a failed capture: leave no error pending on the device."""
        try:
            torch.cuda.synchronize(self.device)
        except RuntimeError:
            pass

    def clear(self) -> None:
        self.graphs.clear()
        self.seen.clear()
        self.failed.clear()
