"""Gates decided on the GPU: per batch shape, one CUDA graph whose conditional nodes run layer i only where gate i
opens, so a routed batch is one graph launch with no host round trip (docs/gpu.md).

    gates = DeviceGates(units, device)                    # TorchBackend makes one on CUDA when it can
    out = gates.run(ids, mask, tt, gate_offset, max_layers)  # (logits (B, C), gates (B, L)), or None: host path

One job a module:
  rule.py          the gate rule in C (RULE_SOURCE, the one device copy; the kernel's source) and its numpy reference
  bindings.py      cuda-bindings 13.x (imported only there), `why_not` (one line, or None), `call`
  graph.py         the NVRTC-built gate kernel and the outer graph's assembly (child graphs, kernel, IF/SWITCH nodes)
  device_gates.py  DeviceGates: per (batch, seq, mode) static buffers, unit captures and the outer graph

tests/test_cuda_conditional.py compiles the rule's C on the host and pins it to hadskip.runtime.router.gate_open,
and runs the builder against a stand-in of cuda.bindings that records and executes every call.

Falls back to the host path (runtime.router.route) with one line saying why (`why_not`) when there is no CUDA
GPU, cuda-bindings 13.x is missing, or the driver or runtime is older than CUDA 12.4 (IF nodes; 12.8 for SWITCH),
and per shape, with one line, when a build fails. Not included: padding shapes into coarser buckets (each exact
(batch, seq) is its own graph, at most `limit`), forced patterns (route's `forced` takes the host path).
"""

from hadskip.modeling.cuda_conditional.bindings import load_bindings, why_not
from hadskip.modeling.cuda_conditional.device_gates import (
    COMPACTIONS, MODES, DeviceGates, Units, buckets_for, compact_rows, open_device_gates)
from hadskip.modeling.cuda_conditional.rule import (
    HOST_PREAMBLE, KERNEL_ARGTYPES, KERNEL_SOURCE, RULE_SOURCE, kernel_source, reference_gate_rows)
from hadskip.modeling.cuda_graphs import GRAPH_TOKENS

__all__ = ["COMPACTIONS", "GRAPH_TOKENS", "HOST_PREAMBLE", "KERNEL_ARGTYPES", "KERNEL_SOURCE", "MODES", "RULE_SOURCE",
           "DeviceGates", "Units", "buckets_for", "compact_rows", "kernel_source", "load_bindings",
           "open_device_gates", "reference_gate_rows", "why_not"]
