#!/usr/bin/env bash
# Reproduce the SmolLM2-135M WikiText-2 table in docs/results.md (CPU, float32; about 75 minutes on 2 cores).
# Calibration text: the WikiText-2 test copy from token 81,920 on, i.e. after the 40 evaluated windows of 2048.
set -euo pipefail
export FLEXQ_DATA_DIR=${FLEXQ_DATA_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
RUNS=${RUNS:-runs/smollm2}
MODEL=smollm2-135m
WT=$FLEXQ_DATA_DIR/wikitext-2-raw/wiki.test.raw
EVAL=(--ppl wikitext2 --seqlen 2048 --max-windows 40 --device cpu)
mkdir -p "$RUNS"
flexq calibrate $MODEL --data "$WT" --offset-tokens 81920 --samples 16 --seqlen 2048 --device cpu --out "$RUNS/calib" --force
/usr/bin/time -v flexq analyze $MODEL --calib "$RUNS/calib" --a8-count 30 --samples 4 --seqlen 512 --device cpu \
  --out "$RUNS/plan-a8x30" --force 2> >(grep -E "Elapsed|Maximum resident" >&2)
flexq analyze $MODEL --calib "$RUNS/calib" --scores-from "$RUNS/plan-a8x30" --a8-budget 0.1 --device cpu --out "$RUNS/plan-b10" --force
flexq analyze $MODEL --calib "$RUNS/calib" --scores-from "$RUNS/plan-a8x30" --a8-budget 0.25 --device cpu --out "$RUNS/plan-b25" --force
flexq eval $MODEL "${EVAL[@]}" --json "$RUNS/eval-fp.json"
for p in w6a8 w6a6 flexq; do
  flexq quantize $MODEL --preset $p --out "$RUNS/q-$p" --force
  flexq eval "$RUNS/q-$p" "${EVAL[@]}" --json "$RUNS/eval-$p.json"
done
for p in a8x30 b10 b25; do
  flexq quantize $MODEL --plan "$RUNS/plan-$p" --out "$RUNS/q-plan-$p" --force
  flexq eval "$RUNS/q-plan-$p" "${EVAL[@]}" --json "$RUNS/eval-plan-$p.json"
done
python3 - "$RUNS" <<'PY'
import json, pathlib, sys
runs = pathlib.Path(sys.argv[1])
for f in sorted(runs.glob("eval-*.json")):
    r = json.loads(f.read_text())
    print(f"{f.stem:22s} {r['quant']:28s} PPL {r['ppl']:.3f}  ({r['windows']} windows, {r['seconds']:.0f} s)")
PY
