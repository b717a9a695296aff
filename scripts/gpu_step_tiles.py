"""The decode step under alternative BTC tile configs: one W6A8 random-init model, fused, CUDA-graph step, re-captured
for each variant of ``btc_tuning.TUNED`` (every config here is a shape the tuner's exactness tests cover). The
isolated kernel bench (L2 flushed) undercounts what split-K costs inside the step, hence this A/B.
Usage: python scripts/gpu_step_tiles.py [SHAPE] [BATCH]   (prints us per step; JSON to $OUT/step-tiles-*.json)
"""

from __future__ import annotations

import json
import os
import sys

import torch
from gpu_decode_profile import build, graph_decoder, replay_us  # scripts/ is on sys.path when run as a script

from flexq_cli import btc, btc_tuning
from flexq_cli.config import load_preset

# (N, K) of LLaMA-2-7B's o_proj and down_proj (the narrow layers the table splits 4 ways) -> variants
VARIANTS = {
    "table": {},
    "2 warps, unsplit": {(4096, 4096): (2, 4, 4, 8, 1), (4096, 11008): (2, 4, 4, 8, 1)},
    "2 warps, 2 splits": {(4096, 4096): (2, 4, 4, 8, 2), (4096, 11008): (2, 4, 4, 8, 2)},
    "4 warps, 2 splits": {(4096, 4096): (4, 4, 3, 8, 2), (4096, 11008): (4, 4, 3, 8, 2)},
    "4 warps, unsplit": {(4096, 4096): (4, 4, 4, 8, 1), (4096, 11008): (4, 4, 4, 8, 1)},
    "8 warps, 2 splits": {(4096, 4096): (8, 4, 2, 8, 2), (4096, 11008): (8, 4, 2, 8, 2)},
}


def step_us(model, batch: int) -> float:
    """Best of three means of 50 graph replays (us)."""
    dec = graph_decoder(model, batch, room=80)
    return round(min(replay_us(dec, 50) for _ in range(3)), 1)


def main():
    shape = sys.argv[1] if len(sys.argv) > 1 else "llama-2-7b"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    model, why = build(shape, load_preset("w6a8"))
    if why:
        raise SystemExit(f"{shape}: {why}")
    saved = dict(btc_tuning.TUNED)
    out = {"shape": shape, "batch": batch, "device": torch.cuda.get_device_name(), "us": {}}
    for name, entries in list(VARIANTS.items()) + [("table again", {})]:
        btc_tuning.TUNED.clear()
        btc_tuning.TUNED.update(saved)
        btc_tuning.TUNED.update({(n, k, 8, 8): cfg for (n, k), cfg in entries.items()})
        btc.choose_config.cache_clear()
        out["us"][name] = step_us(model, batch)
        print(f"w6a8 b{batch} {name:20s} {out['us'][name]:8.1f} us", flush=True)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), f"step-tiles-{shape}-b{batch}.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
