"""The launch path before the 26th session (ctypes objects built per launch, current_stream; ``old_launch_pdl`` below)
and now (per-thread launch state, struct-packed slots, torch's raw stream), alternating in one process: per-call host
costs of a W6A8 layer at M = 1, then LLaMA-2-7B W6A8 eager forwards (host time until they return) and a 256-token
generation's first step. docs/generation.md, "The launch path's host cost".

Usage (on the GPU, from the repository root): PYTHONPATH=. python3 scripts/gpu_launch_ab.py
"""
import ctypes
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, "tests")
from test_btc_gpu import _layer, _x  # noqa: E402

from flexq_cli import cuda_launch as cl  # noqa: E402
from flexq_cli import e2e_bench as eb  # noqa: E402
from flexq_cli import generate as g  # noqa: E402
from flexq_cli import int8_kernel as ik  # noqa: E402
from flexq_cli.config import load_preset  # noqa: E402


def old_launch_pdl(fn, grid, block, args, smem, stream):
    launch, Attr, Config = cl._driver_launch_ex()
    kinds = {np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.int32): ctypes.c_int32,
             np.dtype(np.float32): ctypes.c_float}
    if any(getattr(v, "dtype", None) not in kinds for v in args):
        raise TypeError("bad")
    vals = [kinds[v.dtype](v.item()) for v in args]
    params = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
    attr = Attr(id=6)
    attr.value[0] = 1
    cfg = Config(grid=(ctypes.c_uint * 3)(*grid), block=(ctypes.c_uint * 3)(*block), smem=smem,
                 stream=stream, attrs=ctypes.pointer(attr), num_attrs=1)
    rc = launch(ctypes.byref(cfg), getattr(fn, "kernel", fn).ptr, params, None)
    if rc != 0:
        raise RuntimeError(rc)


NEW = (cl._launch_pdl, cl._current_raw_stream)
OLD = (old_launch_pdl, lambda d: torch.cuda.current_stream(d).cuda_stream)


def use(which):
    cl._launch_pdl, cl._current_raw_stream = which


def per_call(fn, n=2000):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return t


wq, ws, qweight = _layer(4096, 4096)
x = _x(1, 4096)
xq, sx = ik.quantize_activations(x.reshape(1, -1), 32, 8, 128, False)
ref = ik.int8_linear(x, qweight, ws, act_bits=8).clone()
for label, which in (("old", OLD), ("new", NEW), ("old", OLD), ("new", NEW)):
    use(which)
    y = ik.int8_linear(x, qweight, ws, act_bits=8)
    torch.cuda.synchronize()
    print(f"{label}: same bits {torch.equal(y, ref)}; int8_linear {per_call(lambda: ik.int8_linear(x, qweight, ws, act_bits=8)):.1f} us, "
          f"packed {per_call(lambda: ik.int8_linear(x, qweight, ws, act_bits=8, packed=(xq, sx))):.1f} us, "
          f"quantize {per_call(lambda: ik.quantize_activations(x.reshape(1, -1), 32, 8, 128, False)):.1f} us", flush=True)

res = {"date": "", "prompt_len": 128, "new_tokens": 256}
model = eb._bench_model(res, "w6a8", "llama-2-7b", load_preset("w6a8"), random_init=True, fuse=True,
                        decode_attention=True, device_map=None, batch=1)
ids = torch.randint(0, 32000, (1, 128), generator=torch.Generator().manual_seed(0)).cuda()
pad = torch.zeros_like(ids, dtype=torch.bool)
dec = g.Decoder(model, 1, 384, use_graph=False)
prompts = ids.tolist()
cfg = g.SamplingConfig(max_new_tokens=256, stop_at_eos=False)
out = {}
with torch.no_grad():
    for rnd in range(3):
        for label, which in (("old", OLD), ("new", NEW)):
            use(which)
            for what, fn in (("prefill 128", lambda: dec.prefill(ids, pad)), ("decode step", lambda: dec.step(tok))):
                ts = []
                for _ in range(5):
                    torch.cuda.synchronize()
                    dec.t = 128
                    t0 = time.perf_counter()
                    r = fn()
                    ts.append((time.perf_counter() - t0) * 1e3)
                    if what == "prefill 128":
                        tok = r.argmax(-1)
                torch.cuda.synchronize()
                out.setdefault((label, what), []).append(statistics.median(ts))
            r = g.generate_tokens(model, prompts, cfg)
            out.setdefault((label, "generate first step (8 graphs)"), []).append(r["first_step_s"] * 1e3)
            out.setdefault((label, "generate decode tok/s"), []).append(r["decode_tok_per_s"])
            out.setdefault((label, "tokens"), []).append(r["tokens"])
for key, v in out.items():
    if key[1] != "tokens":
        print(f"{key[0]} {key[1]}: {min(v):.1f}-{max(v):.1f}", flush=True)
print("tokens identical across all:", all(t == out[("old", "tokens")][0] for k, v in out.items() if k[1] == "tokens"
                                         for t in v))
