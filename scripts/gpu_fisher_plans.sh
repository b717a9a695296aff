#!/usr/bin/env bash
# docs/accuracy.md, "Fast sensitivity analysis": the exact and the Fisher plan (30 A8 linears) of SmolLM2-135M on
# the RTN (w6a8) and the smoothed (flexq) base, each quantized and evaluated on the 40-window protocol of
# scripts/gpu_accuracy_sweep.sh (analysis and quantization on the GPU, evaluation on the exact reference path in
# float32). Each step's wall time goes to $RUNS/times.txt; $OUT gets times.txt and one tarball of the results.
# Usage (device machine, repo root): MODEL=/path/to/SmolLM2.gguf FLEXQ_DATA_DIR=... scripts/gpu_fisher_plans.sh
set -uo pipefail
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-out}; RUNS=${RUNS:-/tmp/fisher}; mkdir -p "$OUT" "$RUNS/logs"
MODEL=${MODEL:?the SmolLM2 .gguf path}
WT=$FLEXQ_DATA_DIR/wikitext-2-raw/wiki.test.raw
EVAL=(--ppl wikitext2 --seqlen 2048 --max-windows 40 --device cuda --dtype float32 --backend reference)
pack() {
  tar czf "$OUT/results.tgz" -C "$RUNS" logs times.txt \
    $(cd "$RUNS" && ls -d eval-*.json plan-*/plan.md plan-*/plan.safetensors 2>/dev/null)
}
step() {  # step NAME flexq-ARGS...: run, log, time, and refresh $OUT (what is done survives a timeout)
  local name=$1; shift; local t0=$(date +%s%N)
  python3 -m flexq_cli "$@" > "$RUNS/logs/$name.log" 2>&1; local rc=$?
  echo "$name rc=$rc $(( ($(date +%s%N) - t0) / 1000000 )) ms" | tee -a "$RUNS/times.txt"
  cp "$RUNS/times.txt" "$OUT/"; pack
}
step calib calibrate "$MODEL" --data "$WT" --offset-tokens 81920 --samples 16 --seqlen 2048 --device cuda --out "$RUNS/calib"
for m in fisher exact; do
  step plan-best-$m analyze "$MODEL" --calib "$RUNS/calib" --preset flexq --a8-count 30 --samples 4 --seqlen 512 \
    --method $m --device cuda --out "$RUNS/plan-best-$m"
  step q-best-$m quantize "$MODEL" --plan "$RUNS/plan-best-$m" --calib "$RUNS/calib" --calib-samples 4 --device cuda \
    --out "$RUNS/q-best-$m"
  step eval-best-$m eval "$RUNS/q-best-$m" "${EVAL[@]}" --json "$RUNS/eval-best-$m.json"
done
for m in fisher exact; do
  step plan-rtn-$m analyze "$MODEL" --calib "$RUNS/calib" --a8-count 30 --samples 4 --seqlen 512 --method $m \
    --device cuda --out "$RUNS/plan-rtn-$m"
  step q-rtn-$m quantize "$MODEL" --plan "$RUNS/plan-rtn-$m" --device cuda --out "$RUNS/q-rtn-$m"
  step eval-rtn-$m eval "$RUNS/q-rtn-$m" "${EVAL[@]}" --json "$RUNS/eval-rtn-$m.json"
done
