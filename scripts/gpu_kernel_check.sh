#!/usr/bin/env bash
# One device call: environment, nvcc SASS check, GPU tests, compute-sanitizer, kernel bench.
# Usage (device machine, repo root): scripts/gpu_kernel_check.sh [quick|full|test|bench|tune|iter] [ab]
# (test: full tests + sanitizer, no bench; a second argument `ab` first times MODELS_AB at MS_AB with and
#  without programmatic dependent launch, summaries in $OUT/ab.txt)
# (iter: quick tests + tune + bench; MODELS and MS narrow the bench, e.g. MODELS=llama2-70b MS=1,8)
# Logs and JSON go to $OUT (default ./out); a short summary is printed last.
set -uo pipefail
MODE=${1:-full}
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
summary=()
source scripts/sanitize_common.sh

{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv; nvcc --version | tail -1
  $PY -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)"; } > "$OUT/env.txt" 2>&1

# SASS: the BMMA instructions are there, no local memory, no FFMA (the epilogue is mul.rn / add.rn, never fused),
# for the default M <= 8 configs of both schemes, compiled with btc.py's -D options (EPILOGUE_CHUNK_BLOCKS included)
: > "$OUT/sass.txt"; ffma=0
for pct in 0 1; do
  defs=$($PY -c "from flexq_cli import btc; print(' '.join(btc.default_config(1 if $pct else 8).defines(6, False)))")
  nvcc -std=c++17 -arch=sm_90 -cubin -ftz=true -o /tmp/btc.cubin --resource-usage $defs kernels/btc_gemm.cu >> "$OUT/sass.txt" 2>&1
  cuobjdump -sass /tmp/btc.cubin | grep -oE 'BMMA[.A-Z0-9]*|LDSM[.A-Z0-9]*|LDGSTS[.A-Z0-9]*|LDL|STL|FFMA' | sort | uniq -c >> "$OUT/sass.txt" 2>&1
  ffma=$((ffma + $(cuobjdump -sass -fun btc_gemm /tmp/btc.cubin | grep -c FFMA)))
done
summary+=("sass: $(grep -c BMMA "$OUT/sass.txt") bmma kinds; FFMA in btc_gemm: $ffma; $(grep -E 'spill' "$OUT/sass.txt" | head -1)")

if [[ ${2:-} == ab ]]; then
  for flag in --no-pdl ""; do
    echo "== ${flag:-pdl}" >> "$OUT/ab.txt"
    $PY -m flexq_cli.kernel_bench --json /tmp/ab.json --models "${MODELS_AB:-llama2-70b,llama2-7b,smollm2}" \
        --ms "${MS_AB:-1,8}" --repeats 30 $flag 2>&1 | grep -E "^(copy|geomean|[0-9]+ [0-9]+ [0-9]+ \|)|Error" >> "$OUT/ab.txt"
  done
  summary+=("ab: see ab.txt")
fi

if [[ $MODE == quick || $MODE == full || $MODE == iter || $MODE == test ]]; then
  sel=(); [[ $MODE == quick || $MODE == iter ]] && sel=(-k "576 or 1536 or errors or pack or graph or variants or config or pdl")
  $PY -m pytest -q tests/test_btc_gpu.py tests/test_kernels_compile.py "${sel[@]}" -p no:cacheprovider \
      > "$OUT/pytest.txt" 2>&1
  summary+=("pytest: $(tail -1 "$OUT/pytest.txt")")
  cat > /tmp/san.py <<'PYEOF'
import torch
from flexq_cli import btc
from flexq_cli.packing import pack_weight
for n, k, m, a, cfg in [(192, 576, 3, 6, None), (1536, 576, 1, 8, None), (576, 1536, 2, 6, None),
                        (576, 1536, 17, 8, btc.TileConfig(splits=3)),
                        (1536, 576, 9, 8, btc.TileConfig(mt=16, splits=2))]:
    wq = torch.randint(-32, 32, (n, -(-k // 128) * 128), dtype=torch.int8, device="cuda")
    ws = torch.rand((n, wq.shape[1] // 128), device="cuda").half()
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    btc.btc_linear(x, pack_weight(wq), ws, act_bits=a, config=cfg)
    btc.btc_block_accumulators(x, pack_weight(wq), act_bits=a, config=cfg)
torch.cuda.synchronize(); print("sanitizer workload done")
PYEOF
  sanitize /tmp/san.py
fi

if [[ $MODE == full || $MODE == bench || $MODE == tune || $MODE == iter ]]; then
  extra=(); [[ $MODE == tune || $MODE == iter ]] && extra=(--tune)
  [[ -n ${MODELS:-} ]] && extra+=(--models "$MODELS")
  [[ -n ${MS:-} ]] && extra+=(--ms "$MS")
  $PY -m flexq_cli.kernel_bench --json "$OUT/bench.json" "${extra[@]}" > "$OUT/bench.txt" 2>&1
  summary+=("bench rc=$?")
  cat "$OUT/bench.txt" | tail -60
fi
tail -25 "$OUT/pytest.txt" 2>/dev/null
cat "$OUT/ab.txt" 2>/dev/null
printf '%s\n' "${summary[@]}"
