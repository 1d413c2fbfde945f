#!/usr/bin/env bash
# Everything this project measures on a GPU, as one prepared script for a lent GPU machine
# (the device tool: 15 minutes of device time per task, start-up included). Steps run in order of
# what is most needed; each has its own time limit, so one that hangs cannot eat the others' time,
# and each writes its JSON and log under $OUT as soon as it ends.
#
#   OUT=/tmp/gpu bash bench/gpu_check.sh            # on the GPU machine (the device tool sets $OUT)
#   DEVICE=cpu QUICK=1 OUT=/tmp/dry bash bench/gpu_check.sh   # dry run of every command on the CPU
#
# Afterwards, merge $OUT/accuracy_<device>.json's rows into bench/results/accuracy.json (and its
# runs log into accuracy_runs.jsonl), copy the other JSON into bench/results/, and commit them with
# the machine they name.
set -u
DEVICE=${DEVICE:-cuda}
OUT=${OUT:?set OUT to the folder that comes back}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, record the exit status
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$OUT/steps.txt"
}

python - <<'EOF' > "$OUT/machine.txt" 2>&1
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0))
EOF

if [ "$QUICK" = 1 ]; then
  TESTS="tests/test_stacked.py::test_stacked_adamw_is_torch_adamw_per_model"
  TRAIN=(--windows 2000 --steps 2 --warmup 1 --repeats 1 --run-epochs 1 --stack-folds 2 --stack-seeds 1)
  LAT=(--repeats 100 --warmup 2 --models tiny_ws)
  ACC=(--seeds 0 --epochs 1)
else
  TESTS="tests/test_graphs.py tests/test_augment.py tests/test_train.py tests/test_evaluate.py tests/test_doctor.py tests/test_stacked.py"
  TRAIN=(--stack-folds 6 --stack-seeds 3 --stack-epochs 5)
  LAT=(--models tiny_ws seed)
  ACC=()
fi

# 1. The tests that need a GPU (and the stacked trainer's tests on the machine's CPU).
step tests 240 python -m pytest -q -p no:cacheprovider -x $TESTS
# 2. Training throughput: on-device trainer vs DataLoader vs CUDA-graph trainer, 100 real epochs, 18 CV models stacked vs sequential.
step bench_train 300 python bench/bench_train.py --devices "$DEVICE" --models tiny_ws seed "${TRAIN[@]}" \
  --out "$OUT/train_$DEVICE.json"
# 3. Latency: eager vs TorchScript vs CUDA graph at batch 1 and 256.
step bench_latency 120 python bench/bench_latency.py --device "$DEVICE" "${LAT[@]}" --out "$OUT/latency_$DEVICE.json"
# 4. Accuracy rows on the GPU (users 29-36, 3 seeds): CPU and GPU must tell the same story.
step accuracy_default 240 python bench/bench_accuracy.py --models tiny_ws --recipe default --protocols users29-36 \
  --device "$DEVICE" --work "$OUT/acc-work" --out "$OUT/accuracy_$DEVICE.json" \
  --runs-log "$OUT/accuracy_runs_$DEVICE.jsonl" "${ACC[@]}"
step accuracy_seed 240 python bench/bench_accuracy.py --models seed --recipe article --protocols users29-36 \
  --device "$DEVICE" --work "$OUT/acc-work" --out "$OUT/accuracy_$DEVICE.json" \
  --runs-log "$OUT/accuracy_runs_$DEVICE.jsonl" "${ACC[@]}"
rm -rf "$OUT/acc-work"
cat "$OUT/steps.txt"
