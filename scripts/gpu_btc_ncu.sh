#!/usr/bin/env bash
# Nsight Compute on the BTC GEMM at decode sizes: one process per shape runs btc_linear (tuned config) a few times,
# ncu reads the last btc_gemm launch (L2 flushed by ncu, clocks left alone). Key lines to stdout, reports in $OUT.
# Usage: scripts/gpu_btc_ncu.sh [M] [N:K ...]   (default M = 1, the LLaMA-2-7B decode shapes, fused q/k/v, gate/up)
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
M=${1:-1}; shift || true
SHAPES=${*:-12288:4096 4096:4096 22016:4096 4096:11008}
source scripts/ncu_common.sh
METRICS=$(ncu_metrics dram__bytes_read.sum,dram__bytes_write.sum,smsp__inst_executed.sum)
for s in $SHAPES; do
  n=${s%:*}; k=${s#*:}
  ncu_run btc_gemm 4 "$OUT/ncu-$n-$k-m$M.txt" "$METRICS" python3 - "$n" "$k" "$M" <<'PY'
import sys, torch
from flexq_cli import btc
from flexq_cli.kernel_bench import _layer
n, k, m = map(int, sys.argv[1:])
wq, ws, qweight, w16 = _layer(n, k)
x = torch.randn(m, k, device="cuda", dtype=torch.float16)
print("config", btc.choose_config(n, k + (-k) % 128, m, 8))
for _ in range(6):
    btc.btc_linear(x, qweight, ws, act_bits=8)
torch.cuda.synchronize()
PY
  echo "== $n x $k, M = $M"
  KEYS="config|Duration|DRAM Throughput|Memory Throughput|Registers Per|Block Size|Grid Size|Occupancy|Issue Slots"
  KEYS+="|Issued Warp Per|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued"
  KEYS+="|Dynamic Shared|Waves Per SM"
  KEYS+="|L2 Hit Rate|Mem Busy|Max Bandwidth|stalled|dram__bytes|inst_executed"
  grep -E "$KEYS" \
    "$OUT/ncu-$n-$k-m$M.txt" | sed 's/  */ /g'
done
