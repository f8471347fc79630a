#!/usr/bin/env bash
# GPU check of hadskip: parity and speed of every GPU backend that can run here, in under 6 minutes on one
# NVIDIA GPU, downloading nothing. Meant to work the first time on a machine we have never seen:
#   install   the project from this tree (pip -e with no index and no deps, else a staged copy on PYTHONPATH);
#             wheels under .whl/ (if any) go to a private site dir first
#   versions  what is installed, what will be skipped and why
#   pytest    the GPU tests and the CPU checks of the GPU code (transformers 5 shapes, TensorRT stand-in, ...)
#   gates     bench/gpu_routing.py (issue 20): gates decided on the GPU in one graph per batch; parity vs ort-cpu,
#             then MiniLM-L6 / BERT-base / BERT-large shapes, fp32 and fp16, batch 1 and 32, seq 128: routed vs
#             forced-same-layers vs the full HF model as one CUDA graph (needs cuda-bindings 13.x: .whl/)
#   backends  bench/gpu_bench.py per backend: torch (CUDA graphs), torch-eager, ort-cuda, trt (fp16): parity with
#             PyTorch, then the routed runtime vs the full model at batch 1 and 32, seq 128, and the ratio to ideal
#   summary   one table, printed last
# Every step has a time limit inside one overall budget (HADSKIP_GPU_CHECK_BUDGET, default 330 s) and fails
# soft: the script goes on. Results go to $OUT (or the folder given as $1, else a temp dir) as they are made:
# gpu_check.log, junit.xml, parity-<backend>.json, bench-<backend>.json, routing.json, summary.json.
# HADSKIP_GPU_CHECK_DRY=1 runs it without a GPU: install, every step's skip path, and a CPU rehearsal of the
# parity/bench/summary code on a tiny model (its numbers are labelled and mean nothing about GPUs).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
start=$SECONDS
BUDGET=${HADSKIP_GPU_CHECK_BUDGET:-330}
RESERVE=20  # kept for the summary at the end
DRY=${HADSKIP_GPU_CHECK_DRY:-}
PY=${PYTHON:-python3}
RESULTS=${OUT:-${1:-$(mktemp -d -t hadskip-gpu-out-XXXXXX)}}
WORK=$(mktemp -d -t hadskip-gpu-work-XXXXXX)
mkdir -p "$RESULTS"
exec 3>&1 4>&2  # the original stdout/stderr, restored at the end so that tee can finish before we exit
exec > >(tee -a "$RESULTS/gpu_check.log") 2>&1
tee_pid=$!
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HADSKIP_CACHE="$WORK/cache"
STEPS=()   # "name|status|seconds" per step, printed before the summary
failed=0

step() { echo; echo "=== $* ($((SECONDS - start))s elapsed)"; }
left() { echo $((BUDGET - (SECONDS - start) - RESERVE)); }
# limited SECONDS NAME CMD...: run CMD for at most SECONDS (less if the budget is nearly spent), record how it went
limited() {
  local want=$1 name=$2; shift 2
  local budget_left; budget_left=$(left)
  local limit=$((want < budget_left ? want : budget_left))
  if [ "$limit" -lt 10 ]; then
    echo "SKIP $name: the ${BUDGET}s budget is spent"; STEPS+=("$name|not run (budget spent)|0"); return 0
  fi
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$@"
  local rc=$? status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT after ${limit}s"; failed=1
  elif [ $rc -ne 0 ]; then status="failed (exit $rc)"; failed=1; fi
  [ "$status" != ok ] && echo "$status: $name"
  STEPS+=("$name|$status|$((SECONDS - t0))")
  return 0
}

step "machine"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
elif "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "nvidia-smi is missing or failed, but torch sees a CUDA GPU: going on"
elif [ -n "$DRY" ]; then
  echo "no NVIDIA GPU; HADSKIP_GPU_CHECK_DRY is set: every GPU step runs its skip path (a dry run of this script)"
else
  echo "FAIL: no NVIDIA GPU here (nvidia-smi missing or finds no device); set HADSKIP_GPU_CHECK_DRY=1 for a dry run"
  exit 2
fi
echo "python: $($PY -c 'import sys; print(sys.version.split()[0], sys.executable)' 2>&1)"
echo "results: $RESULTS   work dir: $WORK   budget: ${BUDGET}s"

step "install the project from $ROOT (no index, no dependencies)"
if compgen -G ".whl/*.whl" >/dev/null; then  # wheels brought along for what the machine lacks
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl \
    && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" && echo "installed .whl/: $(ls .whl)"
