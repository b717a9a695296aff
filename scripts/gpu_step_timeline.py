"""One decoder layer of the CUDA-graph decode step, kernel by kernel: random-init model, FP16 and W6A8, batch B.

Profiles a few graph replays (torch.profiler; CUPTI reports the kernels inside a graph), cuts each step into
decoder layers at the first RMSNorm kernel of every layer (two per layer), and prints for each kernel position of
a layer its name, mean duration and the mean idle gap before it over all layers, then the layer's busy and idle
time. Where a kernel is a quantized GEMM, the weight bytes it reads and the GB/s that makes.
Usage: python scripts/gpu_step_timeline.py [SHAPE] [BATCH]   (JSON to $OUT/step-timeline-<shape>-b<B>-pdl<0/1>.json)
PDL=0 in the environment launches the kernels without programmatic dependent launch: with it, a kernel may start
while the one before it is finishing, so a kernel's span includes that wait (or the next kernel's prefetch
traffic) and the per-kernel times overlap; without it each span is the kernel alone.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from gpu_decode_profile import build, graph_decoder  # scripts/ is on sys.path when run as a script

from flexq_cli import cuda_launch
from flexq_cli.config import load_preset

NORM = "fq_rmsnorm"


def is_gemm(kernel: str) -> bool:
    """A quantized GEMM's kernel: the BTC kernel or an INT8 one (i8_gemm, i8_gemm_wgmma or i8_gemv)."""
    return "btc_gemm" in kernel or "i8_gemm" in kernel or "i8_gemv" in kernel


def step_kernels(dec, replays: int = 3) -> list[list[tuple[str, float, float]]]:
    """Per replay, its kernels in start order as (name, start us, end us)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            dec.graph.replay()
            torch.cuda.synchronize()
    ev = sorted(((e.name, e.time_range.start, e.time_range.end) for e in prof.events()
                 if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda r: r[1])
    steps, cur = [], []
    for e in ev:  # replays are separated by a host synchronize: a long idle gap
        if cur and e[1] - cur[-1][2] > 200:
            steps.append(cur)
            cur = []
        cur.append(e)
    steps.append(cur)
    return steps


def layer_table(step: list[tuple[str, float, float]]) -> dict:
    norms = [i for i, e in enumerate(step) if NORM in e[0]]
    starts = norms[0::2]
    layers = [step[a:b] for a, b in zip(starts, starts[1:])]
    n = len(layers[0])
    layers = [lay for lay in layers if len(lay) == n and [e[0] for e in lay] == [e[0] for e in layers[0]]]
    rows = []
    for pos in range(n):
        dur = sum(lay[pos][2] - lay[pos][1] for lay in layers) / len(layers)
        gap = sum(lay[pos][1] - (lay[pos - 1][2] if pos else prev_end(step, lay[0])) for lay in layers) / len(layers)
        rows.append({"name": layers[0][pos][0][:70], "us": round(dur, 2), "gap_before": round(gap, 2)})
    span = (step[-1][2] - step[0][1])
    return {"layers_averaged": len(layers), "rows": rows, "busy_us": round(sum(r["us"] for r in rows), 1),
            "idle_us": round(sum(r["gap_before"] for r in rows), 1), "step_span_us": round(span, 1)}


def prev_end(step, first) -> float:
    i = step.index(first)
    return step[i - 1][2] if i else first[1]


def gemm_bytes(model) -> list[tuple[str, int]]:
    """(name, packed weight + scale bytes) of the first decoder layer's quantized linears, in call order (q/k/v,
    o_proj, gate/up, down_proj), each weight counted once (fused groups keep their members' names)."""
    order = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    seen, out = set(), []
    for name, mod in model.model.layers[0].named_modules():
        qw = getattr(mod, "qweight", None)
        if not isinstance(qw, torch.Tensor) or qw.data_ptr() in seen:
            continue
        seen.add(qw.data_ptr())
        out.append((name, qw.numel() * qw.element_size() + mod.scales.numel() * mod.scales.element_size()))
    return sorted(out, key=lambda r: min((i for i, k in enumerate(order) if k in r[0]), default=len(order)))


def main():
    shape = sys.argv[1] if len(sys.argv) > 1 else "llama-2-7b"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    cuda_launch.PDL = os.environ.get("PDL", "1") != "0"
    out = {"shape": shape, "batch": batch, "device": torch.cuda.get_device_name(), "pdl": cuda_launch.PDL}
    for name, quant in (("fp16", None), ("w6a8", load_preset("w6a8"))):
        model, why = build(shape, quant)
        if why:
            raise SystemExit(f"{shape}: {why}")
        dec = graph_decoder(model, batch)
        steps = step_kernels(dec)
        t = layer_table(steps[len(steps) // 2])
        t["gemm_bytes"] = gemm_bytes(model)
        out[name] = t
        print(f"== {name} batch {batch}, PDL {cuda_launch.PDL}: step span {t['step_span_us']} us; one layer (mean of "
              f"{t['layers_averaged']}): busy {t['busy_us']} us, idle {t['idle_us']} us")
        gb = iter(t["gemm_bytes"])
        for r in t["rows"]:
            extra = ""
            if is_gemm(r["name"]):
                lin, nb = next(gb, ("?", 0))
                extra = f"  {lin} {nb / 1e6:.1f} MB {nb / r['us'] / 1e3:.0f} GB/s"
            print(f"{r['gap_before']:7.2f} {r['us']:8.2f}  {r['name'][:60]}{extra}")
        del model, dec
        torch.cuda.empty_cache()
    fname = f"step-timeline-{shape}-b{batch}-pdl{int(cuda_launch.PDL)}.json"
    with open(os.path.join(os.environ.get("OUT", "/tmp"), fname), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
