#!/usr/bin/env bash
# One GPU window of issue 22 (docs/benchmarks.md, "The GPU windows"), from the repository root:
#   bash benchmarks/gpu_window.sh first    # step modes, a short real run, then reproduction rows
#   bash benchmarks/gpu_window.sh second   # speed options, ImageNet scale, nccl, device tests, rows
# The stages run most important first, each only if it fits the time left (BUDGET seconds from
# the start, default 570, for a device call of timeout_s 600). What is kept goes to $OUT, at
# most 8 files, refreshed after every stage so that a call cut short still returns them:
#   window.tgz            the working folder WORK (logs, JSON, metrics; no weights)
#   <date>-<card>.json    every figure of the window (benchmarks/gpu_window.py results)
#   <id>.tgz              one per reproduction run (benchmarks/reproduce.py --archive)
# Environment: STAGES (the list, overriding first/second), ROWS (reproduction rows in order),
# STEP (runtime.step of the runs; default: the one this window's modes stage picks, else eager),
# RESTORE (a folder of <id>.tgz from an earlier window), REHEARSE=1 (the CPU rehearsal: the same
# stages at tiny sizes, the synthetic --tiny rows). Needs .devdata/cifar100-lt-if100-seed10.tar.xz
# (or the prepared folder) and, where pydantic is missing, the wheels in .whl/ (device_env.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
BUDGET=${BUDGET:-570}
RESERVE=25                      # the last seconds: archives, the record, window.tgz
OUT=${OUT:-runs/gpu-window-out}
WORK=${WORK:-runs/gpu-window}
DATA=data/cifar100-lt-if100-seed10
REHEARSE=${REHEARSE:-0}
STEP_GIVEN=${STEP:-}
case "${1:-first}" in
  first) STAGES=${STAGES:-"modes solo reproduce"}; ROWS=${ROWS:-r01,r03,r04,r08,r09} ;;
  second) STAGES=${STAGES:-"options solo imagenet nccl tests reproduce"}; ROWS=${ROWS:-r01,r03,r04,r08,r09,r10,r11} ;;
  *) echo "usage: bash benchmarks/gpu_window.sh first|second" >&2; exit 2 ;;
esac
mkdir -p "$OUT" "$WORK"
. benchmarks/device_env.sh
PY=python3
if [ "$REHEARSE" = 1 ]; then
  SMALL=(--device cpu --batch-size 16 --steps 2 --warmup 1 --rounds 1 --profile-steps 1)
  EQ_SMALL=(--device cpu --batch-size 16)
  RUN_SMALL=(--set 'runtime.device="cpu"' --set optim.batch_size=16 --set runtime.max_steps_per_epoch=2)
  TINY=(--tiny)
else
  SMALL=(); EQ_SMALL=(); RUN_SMALL=(); TINY=()
fi

left() { echo $((BUDGET - RESERVE - (SECONDS - T0))); }
fits() {  # fits SECONDS NAME: is there time for a stage that may take SECONDS?
  if [ "$(left)" -ge "$1" ]; then return 0; fi
  echo "== $2: skipped, $(left) s left" | tee -a "$WORK/stages.txt"; return 1
}
keep() {  # the record and window.tgz into $OUT, after every stage
  record=$($PY benchmarks/gpu_window.py results "$WORK" --into "$OUT" 2>>"$WORK/record.err")
  tar -czf "$OUT/.window.tgz.tmp" -C "$WORK" --exclude=checkpoints --exclude='*.safetensors' \
    --exclude='*.pt' . && mv "$OUT/.window.tgz.tmp" "$OUT/window.tgz"
  echo "   kept: ${record:-no record} ($(left) s left)"
}
throughput() {  # throughput NAME extra args...: benchmarks/throughput.py, one JSON line
  local name=$1; shift
  timeout 45 $PY benchmarks/throughput.py --data "$DATA" --method concutmix --augment-on device \
    "${SMALL[@]}" "$@" --json 2>"$WORK/throughput-$name.err" | tail -1 > "$WORK/throughput-$name.json"
  echo "   $name: $(cut -c1-160 "$WORK/throughput-$name.json") $(tail -1 "$WORK/throughput-$name.err" | cut -c1-200)"
}

