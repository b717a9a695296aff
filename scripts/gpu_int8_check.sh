#!/usr/bin/env bash
# One device call for the INT8 prefill kernel and the BTC/INT8 dispatch: ptxas resources, GPU tests, bench.
# Usage (device machine, repo root): scripts/gpu_int8_check.sh [quick|full|bench]
#   quick: a selection of tests/test_int8_gpu.py, then the bench on MODELS (default llama2-7b) at MS
#   full:  every GPU test (BTC, INT8, generation), then the bench
#   bench: only the bench (MODELS, MS, REPEATS)
# Logs and JSON go to $OUT (default ./out); a short summary is printed last.
set -uo pipefail
MODE=${1:-quick}
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv; nvcc --version | tail -1
  $PY -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)"; } > "$OUT/env.txt" 2>&1
defs=$($PY -c "from flexq_cli import int8_kernel as i; print(' '.join(i.Int8Config().defines(8, False)))")
nvcc -std=c++17 -arch=sm_90 -cubin -ftz=true -Xptxas -v -o /tmp/i8.cubin $defs kernels/w6_int8_gemm.cu > "$OUT/int8_ptxas.txt" 2>&1
if [[ $MODE == quick ]]; then
  $PY -m pytest -q -x tests/test_int8_gpu.py -p no:cacheprovider \
      -k "variants or config or quantize or unpack or errors or dispatch or graph or 4096x4096 or 576x1536" \
      > "$OUT/tests.txt" 2>&1
elif [[ $MODE == full ]]; then
  $PY -m pytest -q tests/test_int8_gpu.py tests/test_btc_gpu.py tests/test_generate_gpu.py -p no:cacheprovider \
      > "$OUT/tests.txt" 2>&1
fi
[[ -f $OUT/tests.txt ]] && tail -5 "$OUT/tests.txt"
$PY -m flexq_cli.kernel_bench --json "$OUT/kernel_bench.json" --models "${MODELS:-llama2-7b}" \
    --ms "${MS:-1,8,64,128,256,512,2048,4096}" --repeats "${REPEATS:-20}" > "$OUT/bench.txt" 2>&1
grep -E "registers|spill" "$OUT/int8_ptxas.txt" | head -4
grep -vE "^[│┃┏┡└╇━─ ]|^$" "$OUT/bench.txt" | tail -60
