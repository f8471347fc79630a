#!/usr/bin/env bash
# Triton on a GPU: one step of scripts/gpu_check.sh (called from there; runs alone too).
#   For each GPU backend that imports here (ort-cuda: onnxruntime-gpu; trt: tensorrt and engines in MODEL_DIR),
#   bench/triton_load.py writes a repository with 2 KIND_GPU instances on GPU 0, starts the nvidia-pytriton
#   wheel's tritonserver on 127.0.0.1, and loads it side by side with serve-local on the same backend
#   (answers checked against Runtime.predict). Results: OUT/triton-<backend>.json.
# Time-limited (each backend at most TRITON_STEP_LIMIT_S, default 240 s) and soft: a backend that cannot run
# prints SKIP with the reason, one that fails or runs out prints FAIL/TIMEOUT and the next still runs.
# Exit status: 0 when nothing failed (skips included), 1 otherwise.
# Needs: hadskip importable by $PYTHON, and the nvidia-pytriton 0.7.0 and numpy 1.26.4 wheels in the hadskip
# cache ($HADSKIP_CACHE/wheels) or a reachable package index.
# Usage: scripts/gpu_triton_step.sh MODEL_DIR [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:?usage: scripts/gpu_triton_step.sh MODEL_DIR [OUT]}"
OUT="${2:-${OUT:-$(mktemp -d -t hadskip-triton-XXXXXX)}}"
PY="${PYTHON:-python3}"
LIMIT="${TRITON_STEP_LIMIT_S:-240}"
REQUESTS="${TRITON_STEP_REQUESTS:-2000}"
mkdir -p "$OUT"
status=0

if [ ! -f "$MODEL/manifest.json" ]; then
  echo "SKIP triton: $MODEL is not a model dir (no manifest.json)"; exit 0
fi
if ! "$PY" -c "from hadskip.triton.local import install, stub_env; install(); stub_env()" 2>"$OUT/triton-install.err"; then
  echo "SKIP triton: the server could not be prepared: $(tail -n 1 "$OUT/triton-install.err")"; exit 0
fi

for backend in ort-cuda trt; do
  why=$("$PY" - "$backend" "$MODEL" <<'EOF'
import importlib.util, json, sys
backend, model = sys.argv[1], sys.argv[2]
if backend == "ort-cuda":
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("onnxruntime-gpu is not installed (pip install 'hadskip[gpu]')")
elif importlib.util.find_spec("tensorrt") is None:
    print("tensorrt is not installed (pip install 'hadskip[trt]')")
elif not json.load(open(f"{model}/manifest.json"))["units"].get("engines"):
    print("the model dir has no TensorRT engines (export it with --engine trt)")
EOF
)
  if [ -n "$why" ]; then echo "SKIP triton $backend: $why"; continue; fi
  echo "triton $backend: 2 GPU instances vs serve-local, $REQUESTS requests at concurrency 16 (limit ${LIMIT}s)"
  timeout --signal=TERM --kill-after=15 "$LIMIT" "$PY" bench/triton_load.py "$MODEL" --backend "$backend" \
    --instances 2 --requests "$REQUESTS" --concurrency 16 --time-limit-s $((LIMIT / 3)) --json \
    > "$OUT/triton-$backend.json" 2> "$OUT/triton-$backend.err"
  rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "TIMEOUT triton $backend: stopped after ${LIMIT}s (log: $OUT/triton-$backend.err)"; status=1
  elif [ $rc -ne 0 ]; then
    echo "FAIL triton $backend (exit $rc): $(tail -n 3 "$OUT/triton-$backend.err")"; status=1
  fi
  if [ -s "$OUT/triton-$backend.json" ]; then
    "$PY" - "$OUT/triton-$backend.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["rows"]:
    print(f"  {row['server']:<12} answered {row['answered']}/{r['requests']}  errors {sum(row['errors'].values())}  "
          f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  {row['throughput']:.0f} req/s  "
          f"rows/exec {row['rows_per_execution']:.2f}  label/layer mismatches "
          f"{row['label_mismatches']}/{row['layer_mismatches']}")
EOF
  fi
done
exit $status
