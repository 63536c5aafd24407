#!/usr/bin/env bash
# Readies, on the development machine, what a GPU window carries (docs/benchmarks.md section 9):
#   .devdata/FOLDER.tar.xz                     a prepared CIFAR-100-LT folder, by default
#                                              cifar100-lt-if100-seed10 (IF 100, the authors' subset
#                                              seed 10; 46 MiB); the machine cannot download
#   .whl/                                      pydantic and what it needs, for that machine's
#                                              Python 3.12 (its image has no pydantic)
# and checks that the working tree with both stays under the device call's 64 MiB. Idempotent:
# what is there already is kept. Both folders are ignored by git (.gitignore).
#   bash benchmarks/gpu_prepare.sh [FOLDER [CIFAR100_NPZ]]   # ../shared/data/cifar100.npz
#   bash benchmarks/gpu_prepare.sh cifar100-lt-if100-seed0      # r02's folder, for a later window
# One data folder a call: a second archive in .devdata fails the size check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
NAME=${1:-cifar100-lt-if100-seed10}
SOURCE=${2:-../shared/data/cifar100.npz}
if [[ ! $NAME =~ ^cifar100-lt-if([0-9]+)-seed([0-9]+)$ ]]; then
  echo "error: $NAME: give a folder named cifar100-lt-if<IF>-seed<SEED> (as reproduce.py names them)" >&2
  exit 2
fi
IMBALANCE=${BASH_REMATCH[1]}; SEED=${BASH_REMATCH[2]}
LIMIT=$((64 * 1024 * 1024))
WHEELS="pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
typing_extensions==4.16.0 typer==0.29.2"

mkdir -p .devdata
if [ ! -f ".devdata/$NAME.tar.xz" ]; then
  [ -f "$SOURCE" ] || { echo "error: $SOURCE: no CIFAR-100 archive (give its path)" >&2; exit 2; }
  [ -f "data/$NAME/manifest.json" ] || \
    "$PY" -m concutmix_cli prepare cifar100-lt --imbalance "$IMBALANCE" --seed "$SEED" --source "$SOURCE" \
      --out "data/$NAME" >/dev/null
  tar -cJf ".devdata/.$NAME.tar.xz.tmp" -C data "$NAME" && mv ".devdata/.$NAME.tar.xz.tmp" ".devdata/$NAME.tar.xz"
fi
if [ ! -d .whl ] || [ "$(ls .whl/*.whl 2>/dev/null | wc -l)" -lt 6 ]; then
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $WHEELS 2>&1 | grep -v "^WARNING: Location" || true
fi
"$PY" -m pip install -q --dry-run --target /tmp/gpu-prepare-check --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --only-binary=:all: --no-index --no-deps .whl/*.whl
carried=$( { git ls-files -z -co --exclude-standard | xargs -0 stat -c %s; find .devdata .whl -type f -exec stat -c %s {} +; } \
  | awk '{s += $1} END {print s}')
echo "carried: $(awk -v b="$carried" 'BEGIN {printf "%.1f", b / 1048576}') MiB of 64 ($(ls .whl | wc -l) wheels, $(ls .devdata | tr '\n' ' '))"
if [ "$carried" -gt "$LIMIT" ]; then
  echo "error: over the device call's 64 MiB (one data folder a call: move the others out of .devdata)" >&2; exit 1
fi
echo "room for resume archives from an earlier window: $(((LIMIT - carried) / 1024 / 1024)) MiB"
