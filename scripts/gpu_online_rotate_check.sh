#!/usr/bin/env bash
# One device call: the GPU tests that run QuantLinear with the online input rotation (kernels against the
# reference, CUDA-graph decoding), then what the rotation costs end to end: flexq bench --e2e on a random-init
# LLaMA-2-7B shape, W6A6 round to nearest without and with online_rotate of every down_proj, each against FP16 in
# its own run (128-token prompt, 256 new tokens, batch 1 and 16). Logs and JSON land in $OUT.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -m pytest -q -m gpu tests/test_generate_gpu.py tests/test_int8_gpu.py -k "not every_tile and not variants" \
    2>&1 | tee "$OUT/tests.log" | tail -5
printf 'weight_bits: 6\nact_bits: 6\nonline_rotate: ["re:.*\\\\.down_proj"]\n' > "$OUT/w6a6-online.yaml"
for preset in w6a6 "$OUT/w6a6-online.yaml"; do
  name=$(basename "${preset%.yaml}")
  python3 -m flexq_cli bench --e2e llama-2-7b --random-init --preset "$preset" --batches 1,16 \
      --json "$OUT/e2e-$name.json" 2>&1 | tee "$OUT/e2e-$name.log" | tail -12
done
