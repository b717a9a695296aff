"""The warp-specialized INT8 kernel (WS_TILE) in variants, against the mma.sync tile and cuBLAS, on the H100:

    PYTHONPATH=. python3 scripts/gpu_int8_ws_diag.py MS SHAPES VARIANTS
    e.g. 2048 4096x4096,28672x8192 "plain=,producer=I8_WS_DIAG:2,nounpack=I8_WS_DIAG:1"

VARIANTS: name=A:v+B:v,...; A an I8_* macro: an extra -D option (the I8_WS_DIAG builds time one side alone and give
wrong results, so they are not validated); otherwise an Int8Config field. Variants without -D options are validated
bit for bit before timing. Microseconds, L2 flushed, median of 10, W6A8.
"""
import dataclasses
import sys
import torch
from flexq_cli import int8_kernel
from flexq_cli.kernel_bench import FLUSH_BYTES, _baselines, _kernel_op, _layer, time_us

ms = [int(v) for v in sys.argv[1].split(",")]
shapes = [tuple(int(d) for d in s.split("x")) for s in sys.argv[2].split(",")]
variants = {}
for spec in sys.argv[3].split(","):
    name, _, defs = spec.partition("=")
    extra, fields = [], {}
    for d in filter(None, defs.split("+")):
        key, val = d.split(":")
        if key.startswith("I8_"):
            extra.append(f"-D{key}={val}")
        else:
            fields[key] = int(val)
    variants[name] = (tuple(extra), dataclasses.replace(int8_kernel.WS_TILE, **fields))
orig = int8_kernel.Int8Config.defines
cur = {"extra": ()}
int8_kernel.Int8Config.defines = lambda self, *a, **k: orig(self, *a, **k) + (cur["extra"] if self.ws else ())
flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
for n, k in shapes:
    wq, ws, qweight, w16 = _layer(n, k)
    for m in ms:
        x = (torch.randn((m, k), device="cuda") * 2).half()
        res = {"mma": time_us(_kernel_op("int8", x, qweight, ws, wq, 8, int8_kernel.Int8Config()), 10, flush)}
        for name, (extra, cfg) in variants.items():
            cur["extra"] = extra
            if not extra:
                fn = _kernel_op("int8", x, qweight, ws, wq, 8, cfg)
            else:
                fn = lambda cfg=cfg: int8_kernel.int8_linear(x, qweight, ws, act_bits=8, config=cfg)
            res[name] = time_us(fn, 10, flush)
        cur["extra"] = ()
        for name, (fn, _) in _baselines(x, w16).items():
            res[name] = time_us(fn, 10, flush)
        print(f"{n}x{k} M={m}: " + " ".join(f"{kk} {v:.1f}" for kk, v in res.items()), flush=True)