stage_modes() {  # do eager, sync_free and graphed train the same model, and how fast is each?
  fits 60 modes || return 0
  timeout 75 $PY benchmarks/step_equality.py --data "$DATA" --steps "${EQ_STEPS:-24}" \
    "${EQ_SMALL[@]}" --json 2>"$WORK/step-equality.err" | tail -1 > "$WORK/step-equality.json"
  echo "   equality: $(cat "$WORK/step-equality.json") $(tail -1 "$WORK/step-equality.err" | cut -c1-200)"
  for mode in eager sync_free graphed; do
    [ "$mode" = graphed ] && [ "$CUDA" != 1 ] && continue
    fits 40 "throughput $mode" && throughput "$mode" --step "$mode"
  done
}

stage_solo() {  # a short real run alone: s/epoch of training and evaluation, rectified epochs too
  fits 60 solo || return 0
  rm -rf "$WORK/solo"
  timeout 120 $PY -m concutmix_cli train --preset cifar100-lt-if100 --data "$DATA" --out "$WORK/solo" \
    --epochs "${SOLO_EPOCHS:-4}" --set "runtime.step=\"$STEP\"" --set method.rectify_after_epoch=1 \
    "${RUN_SMALL[@]}" > "$WORK/solo.log" 2>&1
  echo "   solo: exit $?; $(tail -1 "$WORK/solo.log" | cut -c1-200)"
}

stage_options() {  # each speed option against the picked mode: does it earn its place?
  fits 40 "throughput $STEP" && throughput options-base --step "$STEP"
  fits 40 "epoch views off" && throughput epoch-views-off --step "$STEP" --set 'data.epoch_views="off"'
  fits 40 prefetch && throughput prefetch --step "$STEP" --set data.prefetch=true
  fits 40 "pageable staging" && throughput pageable --step "$STEP" --pageable-staging
}

stage_imagenet() {  # ImageNet-LT's preset through the loader path on synthetic photo-sized JPEGs
  fits 150 imagenet || return 0
  if [ "$REHEARSE" = 1 ]; then
    args=(--classes 8 --images 24 --workers 1,2 --batch-size 2 --steps 1 --warmup 1 --device cpu)
  else
    args=(--workers "${IMAGENET_WORKERS:-6,10,15}" --steps 6)
  fi
  timeout $(( $(left) < 260 ? $(left) : 260 )) $PY benchmarks/imagenet_scale.py --root /tmp/imagenet-synthetic \
    "${args[@]}" --json "$WORK/imagenet.json" > /dev/null 2>"$WORK/imagenet.err"
  echo "   imagenet: exit $?; $(tail -2 "$WORK/imagenet.err" | cut -c1-300)"
}

stage_nccl() {  # the GPU backend of torchrun: one process, two steps (gloo on a CPU rehearsal)
  fits 60 nccl || return 0
  rm -rf "$WORK/nccl"
  NCCL_DEBUG=INFO timeout 90 $PY -m torch.distributed.run --standalone --nproc_per_node 1 \
    -m concutmix_cli train --preset cifar100-lt-if100 --data "$DATA" --out "$WORK/nccl" --epochs 1 \
    --set runtime.max_steps_per_epoch=2 "${RUN_SMALL[@]}" > "$WORK/nccl.log" 2>&1
  rc=$?
  lines=$(grep -c "NCCL INFO" "$WORK/nccl.log")
  rows=$(cat "$WORK/nccl/metrics.jsonl" 2>/dev/null | wc -l)
  echo "{\"exit\": $rc, \"nccl_info_lines\": $lines, \"epochs\": $rows, \"result\": \"exit $rc, $rows epoch row(s), $lines NCCL INFO lines\"}" > "$WORK/nccl.json"
  echo "   nccl: $(cat "$WORK/nccl.json")"
}

