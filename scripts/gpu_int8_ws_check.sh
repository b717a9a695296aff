#!/usr/bin/env bash
# One device call for the warp-specialized INT8 kernel (Int8Config ws=True): a smoke run under a timeout (a pipeline
# bug hangs rather than fails), its GPU tests, then scripts/gpu_int8_wgmma.py (the mainloops against cuBLAS).
# Usage (device machine, repo root): scripts/gpu_int8_ws_check.sh [MS] [SHAPES]; env TESTS=0 skips the tests,
# TEST_K (pytest -k of tests/test_int8_gpu.py). Logs go to $OUT (default ./out).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
timeout 120 $PY - > "$OUT/smoke.txt" 2>&1 <<'PYEOF'
import torch
from flexq_cli import int8_kernel
from flexq_cli.packing import pack_weight
from flexq_cli.reference import reference_linear
torch.manual_seed(0)
for n, k, m in ((256, 512, 200), (4096, 4096, 2048), (1088, 4224, 300)):
    wq = torch.randint(-32, 32, (n, k), dtype=torch.int8, device="cuda")
    ws = (torch.rand(n, k // 128, device="cuda") * 0.01 + 1e-3).half()
    x = torch.randn(m, k, device="cuda").half()
    y = int8_kernel.int8_linear(x, pack_weight(wq), ws, act_bits=8, config=int8_kernel.WS_TILE)
    ref = reference_linear(x, wq, ws, act_bits=8, act_group_size=128, weight_group_size=128)
    torch.cuda.synchronize()
    print(n, k, m, "bit-equal" if torch.equal(y.view(torch.int16), ref.view(torch.int16)) else
          f"DIFFERENT max {(y.float() - ref.float()).abs().max().item()}", flush=True)
PYEOF
echo "smoke rc $?" >> "$OUT/smoke.txt"; cat "$OUT/smoke.txt"
if [[ ${TESTS:-1} == 1 ]]; then
  timeout 300 $PY -m pytest -q -x tests/test_int8_gpu.py -p no:cacheprovider \
      -k "${TEST_K:-test_ws_persistent or (wgmma_matches and ws) or every_tile_config or quantize}" > "$OUT/tests.txt" 2>&1
  echo "tests rc $?" >> "$OUT/tests.txt"; tail -4 "$OUT/tests.txt"
fi
timeout 300 $PY scripts/gpu_int8_wgmma.py "${1:-512,2048,4096}" \
    "${2:-4096x4096,11008x4096,4096x11008,8192x8192,28672x8192,8192x28672}" > "$OUT/bench.txt" 2>&1
cat "$OUT/bench.txt"
