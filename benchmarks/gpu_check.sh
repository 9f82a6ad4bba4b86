#!/usr/bin/env bash
# Everything this project wants to know from a GPU, in one run of under 8 minutes:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (from the repository root; OUT_DIR default /tmp)
#
# 1. the device; 2. the CUDA-marked tests (bf16 autocast, the LSTM kept out of fp16, compile,
# fused AdamW, resume, incremental = full forward, one host sync per update, latency dtypes);
# 3. the gcnn-14 training step at WikiText-103's vocabulary: tokens/s and MFU against a bf16
# matrix product measured in the same run, torch.compile off and on; 4. the paper's Table 4 on
# the GPU (gcnn-8b vs lstm-2048, bf16 and fp32); 5. gcnn-small trained on WikiText-2 for 2
# minutes. Every step's output goes to the terminal and to OUT_DIR/gpu_check.log; a failing step
# is reported and the others still run.
#
# WikiText-2 is read from $GCNN_DATA, else ./shared/data (copy ../shared/data/wikitext-2 there
# before sending the tree to a GPU machine: shared/ travels with the checkout, and is ignored by
# git); without it step 5 is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-/tmp}}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
export GCNN_DATA="${GCNN_DATA:-$PWD/shared/data}"
export GCNN_CACHE="${GCNN_CACHE:-/tmp/gcnn-cache}"
failed=()

step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "=== $name FAILED (exit $rc)" | tee -a "$LOG"; failed+=("$name"); }
}

: >"$LOG"
step device 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; \
  $PY -c 'import torch; p = torch.cuda.get_device_properties(0); \
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"|\", p.name, p.multi_processor_count, \"SMs\")'"
step cuda-tests 200 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider
step gcnn14-step 150 "$PY" benchmarks/bench_train_step.py --device cuda --shapes gcnn-14 \
  --compile --no-plain --rounds 5
step latency-bf16 60 "$PY" evaluate.py latency gcnn-8b lstm-2048 --device cuda --precision bf16 \
  --repeats 20
step latency-fp32 60 "$PY" evaluate.py latency gcnn-8b lstm-2048 --device cuda --precision fp32 \
  --repeats 20
if [ -d "$GCNN_DATA/wikitext-2" ]; then
  step train-2min 160 "$PY" train.py --device cuda --max-minutes 2 --max-updates 100000 \
    --valid-every 500 --out "$OUT/gpu-gcnn-small" --no-progress
else
  echo "=== train-2min skipped: no $GCNN_DATA/wikitext-2" | tee -a "$LOG"
fi
echo "=== done $(date -u +%H:%M:%S); failed: ${failed[*]:-none}" | tee -a "$LOG"
[ ${#failed[@]} -eq 0 ]