stage_tests() {  # the device paths' tests on the card
  fits 90 tests || return 0
  timeout 120 $PY -m pytest -x -p no:cacheprovider tests/test_device_augment.py tests/test_device_plan.py \
    tests/test_device_batches.py tests/test_models.py tests/test_steps.py > "$WORK/tests.log" 2>&1
  rc=$?
  echo "{\"exit\": $rc, \"result\": \"$(tail -1 "$WORK/tests.log" | tr -d '"=' | sed 's/^ *//')\"}" > "$WORK/tests.json"
  echo "   tests: $(cat "$WORK/tests.json")"
}

stage_reproduce() {  # the reproduction rows: as many at once as finish in the time left
  fits 90 reproduce || return 0
  if [ -n "${RESTORE:-}" ]; then
    $PY benchmarks/reproduce.py "${TINY[@]}" --only "$ROWS" --restore "$RESTORE" --table-only > /dev/null 2>>"$WORK/reproduce.log"
  fi
  budget=$(left)
  read -r parallel rows < <($PY benchmarks/gpu_window.py plan "$WORK" --rows "$ROWS" \
    --left $((budget - 35)) "${TINY[@]}" 2>>"$WORK/reproduce.log")
  echo "   plan: ${rows:-nothing} ${parallel:-?} at once ($(tail -1 "$WORK/reproduce.log"))"
  [ -n "${rows:-}" ] || return 0
  mkdir -p "$WORK/archive"
  $PY benchmarks/reproduce.py "${TINY[@]}" --only "$rows" --parallel "$parallel" --step "$STEP" \
    --time-budget "$budget" --archive "$WORK/archive" --json "$WORK/table.json" >>"$WORK/reproduce.log" 2>&1
  rc=$?
  echo "{\"exit\": $rc}" > "$WORK/reproduce-exit.json"
  mv "$WORK"/archive/r*.tgz "$OUT"/ 2>/dev/null
  cp "$WORK/archive/table.md" "$WORK/table.md" 2>/dev/null
  grep -E "^(r[0-9]+: |left for|failed:|time budget|stop signal)" "$WORK/reproduce.log" | tail -12 | sed 's/^/   /'
}

# the device: written first, so that even a call cut short says what it ran on
$PY - "$WORK/device.json" <<'EOF'
import datetime, json, os, shutil, subprocess, sys
import torch, torchvision
cuda = torch.cuda.is_available()
smi = shutil.which("nvidia-smi")
driver = subprocess.run([smi, "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                        capture_output=True, text=True).stdout.strip() if smi else None
info = {"date": datetime.date.today().isoformat(), "card": torch.cuda.get_device_name() if cuda else "CPU",
        "cuda": int(cuda), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "driver_memory": driver, "cpu_count": os.cpu_count(),
        "mps_control": shutil.which("nvidia-cuda-mps-control") is not None}
open(sys.argv[1], "w").write(json.dumps(info) + "\n")
print(json.dumps(info))
EOF
CUDA=$($PY -c "import json; print(json.load(open('$WORK/device.json'))['cuda'])" 2>/dev/null || echo 0)
if ! $PY -c "import concutmix_cli.cli, concutmix_cli.engine.train" 2>"$WORK/import.err"; then
  echo "error: the package does not import on this machine (no stage run):"; tail -3 "$WORK/import.err"
  keep; exit 1  # seconds, not a window, spent on a missing package or API
fi
STEP=${STEP:-eager}
how=$([ -n "$STEP_GIVEN" ] && echo "given as STEP" || echo "default (the modes were not measured)")
echo "{\"step\": \"$STEP\", \"how\": \"$how\"}" > "$WORK/step.json"
for stage in $STAGES; do
  echo "== $stage ($(left) s left)" | tee -a "$WORK/stages.txt"
  "stage_$stage"
  if [ "$stage" = modes ] && [ -z "$STEP_GIVEN" ]; then
    STEP=$($PY benchmarks/gpu_window.py pick-step "$WORK" 2>>"$WORK/stages.txt")
    echo "   picked step: $STEP ($(tail -1 "$WORK/stages.txt"))"
    echo "{\"step\": \"$STEP\", \"how\": \"picked by this window\"}" > "$WORK/step.json"
  fi
  keep
done
echo "== summary"
[ -n "${record:-}" ] && $PY benchmarks/gpu_window.py summary "$record" | head -60
