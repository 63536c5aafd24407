#!/usr/bin/env bash
# The fidelity check of docs/benchmarks.md section 1: the first 8 epochs of the published
# cifar100-lt-if100 recipe (the milestones are at 160/180, so --epochs 8 keeps the published lr of
# those epochs) on the authors' subset (seed 10), with the linear classifier of the published runs
# and, for comparison, the cosine one; then the table beside the authors' logs.
# Both runs go side by side with one thread each (about 40 minutes on a 2-core CPU).
# Usage: [SEED=0] bash benchmarks/fidelity8.sh [OUT_FOLDER]   (SEED: the training seed)
set -euo pipefail
OUT=${1:-runs/fidelity8}
SOURCE=${SOURCE:-../shared/data/cifar100.npz}
DATA=${DATA:-data/cifar100-lt-if100-seed10}
CLI=${CLI:-concutmix}
SEED=${SEED:-0}
PY=${PY:-python3}
[ -f "$DATA/manifest.json" ] || $CLI prepare cifar100-lt --imbalance 100 --seed 10 --source "$SOURCE" --out "$DATA"
mkdir -p "$OUT"
for classifier in linear cosine; do
  OMP_NUM_THREADS=1 $CLI train --preset cifar100-lt-if100 --data "$DATA" --epochs 8 --seed "$SEED" \
    --set 'data.augment_on="device"' --set "model.classifier=\"$classifier\"" \
    --out "$OUT/$classifier" > "$OUT/$classifier.log" 2>&1 &
done
wait
$PY "$(dirname "$0")/fidelity_curve.py" "$OUT/linear" "$OUT/cosine"
