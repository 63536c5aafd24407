#!/usr/bin/env bash
# Accuracy parity of the two augmentation paths, seed by seed (docs/benchmarks.md section 4):
# ConCutMix with the 12-epoch preset cifar100-lt-short, data.augment_on = device and loader, for
# each training seed given (subset seed 0). Runs one training at a time; a finished run is skipped.
# Usage: bash benchmarks/parity_seeds.sh OUT_FOLDER "device:1 loader:0 loader:1"
set -euo pipefail
OUT=${1:-runs/parity}
RUNS=${2:-"device:0 loader:0 device:1 loader:1"}
SOURCE=${SOURCE:-../shared/data/cifar100.npz}
DATA=${DATA:-data/cifar100-lt-if100}
CLI=${CLI:-concutmix}
[ -f "$DATA/manifest.json" ] || $CLI prepare cifar100-lt --imbalance 100 --source "$SOURCE" --out "$DATA"
mkdir -p "$OUT"
for spec in $RUNS; do
  where=${spec%%:*}; seed=${spec##*:}; run="$OUT/$where-seed$seed"
  if [ -f "$run-eval.json" ]; then echo "done already: $run"; continue; fi
  rm -rf "$run"
  $CLI train --preset cifar100-lt-short --data "$DATA" --method concutmix --out "$run" \
    --set "data.augment_on=\"$where\"" --set "runtime.seed=$seed" 2>&1 | tee "$run.log"
  $CLI eval "$run" --json > "$run-eval.json.tmp" && mv "$run-eval.json.tmp" "$run-eval.json"
done
