#!/usr/bin/env bash
# The CPU rehearsal of a GPU window (docs/benchmarks.md section 9), as near to the card's machine
# as a CPU gets, so that no GPU minute is spent on a bug a CPU run finds:
#   bash benchmarks/gpu_rehearse.sh first    # window 1 at tiny sizes (REHEARSE=1)
#   bash benchmarks/gpu_rehearse.sh second   # window 2, restoring window 1's archives (.runs-in)
#   bash benchmarks/gpu_rehearse.sh suite    # the whole test suite under that Python (GPU tests skip)
# 1. A Python like the device image's (KINDS.md): CPython 3.12, torch 2.11.0, torchvision 0.26.0,
#    numpy, safetensors, rich, typer, matplotlib, tensorboard, onnx, pytest; no pydantic, which
#    device_env.sh installs from .whl/ as it does on the card. Made once in VENV (about 5 GB, a
#    CUDA build of torch that runs on the CPU; a minute or two from the registry).
# 2. A copy of the working tree as the device tool sends it: tracked files, untracked files git
#    does not ignore, and the carried .devdata and .whl (benchmarks/gpu_prepare.sh makes them);
#    for `second`, also .runs-in with the <id>.tgz that `first` returned.
# 3. benchmarks/gpu_window.sh in that copy, REHEARSE=1, python3 being VENV's. What it returns lies
#    in REHEARSAL/out-first or REHEARSAL/out-second (the device tool's files_at). `suite` runs
#    pytest there instead, with pydantic and the package installed in VENV (the windows then take
#    them out again), to find an API newer than the card's torch in any code the suite reaches.
# Environment: DEVICE_VENV (default /tmp/concutmix-device-venv), REHEARSAL_DIR (default
# /tmp/concutmix-rehearsal), PYTHON312 (the interpreter to make the venv from); STAGES, ROWS, STEP,
# BUDGET pass to gpu_window.sh (`second` defaults to STEP=sync_free ROWS=r01,r10: a given mode, one
# restored row, one new row). Both folders are this script's own (a marker file says so): a folder
# of those names that is not is refused, never emptied.
set -euo pipefail
cd "$(dirname "$0")/.."
WINDOW=${1:-}
case "$WINDOW" in
  first|second|suite) ;;
  *) echo "usage: bash benchmarks/gpu_rehearse.sh first|second|suite" >&2; exit 2 ;;
esac
VENV=${DEVICE_VENV:-/tmp/concutmix-device-venv}
REHEARSAL=${REHEARSAL_DIR:-/tmp/concutmix-rehearsal}
for dir in "$VENV" "$REHEARSAL"; do  # ours (marked), or absent, or empty: nothing else is removed
  if [ -e "$dir" ] && [ ! -e "$dir/.concutmix-rehearsal" ] && [ -n "$(ls -A "$dir" 2>/dev/null || echo x)" ]; then
    echo "error: $dir is not a folder this script made (no .concutmix-rehearsal in it): give another" >&2
    exit 2
  fi
done
[ -f .devdata/cifar100-lt-if100-seed10.tar.xz ] && [ -d .whl ] || {
  echo "error: .devdata or .whl missing: run bash benchmarks/gpu_prepare.sh first" >&2; exit 2; }
if [ "$WINDOW" = second ] && ! ls "$REHEARSAL"/out-first/r*.tgz >/dev/null 2>&1; then
  echo "error: no run archives (r*.tgz) in $REHEARSAL/out-first: rehearse window 1 first" >&2; exit 2
fi

# The image's versions where KINDS.md gives them (torch, torchvision, numpy, safetensors).
PACKAGES="torch==2.11.0 torchvision==0.26.0 numpy==2.5.2 safetensors==0.8.0 rich typer matplotlib
tensorboard onnx onnxscript onnxruntime pytest hypothesis"
if [ "$(cat "$VENV/.packages" 2>/dev/null)" != "$PACKAGES" ]; then
  rm -rf "$VENV"  # made again whole: .packages is written last, on success
  if [ -z "${PYTHON312:-}" ]; then  # on PATH, else pyenv's (its shim answers only where selected)
    if python3.12 -V >/dev/null 2>&1; then PYTHON312=python3.12
    else PYTHON312=$(ls -d "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1); fi
  fi
  [ -n "$PYTHON312" ] || { echo "error: no CPython 3.12 here (set PYTHON312)" >&2; exit 2; }
  "$PYTHON312" -m venv "$VENV"  # in place: a venv's scripts name its path, it cannot move
  touch "$VENV/.concutmix-rehearsal"
  # shellcheck disable=SC2086
  "$VENV/bin/python3" -m pip install -q $PACKAGES 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python3" -c "import torch, torchvision, numpy, typer" && echo "$PACKAGES" > "$VENV/.packages"
fi
"$VENV/bin/python3" -c "import torch, sys; print('device-like Python', sys.version.split()[0], 'torch', torch.__version__)"

TREE=$REHEARSAL/tree-$WINDOW
OUT=$REHEARSAL/out-$WINDOW
mkdir -p "$REHEARSAL" && touch "$REHEARSAL/.concutmix-rehearsal"
rm -rf "$TREE" "$OUT" && mkdir -p "$TREE" "$OUT"
git ls-files -z -co --exclude-standard | xargs -0 cp --parents -t "$TREE"
cp -r .devdata .whl "$TREE/"
[ -d ../shared ] && ln -sfn "$(cd ../shared && pwd)" "$REHEARSAL/shared"  # the real-data tests' ../shared
if [ "$WINDOW" = second ]; then
  mkdir "$TREE/.runs-in" && cp "$REHEARSAL"/out-first/r*.tgz "$TREE/.runs-in/"  # the runs' archives, not window.tgz
  export STEP=${STEP:-sync_free} ROWS=${ROWS:-r01,r10} RESTORE=.runs-in
fi
cd "$TREE"
status=0
# The windows see the image's packages alone (pydantic comes from .whl/ through device_env.sh);
# the suite also needs pydantic and the `concutmix` command in the environment, as `make test` has.
if [ "$WINDOW" = suite ]; then
  "$VENV/bin/python3" -m pip install -q --no-index --no-deps .whl/*.whl
  "$VENV/bin/python3" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
  PATH="$VENV/bin:$PATH" python3 -m pytest -p no:cacheprovider | tee "$OUT/pytest.log" || status=$?
else
  "$VENV/bin/python3" -m pip uninstall -q -y concutmix pydantic pydantic_core annotated-types typing-inspection \
    2>&1 | grep -v "^WARNING: Skipping" || true
  env PATH="$VENV/bin:$PATH" OUT="$OUT" REHEARSE=1 bash benchmarks/gpu_window.sh "$WINDOW" || status=$?
fi
echo "rehearsal ($WINDOW): exit $status in $SECONDS s; returned: $(ls "$OUT" | tr '\n' ' ')"
exit "$status"
