"""The gate rule on the device, in C, and its numpy reference.

RULE_SOURCE is the one copy of the rule on the device (hadskip.runtime.router.gate_open, then the per-row cap of
hadskip.runtime.router.cap_gates). The gate kernel (KERNEL_SOURCE, compiled by NVRTC, one thread) is
DEVICE_PREAMBLE + RULE_SOURCE + KERNEL_BODY; tests/test_cuda_conditional.py compiles HOST_PREAMBLE + the same two
parts on the host and pins them to hadskip.runtime.router.gate_open (NaN, +-inf, ties, one-ulp gaps, offsets) and
to reference_gate_rows.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np

KERNEL_NAME = "hadskip_gate"

# The gate rule and the kernel, in C. RULE_SOURCE is the one copy of the rule on the device: the kernel source
# is DEVICE_PREAMBLE + RULE_SOURCE + KERNEL_BODY, and the host test compiles HOST_PREAMBLE + the same two parts.
RULE_SOURCE = r"""
/* hadskip.runtime.router.gate_open: open iff logit_open - logit_closed > offset. Both fp32 logits are widened
   first: the double difference is exact, 0 only for equal logits and never of the wrong sign, so a tie (0 > 0)
   and a NaN margin (a NaN logit, inf - inf) close the gate, as in numpy. */
HADSKIP_FN int hadskip_gate_open(float closed, float open, double offset)
{
    double margin = (double)open - (double)closed;
    return margin > offset;
}

/* Gate i over `rows` rows (logits (rows, 2): closed, open): the rule, then the per-row cap of
   hadskip.runtime.router.cap_gates (a row that ran cap[r] layers runs no more). Writes each row's decision (0/1),
   adds it to used[r], and returns the conditional's value: with nbuckets == 0 (an IF node) 1 when any row runs
   the layer; else (a SWITCH node) the first bucket of at least as many rows as are open, nbuckets (no case
   runs) when none is. The last bucket is `rows`. */
HADSKIP_FN unsigned int hadskip_gate_rows(int rows, const float *logits, const double *offsets, int *used,
                                          const int *cap, unsigned char *decisions, const int *buckets, int nbuckets)
{
    int count = 0;
    for (int r = 0; r < rows; ++r) {
        int g = hadskip_gate_open(logits[2 * r], logits[2 * r + 1], offsets[r]) && used[r] < cap[r];
        decisions[r] = (unsigned char)g;
        used[r] += g;
        count += g;
    }
    if (nbuckets == 0)
        return count > 0;
    if (count == 0)
        return (unsigned int)nbuckets;
    int k = 0;
    while (k < nbuckets - 1 && buckets[k] < count)
        ++k;
    return (unsigned int)k;
}
"""

KERNEL_BODY = r"""
/* One thread: a few dozen rows at most, and no reduction to get wrong. */
__global__ void hadskip_gate(cudaGraphConditionalHandle handle, const float *logits, const double *offsets,
                             int *used, const int *cap, unsigned char *decisions, int rows, const int *buckets,
                             int nbuckets)
{
    cudaGraphSetConditional(handle, hadskip_gate_rows(rows, logits, offsets, used, cap, decisions, buckets,
                                                      nbuckets));
}
"""

# NVRTC: the two declarations of cuda_device_runtime_api.h the kernel needs (a cudart builtin: no device runtime
# library to link), so no include path is needed
DEVICE_PREAMBLE = r"""
typedef __device_builtin__ unsigned long long cudaGraphConditionalHandle;
extern "C" __device__ __cudart_builtin__ void cudaGraphSetConditional(cudaGraphConditionalHandle handle,
                                                                      unsigned int value);
#define HADSKIP_FN __device__
"""

HOST_PREAMBLE = r"""
/* the host build of the kernel source (tests): the conditional's value lands in hadskip_conditional_value */
#define HADSKIP_FN
#define __global__
typedef unsigned long long cudaGraphConditionalHandle;
extern "C" unsigned int hadskip_conditional_value[4096];
unsigned int hadskip_conditional_value[4096];
static void cudaGraphSetConditional(cudaGraphConditionalHandle handle, unsigned int value)
{
    hadskip_conditional_value[handle % 4096] = value;
}
"""


def kernel_source(preamble: str = DEVICE_PREAMBLE) -> str:
    """The gate kernel's C++ source: `preamble`, then the rule and the kernel with C linkage."""
    return preamble + 'extern "C" {\n' + RULE_SOURCE + KERNEL_BODY + "}\n"


KERNEL_SOURCE = kernel_source()
# the kernel's parameters, in order (how they are packed for the kernel node, and read back by the stand-in)
KERNEL_ARGTYPES = (ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int)


def reference_gate_rows(logits: np.ndarray, offsets: np.ndarray, used: np.ndarray, cap: np.ndarray,
                        buckets: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray, int]:
    """What hadskip_gate_rows computes, in numpy: (decisions (B,) bool, used after, conditional value)."""
    z = np.asarray(logits, dtype=np.float32).astype(np.float64)
    with np.errstate(invalid="ignore"):
        g = (z[:, 1] - z[:, 0] > np.asarray(offsets, dtype=np.float64)) & (used < cap)
    count = int(g.sum())
    if not buckets:
        value = int(count > 0)
    elif count == 0:
        value = len(buckets)
    else:
        value = next((k for k, s in enumerate(buckets[:-1]) if s >= count), len(buckets) - 1)
    return g, used + g, value
