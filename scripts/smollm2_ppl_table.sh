#!/usr/bin/env bash
# Reproduce the SmolLM2-135M WikiText-2 table in docs/results.md (CPU, float32; about 75 minutes on 2 cores).
# Calibration text: the WikiText-2 test copy from token 81,920 on, i.e. after the 40 evaluated windows of 2048.
# Resumable: a step whose output exists is skipped (delete $RUNS to start over).
set -euo pipefail
export FLEXQ_DATA_DIR=${FLEXQ_DATA_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
RUNS=${RUNS:-runs/smollm2}
MODEL=smollm2-135m
WT=$FLEXQ_DATA_DIR/wikitext-2-raw/wiki.test.raw
EVAL=(--ppl wikitext2 --seqlen 2048 --max-windows 40 --device cpu)
step() { local out=$1; shift; [ -e "$out" ] && echo "skip: $out exists" || "$@"; }
mkdir -p "$RUNS"
step "$RUNS/calib" flexq calibrate $MODEL --data "$WT" --offset-tokens 81920 --samples 16 --seqlen 2048 --device cpu \
  --out "$RUNS/calib"
step "$RUNS/plan-a8x30" /usr/bin/time -f "analyze: %e s wall, %M KB max RSS" flexq analyze $MODEL --calib "$RUNS/calib" \
  --a8-count 30 --samples 4 --seqlen 512 --device cpu --out "$RUNS/plan-a8x30"
step "$RUNS/plan-b10" flexq analyze $MODEL --calib "$RUNS/calib" --scores-from "$RUNS/plan-a8x30" --a8-budget 0.1 \
  --samples 4 --seqlen 512 --device cpu --out "$RUNS/plan-b10"
step "$RUNS/plan-b25" flexq analyze $MODEL --calib "$RUNS/calib" --scores-from "$RUNS/plan-a8x30" --a8-budget 0.25 \
  --samples 4 --seqlen 512 --device cpu --out "$RUNS/plan-b25"
step "$RUNS/eval-fp.json" flexq eval $MODEL "${EVAL[@]}" --json "$RUNS/eval-fp.json"
for p in w6a8 w6a6 flexq-rtn; do
  step "$RUNS/q-$p" flexq quantize $MODEL --preset $p --out "$RUNS/q-$p"
  step "$RUNS/eval-$p.json" flexq eval "$RUNS/q-$p" "${EVAL[@]}" --json "$RUNS/eval-$p.json"
done
for p in a8x30 b10 b25; do
  step "$RUNS/q-plan-$p" flexq quantize $MODEL --plan "$RUNS/plan-$p" --out "$RUNS/q-plan-$p"
  step "$RUNS/eval-plan-$p.json" flexq eval "$RUNS/q-plan-$p" "${EVAL[@]}" --json "$RUNS/eval-plan-$p.json"
done
python3 - "$RUNS" <<'PY'
import json, pathlib, sys
runs = pathlib.Path(sys.argv[1])
for f in sorted(runs.glob("eval-*.json")):
    r = json.loads(f.read_text())
    print(f"{f.stem:22s} {r['quant']:28s} PPL {r['ppl']:.3f}  ({r['windows']} windows, {r['seconds']:.0f} s)")
PY
