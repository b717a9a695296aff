"""The warp-specialized INT8 kernel on 128-row tiles (WS_TILE) against 64-row tiles (WS_TILE_64) and cuBLAS fp16, the
W6A8 layer op (activation quantize included), L2 flushed, median of 20 (kernel_bench.time_ops); both tiles' outputs
must be bit-equal. int8_kernel.ws_config's measurements (docs/kernel.md, "64-row tiles"). On a Hopper GPU:

    PYTHONPATH=$PWD python3 scripts/gpu_ws_rows.py [M,M,...]
"""
import sys

import torch

from flexq_cli import int8_kernel as ik
from flexq_cli import kernel_bench as kb

SHAPES = [(4096, 4096), (12288, 4096), (11008, 4096), (4096, 11008), (22016, 4096), (5120, 5120), (15360, 5120),
          (5120, 13824), (27648, 5120), (6144, 4096), (4096, 14336), (28672, 4096), (8192, 8192), (10240, 8192),
          (8192, 28672), (57344, 8192)]
MS = [int(v) for v in sys.argv[1].split(",")] if len(sys.argv) > 1 else [65, 128, 192, 256, 384, 512, 1024]
flush = torch.empty(kb.FLUSH_BYTES, dtype=torch.uint8, device="cuda")
sms = ik.sm_count(0)
print("N K M tiles128 | ws128 ws64 fp16 us | ws64/ws128 speedup, ws64 vs fp16", flush=True)
for n, k in SHAPES:
    wq, ws, qweight, w16 = kb._layer(n, k)
    for m in MS:
        x = (torch.randn((m, k), device="cuda") * 2).half()
        y128 = ik.int8_linear(x, qweight, ws, act_bits=8, config=ik.WS_TILE)
        y64 = ik.int8_linear(x, qweight, ws, act_bits=8, config=ik.WS_TILE_64)
        assert torch.equal(y64.view(torch.int16), y128.view(torch.int16)), (n, k, m)
        ops = {"ws128": lambda: ik.int8_linear(x, qweight, ws, act_bits=8, config=ik.WS_TILE),
               "ws64": lambda: ik.int8_linear(x, qweight, ws, act_bits=8, config=ik.WS_TILE_64),
               "fp16": lambda: x @ w16.T}
        t = kb.time_ops(ops, 20, flush)
        tiles = -(-n // 128) * -(-m // 128)
        print(f"{n} {k} {m} {tiles} | {t['ws128']:.1f} {t['ws64']:.1f} {t['fp16']:.1f} | "
              f"{t['ws128'] / t['ws64']:.2f} {t['fp16'] / t['ws64']:.2f} (ws128 {t['fp16'] / t['ws128']:.2f})",
              flush=True)
    torch.cuda.empty_cache()
