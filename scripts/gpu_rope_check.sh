#!/usr/bin/env bash
# One device call for the rotary + static-cache kernel (modules.KernelAttention): its GPU tests with the norm and
# generation GPU tests, the decode step with and without it (A/B in one process each, FP16 and W6A8, batch 1 and
# 16), then flexq bench --e2e. Logs and JSON land in $OUT. Usage: scripts/gpu_rope_check.sh [SHAPE]
# FLAGS="--bool-mask -" compares another gpu_decode_profile.py flag with the default build instead.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SHAPE=${1:-llama-2-7b}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -m pytest -q -m gpu tests/test_rope_gpu.py tests/test_norm_gpu.py tests/test_generate_gpu.py 2>&1 \
  | tee "$OUT/tests.log" | tail -15
for b in 1 16; do
  for flag in ${FLAGS:---no-rope -}; do  # "-": the default build
    [[ $flag == - ]] && flag=""
    python3 scripts/gpu_decode_profile.py "$SHAPE" $b $flag --top 14 2>&1 | tee -a "$OUT/profile.log" | grep -v Warn
  done
done
if [[ ${SKIP_E2E:-0} != 1 ]]; then
  python3 -m flexq_cli bench --e2e "$SHAPE" --random-init --json "$OUT/e2e-$SHAPE.json" 2>&1 | tee "$OUT/e2e-$SHAPE.log" | tail -25
fi
