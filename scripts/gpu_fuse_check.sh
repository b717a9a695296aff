#!/usr/bin/env bash
# One device call for the fused activation pack of the BTC GEMM (plane columns, M <= 2): the exactness tests that
# cover it, compute-sanitizer memcheck and racecheck on a fused call, and an A/B bench (fused against the separate
# pack launch) at M = 1, 2 on the decode shapes. Logs and JSON in $OUT.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/env.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_btc_gpu.py \
    -k "plane_column or independent_of_splits or variants or graph or chained or default_config or m1- or m2-" \
    > "$OUT/tests.txt" 2>&1
grep -E "passed|failed" "$OUT/tests.txt" | tail -2
cat > /tmp/fused_call.py <<'PY'
import torch
from flexq_cli import btc
from flexq_cli.packing import pack_weight
n, k = 1088, 4224
wq = torch.randint(-32, 32, (n, k), device="cuda", dtype=torch.int8)
qw = pack_weight(wq); ws = torch.full((n, k // 128), 1e-3, dtype=torch.float16, device="cuda")
for cfg in (btc.TileConfig(warps=4, kb=4, stages=3, splits=5, pct=2, fuse=True),
            btc.TileConfig(warps=8, kb=4, stages=2, splits=1, pct=1, fuse=True)):
    for m in range(1, cfg.pct + 1):
        btc.btc_linear(torch.randn(m, k, device="cuda").half(), qw, ws, act_bits=6, config=cfg)
torch.cuda.synchronize(); print("ok")
PY
for tool in memcheck racecheck; do
  compute-sanitizer --tool $tool python3 /tmp/fused_call.py > "$OUT/sanitizer-$tool.txt" 2>&1
  echo "$tool: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer-$tool.txt" | tail -1)"
done
for mode in fused unfused; do
  extra=(); [[ $mode == fused ]] && extra=(--fuse)
  python3 -m flexq_cli.kernel_bench --json "$OUT/bench-$mode.json" --models "${MODELS:-llama2-70b,llama2-7b,smollm2}" \
      --ms "${MS:-1,2}" --repeats "${REPEATS:-30}" "${extra[@]}" > "$OUT/bench-$mode.txt" 2>&1
done
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = {m: {(r["N"], r["K"], r["M"], r["op"]): r for r in json.load(open(f"{out}/bench-{m}.json"))["rows"]}
        for m in ("fused", "unfused")}
print(f"{'shape':>14} {'M':>2} {'op':>9} {'unfused us':>10} {'fused us':>9} {'b2b un':>7} {'b2b f':>6} {'fp16 us':>8} {'x fp16':>7}")
for key, f in rows["fused"].items():
    if not f["op"].endswith("/btc"):
        continue
    u = rows["unfused"][key]
    fp16 = rows["fused"].get((key[0], key[1], key[2], "fp16"), {}).get("median_us")
    print(f"{key[0]:>6}x{key[1]:<7} {key[2]:>2} {key[3]:>9} {u['median_us']:>10.2f} {f['median_us']:>9.2f} "
          f"{u.get('b2b_us') or 0:>7.2f} {f.get('b2b_us') or 0:>6.2f} {fp16 or 0:>8.2f} {fp16 / f['median_us'] if fp16 else 0:>7.2f}")
PY
