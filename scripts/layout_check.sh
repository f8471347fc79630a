#!/usr/bin/env bash
# Behaviour fingerprint of the core on a tiny deterministic run: finetune, train, eval, dial, compare.
# usage: scripts/layout_check.sh OUT_DIR  (writes OUT_DIR/sha256.txt and the JSON reports; compare two OUT_DIRs
# with `diff -r` on their *.json and sha256.txt). Takes about a minute on 2 cores.
set -euo pipefail
OUT=$(realpath -m "$1"); PY=${PY:-python}
rm -rf "$OUT/work"; mkdir -p "$OUT/work"
W="$OUT/work"
"$PY" -c "from hadskip.testing import tiny_backbone_dir, tiny_task_dir; tiny_backbone_dir('$W/backbone'); tiny_task_dir('$W/task')"
H="$PY -m hadskip.cli.main"
$H finetune --out "$W/ft" --backbone "$W/backbone" --task "$W/task" --epochs 2 --batch-size 16 --max-len 32 --seed 0 --json --quiet > "$OUT/finetune.json"
$H train --out "$W/hs" --teacher "$W/ft" --task "$W/task" --budget 2 --stage2-epochs 0.5 --phase-epochs 0.5 --final-phase-epochs 1 \
    --batch-size 16 --max-len 32 --seed 0 --json --quiet > "$OUT/train.json"
for r in ft hs; do for s in dev test; do
  $H eval "$W/$r" --split $s --no-plots --json > "$OUT/eval-$r-$s.json"
done; done
$H dial "$W/hs" --json --quiet > "$OUT/dial.json"
$H compare --teacher "$W/ft" --budgets 2 --out "$W/cmp" --hadskip "2=$W/hs" --baseline-epochs 0.5 --json --quiet > "$OUT/compare.json"
(cd "$W" && find . -name model.safetensors | sort | xargs sha256sum) > "$OUT/sha256.txt"
# wall-clock fields differ between runs by nature: drop them before comparing
"$PY" - "$OUT" <<'PY'
import json, sys, pathlib
for p in pathlib.Path(sys.argv[1]).glob("*.json"):
    d = json.loads(p.read_text())
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("seconds", "peak_rss_mb", "path", "plot")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    p.with_suffix(".norm").write_text(json.dumps(strip(d), indent=1, sort_keys=True))
PY
cat "$OUT/sha256.txt"
