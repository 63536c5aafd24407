#!/usr/bin/env bash
# N seeds of a preset for each method, one training after the other, then `concutmix report`
# with mean +- std per method (what long-tailed papers report; one seed says little).
# Usage: bash benchmarks/seeds.sh PRESET [SEEDS] [extra train options...]
#   METHODS="ce concutmix" (default), OUT=runs/seeds/PRESET (default), CLI=concutmix (default).
# A run folder that already finished is kept and reported again, so an interrupted sweep
# continues where it stopped (an unfinished one is resumed).
set -euo pipefail
PRESET=${1:?usage: seeds.sh PRESET [SEEDS] [extra train options...]}; shift
SEEDS=${1:-3}; shift || true
METHODS=${METHODS:-ce concutmix}
OUT=${OUT:-runs/seeds/$PRESET}
CLI=${CLI:-concutmix}
mkdir -p "$OUT"
runs=()
for seed in $(seq 0 $((SEEDS - 1))); do
  for method in $METHODS; do
    run="$OUT/$method-s$seed"
    runs+=("$run")
    if [ -f "$run/config.json" ]; then
      $CLI train --resume "$run" "$@" 2>&1 | tail -n 1   # finished: says so; else continues
    else
      $CLI train --preset "$PRESET" --method "$method" --seed "$seed" --out "$run" "$@" \
        > "$run.log" 2>&1 || { cat "$run.log"; exit 1; }
      tail -n 2 "$run.log"
    fi
  done
done
$CLI report "${runs[@]}" --group-by method
$CLI report "${runs[@]}" --group-by method --markdown > "$OUT/report.md"
$CLI report "${runs[@]}" --json > "$OUT/report.json"
echo "written: $OUT/report.md, $OUT/report.json"
