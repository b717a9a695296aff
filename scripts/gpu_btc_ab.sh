#!/usr/bin/env bash
# One device call for a change to kernels/btc_gemm.cu: the BTC GPU tests of the working tree's kernel, then
# kernel_bench and the decode-step timeline (scripts/gpu_step_timeline.py) with the reference source and with the
# working tree's, one after the other in the same call, and the BTC layer times side by side.
# Usage: OLD=.carry/ab/btc_gemm.cu scripts/gpu_btc_ab.sh
#   OLD: the reference source (e.g. `git show HEAD:kernels/btc_gemm.cu > .carry/ab/btc_gemm.cu`, carried to the
#   device with the run's carry list); MODELS, MS: kernel_bench's; SKIP_TESTS=1, SKIP_STEP=1 leave those out;
#   TEST_TIMEOUT: seconds for the tests. Logs and JSON in $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
OLD=${OLD:?OLD=path of the reference btc_gemm.cu}
MODELS=${MODELS:-llama2-7b,fused}; MS=${MS:-1,2,4,8}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
if [[ ${SKIP_TESTS:-0} != 1 ]]; then
  timeout "${TEST_TIMEOUT:-600}" python3 -m pytest -q -m gpu tests/test_btc_gpu.py 2>&1 | tee "$OUT/btc-tests.log" \
    | tail -6
fi
cp kernels/btc_gemm.cu "$OUT/new.cu"
for v in old new; do
  if [[ $v == old ]]; then cp "$OLD" kernels/btc_gemm.cu; else cp "$OUT/new.cu" kernels/btc_gemm.cu; fi
  python3 -m flexq_cli.kernel_bench --models "$MODELS" --ms "$MS" --repeats 30 --json "$OUT/bench-$v.json" \
    > "$OUT/bench-$v.log" 2>&1 || tail -5 "$OUT/bench-$v.log"
  if [[ ${SKIP_STEP:-0} != 1 ]]; then
    (cd scripts && python3 gpu_step_timeline.py llama-2-7b 1) 2>&1 | grep -v Warn | tee "$OUT/timeline-$v.log" \
      | grep -E "==|btc|w6_int8|fq_|act_pack" | head -24
  fi
done
cp "$OUT/new.cu" kernels/btc_gemm.cu
rm "$OUT/new.cu"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
old, new = (json.load(open(f"{out}/bench-{v}.json")) for v in ("old", "new"))
def rows(r):
    return {(x["N"], x["K"], x["M"], x["op"]): x for x in r["rows"]}
o, n = rows(old), rows(new)
print("N x K, M: BTC W6A8 old -> new us, W6A6 old -> new (L2 flushed); b2b W6A8 old -> new; fp16 us; new vs fp16 A8")
for (nn, k, m, op), b in n.items():
    if op != "W6A8/btc":
        continue
    a, a6, b6 = o[(nn, k, m, op)], o[(nn, k, m, "W6A6/btc")], n[(nn, k, m, "W6A6/btc")]
    f = n[(nn, k, m, "fp16")]["median_us"]
    print(f"{nn}x{k} M={m}: {a['median_us']:.1f} -> {b['median_us']:.1f}, {a6['median_us']:.1f} -> "
          f"{b6['median_us']:.1f}; b2b {a.get('b2b_us', 0):.1f} -> {b.get('b2b_us', 0):.1f}; fp16 {f:.1f}; "
          f"{f / b['median_us']:.2f}x")
PY
