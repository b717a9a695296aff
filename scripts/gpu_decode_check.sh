#!/usr/bin/env bash
# One device call for the decode path's own kernels (norm/SiLU, rotary + cache, fusion; modules.Kernel*): their GPU
# tests with the generation GPU tests, then the decode step A/B of gpu_decode_profile.py flags against the default
# build (one process per variant, FP16 and W6A8, batch 1 and 16), then flexq bench --e2e. Logs and JSON in $OUT.
# Usage: [FLAGS="--no-rope -"] scripts/gpu_decode_check.sh [SHAPE]   ("-" is the default build; e.g. FLAGS="--no-norms -"
# for the norm and SiLU kernels, FLAGS="--bool-mask -" for the attention mask; SKIP_E2E=1 leaves the bench out)
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
