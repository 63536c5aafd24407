#!/usr/bin/env bash
# The short real-data benchmark of docs/benchmarks.md: ConCutMix and CE on CIFAR-100-LT IF 100
# with the same 12-epoch schedule (preset cifar100-lt-short), one after the other, on this machine.
# Usage: bash benchmarks/short_cifar100.sh [OUT_FOLDER] [extra train options...]
set -euo pipefail
OUT=${1:-runs/short}; shift || true
SOURCE=${SOURCE:-../shared/data/cifar100.npz}
DATA=${DATA:-data/cifar100-lt-if100}
CLI=${CLI:-concutmix}
[ -f "$DATA/manifest.json" ] || $CLI prepare cifar100-lt --imbalance 100 --source "$SOURCE" --out "$DATA"
mkdir -p "$OUT"
for method in concutmix ce; do
  $CLI train --preset cifar100-lt-short --data "$DATA" --method "$method" --out "$OUT/$method" \
    --set 'data.augment_on="device"' "$@" 2>&1 | tee "$OUT/$method.log"
  $CLI eval "$OUT/$method" --json > "$OUT/$method-eval.json"
done
