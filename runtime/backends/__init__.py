"""Execution backends behind one small Protocol (hadskip.runtime.router.Backend).

    ort-cpu    onnxruntime on the CPU, numpy hidden states                       (always available)
    ort-cuda   onnxruntime-gpu, IOBinding on pre-allocated device buffers      (extra `gpu`)
    trt        TensorRT engines, shared scratch, CUDA graphs per shape bucket  (extra `trt`)
    torch      the PyTorch units of a run dir, CPU or CUDA: the reference      (extra `train`)

Each backend module imports its heavy dependency itself, only when that backend is chosen.
"""

BACKENDS = ("ort-cpu", "ort-cuda", "trt", "torch")
