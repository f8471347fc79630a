#!/usr/bin/env bash
# GPU checks of the runtime, in under 8 minutes on any machine with an NVIDIA GPU (nothing is downloaded):
#   1. pytest -m gpu            GPU backends vs the CPU runtime on tiny models (each skips, saying why, when
#                               torch-with-CUDA / onnxruntime-gpu / tensorrt is absent)
#   2. bench/gpu_bench.py       torch (CUDA), ort-cuda, trt on a MiniLM-L6-shaped model dir it builds itself
# Every step has its own time limit; a step that runs out says so and the script goes on.
# Usage: scripts/gpu_check.sh [WORK_DIR]      (default: a fresh temp dir; results: WORK_DIR/bench-*.json)
# HADSKIP_GPU_CHECK_DRY=1 runs it on a machine without a GPU (everything skips): a check of the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-$(mktemp -d -t hadskip-gpu-XXXXXX)}"
mkdir -p "$WORK"
PY="${PYTHON:-python3}"
status=0
start=$SECONDS

step() { echo; echo "=== $* ($((SECONDS - start))s elapsed)"; }
limited() {  # limited SECONDS NAME CMD...: run CMD, report a timeout by name
  local limit=$1 name=$2; shift 2
  timeout --signal=TERM --kill-after=10 "$limit" "$@"
  local rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "TIMEOUT $name: stopped after ${limit}s"; fi
  return $rc
}

step "machine"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi -L
elif [ -n "${HADSKIP_GPU_CHECK_DRY:-}" ]; then
  echo "no NVIDIA GPU; HADSKIP_GPU_CHECK_DRY is set, so the steps run and skip (a dry run of this script)"
else
  echo "FAIL: no NVIDIA GPU here (nvidia-smi missing or finds no device); this script needs one"
  exit 2
fi
"$PY" - <<'EOF'
import importlib.util
import onnxruntime as ort
from hadskip.runtime.backends.memory import cuda_device_count
print(f"CUDA runtime sees {cuda_device_count()} GPU(s); onnxruntime {ort.__version__} providers: "
      f"{', '.join(ort.get_available_providers())}")
if importlib.util.find_spec("torch"):
    import torch
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
else:
    print("torch: not installed (the torch backend and the model build need it)")
for pkg, extra in (("tensorrt", "trt"),):
    if importlib.util.find_spec(pkg):
        print(f"{pkg} {__import__(pkg).__version__}")
    else:
        print(f"{pkg}: not installed (pip install 'hadskip[{extra}]'); its parts will skip")
if "CUDAExecutionProvider" not in ort.get_available_providers():
    print("onnxruntime-gpu: not installed (pip install 'hadskip[gpu]'); the ort-cuda parts will skip")
EOF

step "pytest -m gpu"
limited 180 "pytest -m gpu" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider tests || status=1

step "GPU bench: torch (CUDA) and ort-cuda on a MiniLM-L6-shaped model (work dir $WORK)"
limited 150 "bench torch/ort-cuda" "$PY" bench/gpu_bench.py --work "$WORK" --backends torch,ort-cuda || status=1

step "GPU bench: trt (engine build included)"
limited 150 "bench trt" "$PY" bench/gpu_bench.py --work "$WORK" --backends trt || status=1

step "done in $((SECONDS - start))s: $([ $status -eq 0 ] && echo OK || echo 'FAILURES above'); reports in $WORK"
exit $status
