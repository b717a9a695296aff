"""The INT8 kernel's mainloops side by side on the H100: mma.sync (Int8Config()), wgmma (WGMMA_TILE) and the
warp-specialized wgmma kernel (WS_TILE), each
validated bit for bit against the reference before it is timed, with cuBLAS fp16, int8 and fp8 in the same run.

    PYTHONPATH=. python3 scripts/gpu_int8_wgmma.py [MS] [SHAPES] > $OUT/wgmma.txt
    MS: comma-separated token counts (default 128,512,2048,4096); SHAPES: NxK,... (default 7B + 70B linears)
    env: REPEATS (20), ACT_BITS (8; e.g. 6,8), WG_CONFIGS (more wgmma tiles, BM:STAGES, e.g. 128:3,64:3)
Prints one line per (shape, M): microseconds (L2 flushed, median of REPEATS), TOPS of the W6A8 ops, speedups.
"""

from __future__ import annotations

import os
import sys

import torch

from flexq_cli import int8_kernel
from flexq_cli.kernel_bench import FLUSH_BYTES, _baselines, _kernel_op, _layer, copy_bandwidth_GBps, time_us

SHAPES = [(4096, 4096), (12288, 4096), (11008, 4096), (4096, 11008), (8192, 8192), (10240, 8192), (28672, 8192),
          (8192, 28672)]


def main() -> None:
    ms = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "128,512,2048,4096").split(",")]
    shapes = [tuple(int(d) for d in s.split("x")) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 else SHAPES
    repeats = int(os.environ.get("REPEATS", "20"))
    act_bits = [int(a) for a in os.environ.get("ACT_BITS", "8").split(",")]
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    print(torch.cuda.get_device_name(), torch.__version__, f"copy {copy_bandwidth_GBps():.0f} GB/s", flush=True)
    configs = {"mma": int8_kernel.Int8Config(), "wgmma": int8_kernel.WGMMA_TILE, "ws": int8_kernel.WS_TILE}
    for spec in os.environ.get("WG_CONFIGS", "").split(","):  # more wgmma tiles as BM:STAGES, e.g. 128:3,64:3
        if spec:
            bm, st = (int(v) for v in spec.split(":"))
            configs[f"wgmma{bm}:{st}"] = int8_kernel.Int8Config(bm=bm, bn=128, wm=bm // 64, wn=1, stages=st,
                                                               wgmma=True)
    for n, k in shapes:
        wq, ws, qweight, w16 = _layer(n, k)
        for m in ms:
            x = (torch.randn((m, k), device="cuda") * 2).half()
            ops = {f"A{a}/{name}": _kernel_op("int8", x, qweight, ws, wq, a, cfg)
                   for a in act_bits for name, cfg in configs.items()}
            ops.update({name: fn for name, (fn, _) in _baselines(x, w16).items()})
            us = {name: time_us(fn, repeats, flush) for name, fn in ops.items()}
            tops = lambda t: 2 * m * n * k / t / 1e6  # noqa: E731
            cols = " ".join(f"{name} {t:8.1f}" for name, t in us.items())
            a = act_bits[-1]
            t = us[f"A{a}/ws"]
            print(f"{n}x{k} M={m}: {cols} | ws {tops(t):.0f} TOPS, vs mma {us[f'A{a}/mma'] / t:.2f}x, "
                  f"vs fp16 {us['fp16'] / t:.2f}x, vs int8 {us['int8'] / t:.2f}x", flush=True)
            del x, ops
        del wq, ws, qweight, w16
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
