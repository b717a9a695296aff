#!/usr/bin/env bash
# One device call: flexq bench --e2e on a random-init LLaMA shape, decode (128-token prompt, 256 new tokens, batch
# 1/4/16) and a 2048-token prefill (batch 1), optionally after the generation GPU tests.
# Logs and JSON land in $OUT. Usage: scripts/gpu_e2e_check.sh [SHAPE] [tests]
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SHAPE=${1:-llama-2-7b}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
if [[ ${2:-} == tests ]]; then
  python3 -m pytest -q -m gpu tests/test_generate_gpu.py 2>&1 | tee "$OUT/test_generate_gpu.log" | tail -15
fi
python3 -m flexq_cli bench --e2e "$SHAPE" --random-init --json "$OUT/e2e-$SHAPE.json" 2>&1 | tee "$OUT/e2e-$SHAPE.log" | tail -25
python3 -m flexq_cli bench --e2e "$SHAPE" --random-init --batches 1 --prompt-len 2048 --new-tokens 16 \
    --json "$OUT/e2e-$SHAPE-prefill2048.json" 2>&1 | tee "$OUT/e2e-$SHAPE-prefill2048.log" | tail -12
