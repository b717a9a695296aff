#!/usr/bin/env bash
# Nsight Compute on the INT8 GEMM at prefill sizes, for each mainloop: one process per (config, shape) runs
# int8_linear a few times, ncu reads the last GEMM launch (clocks left alone). Key lines to stdout, reports in $OUT.
# Usage: scripts/gpu_int8_ncu.sh [M] [N:K ...]   (default M = 4096 on 4096 x 4096); CONFIGS="mma wgmma" (ws: the
# warp-specialized kernel, its activations quantized in the tiled layout; gemv: the
# default config of the M, the register-fed kernel up to 16 tokens);
# SOURCE=1 adds a --set full report per run and prints its stall samples by reason and the top SASS sites.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
M=${1:-4096}; shift || true
SHAPES=${*:-4096:4096}
source scripts/ncu_common.sh
METRICS=$(ncu_metrics dram__bytes_read.sum,lts__t_bytes.sum,smsp__inst_executed.sum)
METRICS+=,sm__cycles_elapsed.avg.per_second
METRICS+=,sm__pipe_tensor_op_imma_cycles_active.avg.pct_of_peak_sustained_active  # wgmma's IGMMA counts here too
for p in alu fma fmaheavy xu; do METRICS+=,sm__inst_executed_pipe_$p.avg.pct_of_peak_sustained_active; done
cat > /tmp/ncu_i8.py <<'PY'  # the process ncu watches: int8_linear 5 times
import sys, torch
from flexq_cli import int8_kernel
from flexq_cli.kernel_bench import _layer
n, k, m = map(int, sys.argv[1:4])
cfg = {"wgmma": int8_kernel.WGMMA_TILE, "mma": int8_kernel.Int8Config(), "ws": int8_kernel.WS_TILE,
       "gemv": None}[sys.argv[4]]
wq, ws, qweight, w16 = _layer(n, k)
x = torch.randn(m, k, device="cuda", dtype=torch.float16)
for _ in range(5):
    int8_kernel.int8_linear(x, qweight, ws, act_bits=8, config=cfg)
torch.cuda.synchronize()
PY
for cfg in ${CONFIGS:-mma wgmma}; do
for s in $SHAPES; do
  n=${s%:*}; k=${s#*:}
  echo "== $cfg $n x $k, M = $M"
  ncu_run "i8_gem[mv]" 3 "$OUT/ncu-i8-$cfg-$n-$k-m$M.txt" "$METRICS" python3 /tmp/ncu_i8.py "$n" "$k" "$M" "$cfg"
  if [[ -n ${SOURCE:-} ]]; then  # per-SASS-instruction stall samples: the split by reason and the top sites
    ncu --clock-control none -k "regex:i8_gem[mv]" --launch-skip 3 --launch-count 1 --set full --import-source no \
        -f -o "$OUT/ncu-i8-$cfg-$n-$k-m$M" python3 /tmp/ncu_i8.py "$n" "$k" "$M" "$cfg" > /dev/null 2>&1
    ncu -i "$OUT/ncu-i8-$cfg-$n-$k-m$M.ncu-rep" --page source --csv --print-source sass \
        > "$OUT/ncu-i8-$cfg-$n-$k-m$M-sass.csv" 2>&1
    python3 scripts/ncu_stall_sites.py "$OUT/ncu-i8-$cfg-$n-$k-m$M-sass.csv"
  fi
  KEYS="Duration|DRAM Throughput|Memory Throughput|L1/TEX Hit|L2 Hit Rate|Registers Per|Occupancy|Issue Slots"
  KEYS+="|Issued Warp Per|No Eligible|Eligible Warps|Warp Cycles Per Issued|Dynamic Shared|Waves Per SM"
  KEYS+="|Mem Busy|Max Bandwidth|stalled|dram__bytes|lts__t_bytes|inst_executed|pipe_|SM Frequency|per_second"
  grep -E "$KEYS" "$OUT/ncu-i8-$cfg-$n-$k-m$M.txt" | sed 's/  */ /g'
done
done
