"""Where one decode step's time goes: random-init model, FP16 and W6A8, batch B, static cache, CUDA graph.

Prints (and writes to $OUT/decode-profile-<shape>.json) the graph step time (CUDA events over N replays) and the
kernels of one step grouped by name (torch.profiler over graph replays; CUPTI reports the kernels inside a graph),
with count per step, GPU us per step, and the sum of kernel time against the step time (the gap is launch/latency).
Usage: python scripts/gpu_decode_profile.py [SHAPE] [BATCH] [--no-fuse] [--no-norms] [--no-rope] [--bool-mask] [--top N]
--no-norms: fuse the linears but keep HF's RMSNorm, SiLU and attention (no norm, SiLU or rotary kernel, no pack
hand-over); --no-rope: only the attention stays HF's (rotary embedding and cache writes as PyTorch kernels);
--bool-mask: the decoder passes a boolean attention mask (SDPA converts it in every layer) instead of the additive one.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

import torch

from flexq_cli.config import load_preset
from flexq_cli.e2e_bench import build_random, plan_model
from flexq_cli.fusion import fuse_shared_inputs
from flexq_cli.arch import spec_for_config
from flexq_cli.generate import Decoder
from flexq_cli.placement import dispatch


def build(shape: str, quant, fuse: bool = True, kernels: bool = True, rope: bool = True):
    """(random-init model on the GPU, None), or (None, why it cannot run): fused as e2e_bench does, unless told
    otherwise (``kernels``: fusion's norm/SiLU/rotary kernels; ``rope``: keep its attention kernel)."""
    skeleton, placed, why = plan_model(shape, quant, None, 1 << 30)
    if why:
        return None, why
    model = build_random(skeleton, placed, quant)
    if fuse:
        fuse_shared_inputs(model, spec_for_config(model.config), pack_kernels=kernels)
        if not rope:
            for layer in model.model.layers:
                layer.self_attn = getattr(layer.self_attn, "attn", [layer.self_attn])[0]
    return dispatch(model, placed), None  # as e2e_bench: buffers (rotary inv_freq) onto the GPU


def graph_decoder(model, batch: int, prompt: int = 128, room: int = 64) -> Decoder:
    """A Decoder after a random prompt's prefill and the decode step that captured its graph."""
    dec = Decoder(model, batch, prompt + room, use_graph=True)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device="cuda")
    dec.step(dec.prefill(ids, torch.zeros_like(ids, dtype=torch.bool)).argmax(-1))  # captures
    torch.cuda.synchronize()
    return dec


def replay_us(dec: Decoder, steps: int) -> float:
    """Mean us per graph replay over ``steps`` back-to-back replays (CUDA events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        dec.graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / steps


def step_profile(model, batch: int, steps: int = 20) -> dict:
    dec = graph_decoder(model, batch)
    step_us = replay_us(dec, steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            dec.graph.replay()
        torch.cuda.synchronize()
    kernels = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels[e.name[:90]]
            k[0] += 1
            k[1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    rows = sorted(((n, c / steps, t / steps) for n, (c, t) in kernels.items()), key=lambda r: -r[2])
    total = sum(r[2] for r in rows)
    return {"step_us": round(step_us, 1), "kernel_us": round(total, 1),
            "kernels_per_step": round(sum(r[1] for r in rows), 1),
            "rows": [{"name": n, "per_step": round(c, 2), "us": round(t, 2)} for n, c, t in rows]}


def main():
    argv = sys.argv[1:]
    args = [a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or argv[i - 1] != "--top")]
    shape = args[0] if args else "llama-2-7b"
    batch = int(args[1]) if len(args) > 1 else 1
    fuse = "--no-fuse" not in sys.argv
    norms = "--no-norms" not in sys.argv
    rope = "--no-rope" not in sys.argv
    if "--bool-mask" in sys.argv:
        Decoder.attention_mask = staticmethod(lambda allowed, dtype: allowed)
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 40
    out = {"shape": shape, "batch": batch, "fused": fuse, "norm_kernels": fuse and norms, "rope_kernel": rope,
           "device": torch.cuda.get_device_name()}
    for name, quant in (("fp16", None), ("w6a8", load_preset("w6a8"))):
        model, why = build(shape, quant, fuse, norms, rope)
        if why:
            out[name] = {"skipped": why}
            continue
        r = step_profile(model, batch)
        out[name] = r
        print(f"== {name} batch {batch}: step {r['step_us']} us, kernels {r['kernel_us']} us, "
              f"{r['kernels_per_step']} kernels/step")
        for row in r["rows"][:top]:
            print(f"{row['us']:9.1f} us {row['per_step']:6.1f}x  {row['name']}")
        del model
        torch.cuda.empty_cache()
    tag = ("" if norms else "-nonorm") + ("" if rope else "-norope")
    tag += "-boolmask" if "--bool-mask" in sys.argv else ""
    path = os.path.join(os.environ.get("OUT", "/tmp"), f"decode-profile-{shape}-b{batch}{tag}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
