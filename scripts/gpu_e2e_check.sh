#!/usr/bin/env bash
# One device call: the generation GPU tests, then flexq bench --e2e on a random-init LLaMA-2-7B.
# Logs and JSON land in $OUT. Usage: scripts/gpu_e2e_check.sh [SHAPE]
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SHAPE=${1:-llama-2-7b}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -m pytest -q -m gpu tests/test_generate_gpu.py 2>&1 | tee "$OUT/test_generate_gpu.log" | tail -15
python3 -m flexq_cli bench --e2e "$SHAPE" --random-init --json "$OUT/e2e-$SHAPE.json" 2>&1 | tee "$OUT/e2e-$SHAPE.log" | tail -25
