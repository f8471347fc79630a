#!/usr/bin/env bash
# Issue 19's study (docs/results/README.md, "Adaptivity study"), sized for 2 CPU cores and built up run by run:
# `hadskip compare --seeds` reuses every finished run and continues a killed HadSkip run from its last phase, so
# run this again in each session (in the background) until it prints the last table. Nothing here needs a GPU.
#
#   scripts/study.sh                 # STUDY_ROOT (default runs/study) holds the teachers and every run
#
# Settings, fixed for every method and seed: the teacher fine-tuned 3 epochs on the whole training split; every
# student trains on the same 4,000 training examples (--train-examples: dev and test stay whole); HadSkip's
# stage II 0.5 epoch, stage III 0.5 epoch per homotopic phase and 1.5 for the last (3.5 epochs at K = 2,
# 3.0 at K = 3), every baseline as long; seeds 0-2; the per-layer and skip + exit variants and the oracle headroom
# (with its subset router) beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${STUDY_ROOT:-runs/study}
HS=${HADSKIP:-hadskip}
COMMON=(--train-examples 4000 --phase-epochs 0.5 --final-phase-epochs 1.5 --seeds 3 --variants per-layer,skip-exit --oracle
        --quiet)
mkdir -p "$ROOT"

teacher() {  # OUT [finetune options]: fine-tune once (a finished teacher is kept)
  local out=$1; shift
  [ -f "$out/run.json" ] || "$HS" finetune --out "$out" --epochs 3 --quiet "$@"
}

# 1. Rotten Tomatoes: budget 2 over every seed first (the issue's main question), then 3
teacher "$ROOT/rt-full"
"$HS" compare --teacher "$ROOT/rt-full" --budgets 2 --out "$ROOT/rt" "${COMMON[@]}"
"$HS" compare --teacher "$ROOT/rt-full" --budgets 2,3 --out "$ROOT/rt" "${COMMON[@]}"

# 2. a 3-class pair task: pairs of RT sentences, both-fresh / both-rotten / mixed (real text, synthetic labels)
[ -f "$ROOT/rt-pairs-data/test.jsonl" ] || python3 scripts/make_rt_pairs.py "$ROOT/rt-pairs-data" \
  --train 6000 --dev 1000 --test 1000 --seed 0
teacher "$ROOT/rt-pairs-full" --task "$ROOT/rt-pairs-data"
"$HS" compare --teacher "$ROOT/rt-pairs-full" --budgets 2,3 --out "$ROOT/rt-pairs" "${COMMON[@]}"
echo "study done: $ROOT/rt/compare.md, $ROOT/rt-pairs/compare.md"
