#!/usr/bin/env bash
# The smoothing search (smooth_search) against the fixed-alpha presets on the H100, with the protocol of
# scripts/gpu_accuracy_sweep.sh: SmolLM2-135M, calibration 16 x 2048 tokens (4 used by the weight algorithms),
# 40 windows of 2048 tokens of WikiText-2 test, exact reference path in float32. Resumable under $RUNS.
# Usage (device machine, repo root): MODEL=/path/to/SmolLM2.gguf FLEXQ_DATA_DIR=... scripts/gpu_search_sweep.sh
# Env: PRESETS (names or YAML paths; NAME@N uses N calibration samples), CALIB_TOTAL (calibration samples, 16),
# CALIB_SAMPLES (used when no @N, 4), RUNS.
set -uo pipefail
OUT=${OUT:-out}; RUNS=${RUNS:-/tmp/acc}
source scripts/sweep_common.sh
timed calib flexq calibrate "$MODEL" --data "$WT" --offset-tokens 81920 --samples ${CALIB_TOTAL:-16} --seqlen 2048 --device cuda --out "$RUNS/calib"
preset s-w6a8 w6a8 "smooth_search: true" "weight_clip: output"
preset s-w6a8-gptq w6a8 "smooth_search: true" "weight_clip: output" "gptq: true" "gptq_act_order: true"
preset s-w6a8-rtn w6a8 "smooth_search: true"
preset s-flexq flexq-rtn "smooth_search: true" "weight_clip: output"
preset s-w6a6 w6a6 "smooth_search: true" "weight_clip: output"
preset s-best w6a8 "smooth_search: true" "weight_clip: output" "gptq: true" "gptq_act_order: true"
preset f-w6a8-gptq w6a8 "smooth_alpha: 0.5" "weight_clip: output" "gptq: true" "gptq_act_order: true"
preset s-w6a8-gptq-d10 w6a8 "smooth_search: true" "weight_clip: output" "gptq: true" "gptq_act_order: true" "gptq_damp: 0.1"
preset s-w6a8-gptq-noorder w6a8 "smooth_search: true" "weight_clip: output" "gptq: true"
preset s-w6a8-gptq-mse w6a8 "smooth_search: true" "weight_clip: mse" "gptq: true" "gptq_act_order: true"
preset r-best w6a8 "rotate: true" "smooth_search: true" "weight_clip: output" "gptq: true" "gptq_act_order: true"
preset r-rtn w6a8 "rotate: true"
preset r-clip w6a8 "rotate: true" "smooth_search: true" "weight_clip: output"
preset r-nosmooth w6a8 "rotate: true" "weight_clip: output" "gptq: true" "gptq_act_order: true"
preset r-nosmooth-noorder w6a8 "rotate: true" "weight_clip: output" "gptq: true"
preset r-nosmooth-mse w6a8 "rotate: true" "weight_clip: mse" "gptq: true" "gptq_act_order: true"
preset r-flexq flexq-rtn "rotate: true" "smooth_search: true" "weight_clip: output"
DOWN='online_rotate: ["re:.*\\.down_proj"]'  # down_proj's input rotated online, block by 128-wide block
preset ro-best w6a8 "rotate: true" "weight_clip: output" "gptq: true" "gptq_act_order: true" "$DOWN"
preset ro-rtn w6a8 "rotate: true" "$DOWN"
preset ro-clip w6a8 "rotate: true" "weight_clip: output" "$DOWN"
TUNE=("tune_norms: 1" "tune_samples: 4")
preset rt-flexq flexq-rtn "rotate: true" "weight_clip: output" "gptq: true" "gptq_act_order: true" "${TUNE[@]}"
preset rot-flexq flexq-rtn "rotate: true" "weight_clip: output" "gptq: true" "gptq_act_order: true" "$DOWN" "${TUNE[@]}"
preset ro-flexq flexq-rtn "rotate: true" "weight_clip: output" "gptq: true" "gptq_act_order: true" "$DOWN"
preset rt1 w6a8 "rotate: true" "weight_clip: output" "gptq: true" "gptq_act_order: true" "tune_norms: 1"
preset rt2 w6a8 "rotate: true" "weight_clip: output" "gptq: true" "gptq_act_order: true" "tune_norms: 2"
preset rt1s4 w6a8 "rotate: true" "weight_clip: output" "gptq: true" "gptq_act_order: true" "tune_norms: 1" "tune_samples: 4"
preset rt1s8 w6a8 "rotate: true" "weight_clip: output" "gptq: true" "gptq_act_order: true" "tune_norms: 1" "tune_samples: 8"
preset r6-best w6a6 "rotate: true" "weight_clip: output" "gptq: true" "gptq_act_order: true"
preset ro6-best w6a6 "rotate: true" "weight_clip: output" "gptq: true" "gptq_act_order: true" "$DOWN"
for p in ${PRESETS:-w6a8-best s-w6a8 s-w6a8-rtn s-flexq s-w6a6 s-w6a8-gptq}; do
  name=${p%@*}; n=${CALIB_SAMPLES:-4}; [ "$name" = "$p" ] || n=${p#*@}
  src=$RUNS/presets/$name.yaml; [ -f "$src" ] || src=$name
  p=${name##*/}-c$n; p=${p%.yaml}
  timed "q-$p" flexq quantize "$MODEL" --preset "$src" --calib "$RUNS/calib" --calib-samples $n \
      --device cuda --out "$RUNS/q-$p"
  timed "eval-$p.json" flexq eval "$RUNS/q-$p" "${EVAL[@]}" --json "$RUNS/eval-$p.json"
done
timed eval-fp.json flexq eval "$MODEL" "${EVAL[@]}" --json "$RUNS/eval-fp.json"
tar czf "$OUT/search-sweep.tgz" -C "$RUNS" times.tsv logs presets $(cd "$RUNS" && ls -d eval-*.json)
python3 - "$RUNS" <<'PY'
import json, pathlib, sys
runs = pathlib.Path(sys.argv[1])
fp = json.loads((runs / "eval-fp.json").read_text())["ppl"] if (runs / "eval-fp.json").exists() else None
for f in sorted(runs.glob("eval-*.json")):
    r = json.loads(f.read_text())
    rel = f"{100 * (r['ppl'] / fp - 1):+.2f}%" if fp else ""
    print(f"{f.stem:22s} PPL {r['ppl']:.4f} {rel}  ({r['windows']} windows)")
from safetensors import safe_open
for q in sorted(runs.glob("q-*")):
    with safe_open(str(sorted(q.glob("*.safetensors"))[0]), "pt") as fh:
        m = json.loads(fh.metadata()["flexq"])
    print(q.name, json.dumps(m.get("extra", {}).get("algorithms", {}).get("smooth_search")))
PY
cat "$RUNS/times.tsv"
