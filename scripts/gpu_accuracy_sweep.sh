#!/usr/bin/env bash
# Issue 5's table on the H100: SmolLM2-135M quantized with each accuracy option alone and combined, each
# evaluated on the 40-window WikiText-2 protocol. To match the CPU protocol of docs/results.md the evaluation runs
# the exact reference path in float32 on the GPU (--dtype float32 --backend reference). Calibration, analysis and
# quantization run on the GPU; each step's wall time goes to $OUT/times.tsv. Resumable (outputs under $RUNS).
# Logs and step times stay under $RUNS (logs/, times.tsv); $OUT gets one tarball of the results.
# Usage (device machine, repo root): MODEL=/path/to/SmolLM2.gguf FLEXQ_DATA_DIR=... scripts/gpu_accuracy_sweep.sh
set -uo pipefail
OUT=${OUT:-out}; RUNS=${RUNS:-/tmp/acc}
source scripts/sweep_common.sh
timed calib flexq calibrate "$MODEL" --data "$WT" --offset-tokens 81920 --samples 16 --seqlen 2048 --device cuda --out "$RUNS/calib"
preset clip-mse w6a8 "weight_clip: mse"
preset clip-output w6a8 "weight_clip: output"
preset gptq w6a8 "gptq: true"
preset gptq-actorder w6a8 "gptq: true" "gptq_act_order: true"
preset smooth w6a8 "smooth_alpha: 0.5"
preset all-w6a8 w6a8 "smooth_alpha: 0.5" "weight_clip: output" "gptq: true"
preset w6a6-smooth w6a6 "smooth_alpha: 0.5"
preset w6a6-best w6a6 "smooth_alpha: 0.5" "weight_clip: output"
for p in w6a8 w6a6 flexq-rtn; do timed "q-$p" flexq quantize "$MODEL" --preset $p --device cuda --out "$RUNS/q-$p"; done
for p in w6a8-best flexq; do  # the presets as they are now (docs/accuracy.md dates each definition)
  timed "q-$p" flexq quantize "$MODEL" --preset $p --calib "$RUNS/calib" --calib-samples 4 --device cuda --out "$RUNS/q-$p"
done
for p in clip-mse clip-output gptq gptq-actorder smooth all-w6a8 w6a6-smooth w6a6-best; do
  timed "q-$p" flexq quantize "$MODEL" --preset "$RUNS/presets/$p.yaml" --calib "$RUNS/calib" --calib-samples 4 \
      --device cuda --out "$RUNS/q-$p"
done
# the A6/A8 mix at FlexQ's A8 count (30), measured by the sensitivity analysis: RTN and on the smoothed model
timed plan-rtn30 flexq analyze "$MODEL" --calib "$RUNS/calib" --a8-count 30 --samples 4 --seqlen 512 --device cuda --out "$RUNS/plan-rtn30"
timed plan-best30 flexq analyze "$MODEL" --calib "$RUNS/calib" --preset flexq --a8-count 30 --samples 4 --seqlen 512 \
    --device cuda --out "$RUNS/plan-best30"
timed q-plan-rtn30 flexq quantize "$MODEL" --plan "$RUNS/plan-rtn30" --device cuda --out "$RUNS/q-plan-rtn30"
timed q-plan-best30 flexq quantize "$MODEL" --plan "$RUNS/plan-best30" --calib "$RUNS/calib" --calib-samples 4 --device cuda \
    --out "$RUNS/q-plan-best30"
timed eval-fp.json flexq eval "$MODEL" "${EVAL[@]}" --json "$RUNS/eval-fp.json"
for q in "$RUNS"/q-*; do
  n=$(basename "$q"); timed "eval-${n#q-}.json" flexq eval "$q" "${EVAL[@]}" --json "$RUNS/eval-${n#q-}.json"
done
tar czf "$OUT/accuracy-sweep.tgz" -C "$RUNS" times.tsv logs presets $(cd "$RUNS" && ls -d eval-*.json plan-*/plan.md)
python3 - "$RUNS" <<'PY'
import json, pathlib, sys
runs = pathlib.Path(sys.argv[1])
for f in sorted(runs.glob("eval-*.json")):
    r = json.loads(f.read_text())
    print(f"{f.stem:24s} {r['quant']:28s} PPL {r['ppl']:.4f}  ({r['windows']} windows, {r['seconds']:.0f} s)")
PY
cat "$RUNS/times.tsv"
