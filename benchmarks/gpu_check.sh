#!/usr/bin/env bash
# One prepared GPU check (about 5-6 minutes on one H100/H200), run from the repository root.
# Most important first, so that a cut-short run still returns the essentials:
#   1. do the step modes train the same model? eager, sync_free and graphed on the same batches
#      (benchmarks/step_equality.py: weight differences, host syncs per mode),
#   2. throughput of the device path (ratio against the model-only ceiling, TFLOP/s) in each
#      step mode (views per epoch, data.epoch_views auto) and eager with per-step views; the
#      graphed ceiling is itself captured; epoch views against per-step views (identical?),
#   3. timed real epochs: the short CIFAR-100-LT schedule (cifar100-lt-short) for concutmix,
#      eager and graphed; last-epoch test accuracy of each (no accuracy change expected),
#   4. correctness of the device paths on the GPU (the CUDA-relevant test files).
# Prints a short table last (benchmarks/summarize_gpu_check.py). Results go to $OUT_DIR; when
# SNAPSHOT_TO is set, a tarball of the results (no resume states) is refreshed there after each stage.
#
# Needs the prepared CIFAR-100-LT IF 100 folder ($DATA, default data/cifar100-lt-if100) or the
# archive .devdata/cifar100-lt-if100.tar.xz of it; on images without pydantic, wheels in .whl/.
set -uo pipefail
OUT_DIR=${OUT_DIR:-gpu_check_out}
EPOCHS=${EPOCHS:-12}
DATA=${DATA:-data/cifar100-lt-if100}
STEPS=${STEPS:-20}
EXTRA=${EXTRA:-}
mkdir -p "$OUT_DIR"
. benchmarks/device_env.sh
if [ ! -f "$DATA/manifest.json" ] && [ -f .devdata/cifar100-lt-if100.tar.xz ]; then
  mkdir -p data && tar -xJf .devdata/cifar100-lt-if100.tar.xz -C data
fi
CLI="python3 -m concutmix_cli"

snapshot() {
  [ -n "${SNAPSHOT_TO:-}" ] || return 0
  python3 benchmarks/summarize_gpu_check.py "$OUT_DIR" > "$OUT_DIR/summary.md" 2>/dev/null
  tar -czf "$SNAPSHOT_TO/gpu_check.tgz.tmp" -C "$OUT_DIR" --exclude='checkpoints' . \
    && mv "$SNAPSHOT_TO/gpu_check.tgz.tmp" "$SNAPSHOT_TO/gpu_check.tgz"
}

throughput() {  # name, method, augment_on, extra throughput.py args...
  local name=$1 method=$2 augment=$3; shift 3
  timeout 90 python3 benchmarks/throughput.py --data "$DATA" --method "$method" --augment-on "$augment" \
    --steps "$STEPS" "$@" --json 2>"$OUT_DIR/throughput-$name.err" | tail -1 > "$OUT_DIR/throughput-$name.json"
  tail -12 "$OUT_DIR/throughput-$name.err"
  snapshot
}

run() {  # name, extra train args...
  local name=$1; shift
  rm -rf "${OUT_DIR:?}/$name"
  timeout 150 $CLI train --preset cifar100-lt-short --data "$DATA" --out "$OUT_DIR/$name" \
    --epochs "$EPOCHS" "$@" $EXTRA > "$OUT_DIR/$name.log" 2>&1
  echo "$name: exit $?"; tail -2 "$OUT_DIR/$name.log"
  snapshot
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
  date -u
} 2>&1 | tee "$OUT_DIR/device.txt"

echo "== 1. step modes: same weights?"
timeout 120 python3 benchmarks/step_equality.py --data "$DATA" --steps 24 --json \
  2>"$OUT_DIR/step-equality.err" | tail -1 > "$OUT_DIR/step-equality.json"
cat "$OUT_DIR/step-equality.json"; tail -5 "$OUT_DIR/step-equality.err"
snapshot
echo "== 2. throughput, device path, per step mode"
for mode in eager sync_free graphed; do
  throughput "$mode" concutmix device --step "$mode"
done
throughput eager-perstep concutmix device --step eager --set 'data.epoch_views="off"'
echo "== 2b. epoch views against per-step views on the GPU (bit-identical? ops per step, time)"
timeout 90 python3 benchmarks/views_overhead.py --data "$DATA" --batch-size 256 --steps 12 \
  --epoch-views epoch --device cuda --json 2>"$OUT_DIR/epoch-views.err" | tail -1 > "$OUT_DIR/epoch-views.json"
cat "$OUT_DIR/epoch-views.json"; tail -3 "$OUT_DIR/epoch-views.err"
snapshot
echo "== 3. short real runs ($EPOCHS epochs), eager and graphed"
run concutmix-eager --set 'runtime.step="eager"'
run concutmix-graphed --set 'runtime.step="graphed"'
echo "== 4. correctness on the GPU"
timeout 90 python3 -m pytest -q -x -p no:cacheprovider tests/test_device_augment.py tests/test_device_plan.py tests/test_models.py \
  tests/test_losses.py tests/test_rectify.py tests/test_syncfree.py 2>&1 | tail -4 | tee "$OUT_DIR/tests.txt"
snapshot

echo "== summary"
python3 benchmarks/summarize_gpu_check.py "$OUT_DIR" | tee "$OUT_DIR/summary.md"
