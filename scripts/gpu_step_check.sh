#!/usr/bin/env bash
# One device call: where the decode step of a random-init shape spends its time (FP16 and W6A8, batch 1 and 16,
# top kernels), then the BTC tile sweep (--tune) and the kernel bench on the shapes decoding runs after q/k/v and
# gate/up fusion (kernel_bench's "fused" group). Logs and JSON land in $OUT.
# Usage: scripts/gpu_step_check.sh [SHAPE]   (SKIP_PROFILE=1 / SKIP_TUNE=1 leave a part out)
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SHAPE=${1:-llama-2-7b}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
if [[ ${SKIP_PROFILE:-0} != 1 ]]; then
  for b in 1 16; do
    python3 scripts/gpu_decode_profile.py "$SHAPE" $b --top 45 2>&1 | tee -a "$OUT/profile.log"
  done
fi
if [[ ${SKIP_TUNE:-0} != 1 ]]; then
  timeout 330 python3 -m flexq_cli.kernel_bench --tune --models fused --ms 1,2,4,8 --repeats 30 \
    --json "$OUT/fused-bench.json" 2>&1 | tee "$OUT/tune.log" | grep -v "^REJECTED" | tail -40
fi
