#!/usr/bin/env bash
# One device call for the register-fed INT8 decode kernel (kernels/w6_int8_gemv.cu): the INT8, norm and generation
# GPU tests, then compute-sanitizer memcheck and racecheck on gemv launches (partial row tiles, uneven chunk splits,
# more warps than chunks, both token tiles, the shared-memory ring). Logs in $OUT (default ./out); a summary last.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
$PY -m pytest -q tests/test_int8_gpu.py tests/test_norm_gpu.py tests/test_generate_gpu.py -p no:cacheprovider \
    > "$OUT/tests.txt" 2>&1
summary=("pytest: $(tail -1 "$OUT/tests.txt")")
cat > /tmp/san_gemv.py <<'PYEOF'
import torch
from flexq_cli import int8_kernel
from flexq_cli.int8_kernel import GemvConfig
from flexq_cli.packing import pack_weight
for n, k, m, cfg in [(1104, 4224, 3, GemvConfig(kw=8)), (1104, 576, 16, GemvConfig(kw=16, mt=2)),
                     (1104, 4224, 9, GemvConfig(kw=4, rt=2, mt=2, depth=4)), (4096, 4096, 1, None),
                     (192, 576, 16, GemvConfig(kw=2, rt=4, mt=2)), (1104, 4224, 5, GemvConfig(kw=8, ring=4)),
                     (1104, 576, 16, GemvConfig(kw=16, mt=2, ring=2)),
                     (192, 4224, 12, GemvConfig(kw=2, rt=4, mt=2, ring=6)), (4096, 11008, 16, None)]:
    wq = torch.randint(-32, 32, (n, -(-k // 128) * 128), dtype=torch.int8, device="cuda")
    ws = torch.rand((n, wq.shape[1] // 128), device="cuda").half()
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    assert cfg is not None or isinstance(int8_kernel.default_config(m, n, wq.shape[1]), GemvConfig)
    int8_kernel.int8_linear(x, pack_weight(wq), ws, act_bits=8, config=cfg)
    int8_kernel.int8_block_accumulators(x, pack_weight(wq), act_bits=8, config=cfg)
torch.cuda.synchronize(); print("sanitizer workload done")
PYEOF
source scripts/sanitize_common.sh
sanitize /tmp/san_gemv.py
printf '%s\n' "${summary[@]}"