fi
installed_here() {  # hadskip and its mapped subpackages import, from this tree (or its staged copy)
  "$PY" - "$ROOT" "$WORK/src" <<'EOF' 2>/dev/null
import os, sys
import hadskip, hadskip.runtime, hadskip.export, hadskip.cli  # noqa: E401
where = os.path.realpath(hadskip.runtime.__file__)
sys.exit(0 if any(where.startswith(os.path.realpath(r)) for r in sys.argv[1:]) else 1)
EOF
}
t0=$SECONDS
if installed_here; then
  how="already installed from this tree"
elif timeout 120 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$WORK/pip.log" 2>&1 \
    && installed_here; then
  how="pip install -e . (editable)"
else
  echo "pip install -e . did not work: $(grep -v '^\s*$' "$WORK/pip.log" | tail -1)"
  # stage the package-dir mapping with links instead; PYTHONSAFEPATH (Python >= 3.11) keeps the tree's own
  # hadskip/ (which lacks runtime/, export/, cli/) from shadowing it through the current directory
  export PYTHONSAFEPATH=1
  mkdir -p "$WORK/src/hadskip"
  for f in hadskip/*; do ln -sfn "$ROOT/$f" "$WORK/src/hadskip/"; done
  ln -sfn "$ROOT/export" "$WORK/src/hadskip/export"
  ln -sfn "$ROOT/runtime" "$WORK/src/hadskip/runtime"
  ln -sfn "$ROOT/cli" "$WORK/src/hadskip/cli"
  export PYTHONPATH="$WORK/src${PYTHONPATH:+:$PYTHONPATH}"
  how="staged copy on PYTHONPATH ($WORK/src), as pip -e did not work"
fi
if installed_here; then
  echo "hadskip importable: $how"; STEPS+=("install|ok: $how|$((SECONDS - t0))")
else
  echo "FAIL: hadskip still does not import from $ROOT:"; "$PY" -c "import hadskip.runtime" 2>&1 | tail -3
  STEPS+=("install|FAILED|$((SECONDS - t0))"); failed=1
fi

# cuda-bindings loads libnvrtc through cuda-pathfinder; where a wheel (torch's nvidia-cuda-nvrtc) holds it, put that
# folder on the loader's path too, so the system search finds it whatever pathfinder's search covers
nvrtc_dir=$("$PY" - <<'EOF' 2>/dev/null
import glob, os, site, sys
roots = [p for p in sys.path if p.endswith("site-packages")] + list(getattr(site, "getsitepackages", lambda: [])())
hits = sorted({os.path.dirname(f) for r in roots for f in glob.glob(os.path.join(r, "nvidia", "**", "libnvrtc.so*"),
                                                                     recursive=True)})
print(hits[-1] if hits else "")
EOF
)
[ -n "$nvrtc_dir" ] && export LD_LIBRARY_PATH="$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  && echo "libnvrtc: $nvrtc_dir (on LD_LIBRARY_PATH)"

step "versions, and what will be skipped"
limited 60 "versions" "$PY" - "$DRY" <<'EOF'
import importlib.util
import platform
import sys
from importlib import metadata


def version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


print(f"python {platform.python_version()} on {platform.machine()}")
for dist in ("torch", "transformers", "tokenizers", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "tensorrt",
             "pytest", "pytest-timeout", "optimum-onnx", "safetensors", "cuda-bindings", "cuda-pathfinder"):
    print(f"  {dist:16s} {version(dist) or '-'}")
if importlib.util.find_spec("torch"):
    import torch

    cuda = torch.cuda.is_available()
    print(f"torch CUDA {torch.version.cuda}, available: {cuda}" + (f", {torch.cuda.get_device_name()}" if cuda else ""))
    if cuda:
        print(f"torch fp32 matmul TF32: {torch.backends.cuda.matmul.allow_tf32} (False: full fp32, as our engines)")
import onnxruntime as ort

from hadskip.runtime.backends import memory

print(f"onnxruntime providers: {', '.join(ort.get_available_providers())}")
print(f"libcudart: loaded {memory.loaded_cudart() or 'none yet'}; CUDA majors wanted by ort/trt: "
      f"{list(memory.wanted_cuda_majors()) or 'none'}; GPUs seen by the CUDA runtime: {memory.cuda_device_count()}")
sys.path.insert(0, "bench")
from gpu_bench import BACKENDS, available  # noqa: E402

for b in BACKENDS:
    why = available(b)
    print(f"  {b:12s} {'WILL RUN' if why is None else 'WILL SKIP: ' + why}")
if importlib.util.find_spec("torch"):
    from hadskip.modeling.cuda_conditional import why_not

    for mode in ("dense", "compact"):
        why = why_not(torch.device("cuda"), mode)
        print(f"  gates on GPU, {mode:7s} {'WILL RUN' if why is None else 'host path: ' + why}")
if sys.argv[1:] and sys.argv[1]:
    print("dry run: a CPU rehearsal of the parity/bench/summary code runs after the backends")
EOF

step "pytest: the GPU tests, and the CPU checks of the GPU code under this machine's packages"
timeout_opt=()
"$PY" -c "import pytest_timeout" 2>/dev/null && timeout_opt=(--timeout=90)
# named files only: collecting the whole suite would import what this machine lacks (fastapi, datasets, ...)
limited 150 "pytest" "$PY" -m pytest -p no:cacheprovider -q -rs "${timeout_opt[@]}" --junitxml="$RESULTS/junit.xml" \
  tests/test_runtime_gpu.py tests/test_export_trt.py tests/test_layer_call.py tests/test_torch_graphs.py \
  tests/test_trt_api.py tests/test_cudart_search.py tests/test_gpu_options.py tests/test_gpu_bench.py \
  tests/test_cuda_conditional.py tests/test_torch_dtype.py

# issue 20 first: gates decided on the GPU; soft (a shape that fails writes its row and the next one runs)
step "gates decided on the GPU: parity, then routed vs forced vs the full model (bench/gpu_routing.py)"
limited 170 "device gates" "$PY" bench/gpu_routing.py --work "$WORK/routing" --out "$RESULTS"

# backend steps: name, time limit (s). More steps (e.g. a Triton server check) go in this list or after it,
# each as one `limited SECONDS NAME CMD...` line writing its own files under $RESULTS.
for spec in "torch 100" "torch-eager 60" "ort-cuda 70" "trt 120"; do
  set -- $spec
  step "backend $1: parity, then routed vs full at batch 1 and 32, seq 128"
  limited "$2" "backend $1" "$PY" bench/gpu_bench.py --work "$WORK" --out "$RESULTS" --backend "$1"
done

# Triton with KIND_GPU instances (ort-cuda / trt inside) vs serve-local on the model dir the ort-cuda step
# exported; soft: it skips without that model dir, without onnxruntime-gpu / tensorrt, or without the
# nvidia-pytriton and numpy 1.26 wheels in the hadskip cache (the GPU machine downloads nothing).
step "Triton: GPU instances vs serve-local (scripts/gpu_triton_step.sh)"
if [ -f "$WORK/model/manifest.json" ]; then
  limited 150 "triton" env PYTHON="$PY" TRITON_STEP_LIMIT_S=70 TRITON_STEP_REQUESTS=500 \
    scripts/gpu_triton_step.sh "$WORK/model" "$RESULTS"
else
  echo "SKIP triton: no exported model dir ($WORK/model: the ort-cuda step writes it)"; STEPS+=("triton|skipped|0")
fi

if [ -n "$DRY" ]; then
  step "CPU rehearsal of the backend step (tiny model; checks the code path, not the GPU)"
  limited 120 "cpu rehearsal" "$PY" bench/gpu_bench.py --work "$WORK" --out "$RESULTS" --backend torch \
    --device cpu --shape tiny --batch 1,4 --seq 16 --repeats 3
  step "CPU rehearsal of the device-gates step (cuda-bindings played by tests/cuda_standin.py, the kernel built by g++)"
  limited 120 "gates rehearsal" "$PY" bench/gpu_routing.py --work "$WORK/routing-cpu" --out "$RESULTS" --rehearsal \
    --batch 1,4 --seq 16 --repeats 3
fi

step "done in $((SECONDS - start))s: $([ $failed -eq 0 ] && echo 'no step failed' || echo 'FAILURES above')"
for s in "${STEPS[@]}"; do IFS='|' read -r name status secs <<<"$s"; printf '  %-20s %-60s %4ss\n' "$name" "$status" "$secs"; done
echo "results in $RESULTS: $(cd "$RESULTS" && ls | tr '\n' ' ')"
echo
echo "=== summary"
"$PY" bench/gpu_bench.py --summary "$RESULTS" || echo "(no summary table: see the log above)"
"$PY" bench/gpu_routing.py --table "$RESULTS" || true
exec 1>&3 2>&4 3>&- 4>&-
wait "$tee_pid" 2>/dev/null
exit $failed
