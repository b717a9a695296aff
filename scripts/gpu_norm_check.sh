#!/usr/bin/env bash
# One device call for the one-kernel RMSNorm + pack hand-over (fusion.py): its GPU tests and the generation GPU
# tests, then the decode step of a random-init shape with and without the norm kernels (A/B in one process each,
# FP16 and W6A8), then flexq bench --e2e. Logs and JSON land in $OUT. Usage: scripts/gpu_norm_check.sh [SHAPE]
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SHAPE=${1:-llama-2-7b}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -m pytest -q -m gpu tests/test_norm_gpu.py tests/test_generate_gpu.py 2>&1 | tee "$OUT/tests.log" | tail -15
for b in 1 16; do
  for flag in --no-norms ""; do
    python3 scripts/gpu_decode_profile.py "$SHAPE" $b $flag --top 12 2>&1 | tee -a "$OUT/profile.log" | grep -E "^==|rmsnorm|silu|act_pack|act_quant"
  done
done
if [[ ${SKIP_E2E:-0} != 1 ]]; then
  python3 -m flexq_cli bench --e2e "$SHAPE" --random-init --json "$OUT/e2e-$SHAPE.json" 2>&1 | tee "$OUT/e2e-$SHAPE.log" | tail -25
fi
