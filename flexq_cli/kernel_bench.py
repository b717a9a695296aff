"""The kernel benchmark harness behind ``flexq bench --kernel`` (and ``python -m flexq_cli.kernel_bench``).

For each (N, K) and M it times, in one run and on the same device: the whole W6A8 and W6A6 layer ops (fp16 in, fp16 out,
activation quantize-and-pack included) on both kernels (BTC and INT8, with the one dispatch.py picks marked), cuBLAS
fp16 (``torch.matmul``), cuBLAS int8 (``torch._int_mm``, B column-major) and fp8 (``torch._scaled_mm``), and a memory
roofline: "stream", a kernel that only reads the packed weights' bytes (``kernels/stream_read.cu``, the fastest of
``STREAM_LAUNCHES`` at a shape's first M, then that one). Its speedup over fp16 is what a layer op that did nothing but
read its weights would reach in this harness; ``of_stream`` puts each W6 op against it. Every op is validated against
its reference before it is timed. Timing: each op is captured once in a CUDA graph (so host overhead stays out), warmed
up, then replayed between CUDA events with L2 flushed before each replay by reading a 256 MB buffer; the ops of one
(shape, M) take turns, ``WARMUP_ROUNDS`` untimed rounds and then ``repeats`` timed ones, so that each sees the same
clocks and memory state; the median is reported with the achieved weight bandwidth next to a measured device-to-device
copy bandwidth. Taking turns spreads a slow stretch of the GPU (tens of milliseconds in which every op ran 10-60%
slower, seen on the H100) over all the ops of a point instead of whichever op it was timing; a point it falls on is
still off, and a rerun shows it.

Why the flush reads (since 2026-11-23; it wrote the buffer before): a write leaves L2 full of dirty lines (up to its
50 MB on the H100), and whatever op runs next writes them back to HBM while it streams its weights: about as many
bytes as it reads, up to L2's size. On the H100 that charged a timed op time it does not cost (1.9 us on a 12.6 MB
weight matrix, 6.5-12 us from 50 MB up: up to a fifth of a 70B layer's time at M = 1), and a decode step never pays
it: before a GEMM, L2 holds the clean weight lines of the layers before it. A read evicts the weights as well (the
times equal those after a 1 GB read, docs/kernel.md) and leaves clean lines. ``FLUSH_WRITES`` brings the old flush
back for comparison.
``back_to_back`` adds FlexQ's method for M <= 16: 200 calls back to back on the same buffers, no flush, mean per
call.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from datetime import datetime, timezone

import torch

from . import btc, cuda_launch, int8_kernel
from .dispatch import choose_kernel
from .packing import pack_weight
from .primitives import BLOCK_K, pad_k, quantize_activation
from .reference import block_int_gemm, reference_linear

OPS = ("W6A8/btc", "W6A8/int8", "W6A6/btc", "W6A6/int8", "fp16", "int8", "fp8", "stream")
FLUSH_BYTES = 256 << 20
FLUSH_WRITES = False  # True: flush by writing the buffer (the harness before 2026-11-23), for A/B runs only
WARMUP_ROUNDS = 3
B2B_CALLS = 200
B2B_MAX_M = 16  # back-to-back timing is FlexQ's decode method: not worth 200 calls at prefill sizes
# The stream op's launches: (16-byte loads in flight per thread, CTAs per SM, threads per CTA). On the H100 the
# fastest was one of the 16-CTA launches up to ~50 MB, one of the others from 64 MB (2026-11-23, 24th session).
STREAM_LAUNCHES = ((4, 16, 256), (8, 16, 256), (4, 4, 512), (8, 2, 1024))


# ----------------------------------------------------------------------------------------------- timing
def _graph(fn, calls: int = 1) -> torch.cuda.CUDAGraph:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()  # warm-up: compile, cuBLAS handles and workspaces
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s):
            for _ in range(calls):
                fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    return g


def flush_l2(buf: torch.Tensor) -> None:
    """Evict L2 by reading ``buf`` (FLUSH_BYTES, several times L2), leaving it clean (see the module docstring)."""
    if FLUSH_WRITES:
        buf.zero_()
    else:
        buf.view(torch.int64).sum()


def time_ops(fns: dict, repeats: int, flush: torch.Tensor | None) -> dict:
    """Median microseconds of one call of each op in ``fns`` (name -> fn), graph-replayed, L2 flushed before each
    replay when ``flush`` is given. The ops take turns: WARMUP_ROUNDS untimed rounds, then ``repeats`` timed ones."""
    graphs = {name: _graph(fn) for name, fn in fns.items()}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = {name: [] for name in fns}
    for r in range(WARMUP_ROUNDS + repeats):
        for name, g in graphs.items():
            if flush is not None:
                flush_l2(flush)
            start.record()
            g.replay()
            end.record()
            end.synchronize()
            if r >= WARMUP_ROUNDS:
                times[name].append(start.elapsed_time(end) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def time_us(fn, repeats: int, flush: torch.Tensor | None) -> float:
    """Median microseconds of one call, as ``time_ops`` times each of its ops."""
    return time_ops({"op": fn}, repeats, flush)["op"]


def time_back_to_back_us(fn) -> float:
    """Mean microseconds per call over B2B_CALLS calls back to back on the same buffers (no flush)."""
    g = _graph(fn, B2B_CALLS)
    g.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    g.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / B2B_CALLS


def copy_bandwidth_GBps(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy rate, bytes read plus bytes written."""
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    us = time_us(lambda: b.copy_(a), 20, None)
    return 2 * nbytes / us / 1e3


# ----------------------------------------------------------------------------------------------- the ops
KERNEL_OPS = {"btc": (btc.btc_linear, btc.btc_block_accumulators),
              "int8": (int8_kernel.int8_linear, int8_kernel.int8_block_accumulators)}
ACC_CHECK_LIMIT = 1 << 28  # block accumulators are compared up to this many (NB x M x N); outputs always


def _kernel_op(kernel, x, qweight, ws, wq, act_bits, cfg=None):
    """The layer op of one kernel, validated before it is timed: integer block accumulators equal to the reference
    (where they fit in memory) and outputs equal to ``reference_linear`` bit for bit (the canonical epilogue)."""
    linear, accumulators = KERNEL_OPS[kernel]
    fn = lambda: linear(x, qweight, ws, act_bits=act_bits, config=cfg)  # noqa: E731
    kp = wq.shape[1]
    if kp // BLOCK_K * x.shape[0] * wq.shape[0] <= ACC_CHECK_LIMIT:
        xq, _ = quantize_activation(pad_k(x.float(), kp), act_bits, 128)
        if not torch.equal(accumulators(x, qweight, act_bits=act_bits, config=cfg), block_int_gemm(xq, wq)):
            raise AssertionError(f"{kernel} accumulators differ from the reference (A{act_bits}, {cfg})")
    ref = reference_linear(x, wq, ws, act_bits=act_bits, act_group_size=128, weight_group_size=128)
    if not torch.equal(fn().view(torch.int16), ref.view(torch.int16)):
        raise AssertionError(f"{kernel} outputs differ from the reference bit pattern (A{act_bits}, {cfg})")
    return fn


def _close(y, ref, rtol, what):
    err = (y - ref).norm() / ref.norm().clamp_min(1e-30)
    if not torch.isfinite(y).all() or err > rtol:
        raise AssertionError(f"{what}: relative error {err:.3g} > {rtol}")


def _baselines(x, w16):
    """fp16, int8 and fp8 ops on the same (M, K) x (N, K) problem, each checked against an fp32 product."""
    m, k = x.shape
    ref = x.float() @ w16.float().T
    fp16 = lambda: torch.matmul(x, w16.T)  # noqa: E731
    _close(fp16().float(), ref, 2e-3, "fp16")
    mp = max(m, 17)  # cuBLASLt int8 needs M > 16: smaller M is padded (and timed padded)
    a8 = torch.randint(-128, 128, (mp, k), dtype=torch.int8, device="cuda")
    w8 = torch.randint(-128, 128, (w16.shape[0], k), dtype=torch.int8, device="cuda")
    int8 = lambda: torch._int_mm(a8, w8.T)  # noqa: E731  (w8.T: column-major B, the fast path)
    if not torch.equal(int8(), (a8.double() @ w8.double().T).to(torch.int32)):
        raise AssertionError("int8: _int_mm differs from the exact product")
    mf = -(-m // 16) * 16  # fp8 GEMM dimensions must be multiples of 16
    af = torch.nn.functional.pad(x, (0, 0, 0, mf - m)).to(torch.float8_e4m3fn)
    wf = w16.to(torch.float8_e4m3fn)
    one = torch.ones((), device="cuda")
    fp8 = lambda: torch._scaled_mm(af, wf.T, scale_a=one, scale_b=one, out_dtype=torch.float16)  # noqa: E731
    _close(fp8().float(), af.float() @ wf.float().T, 2e-3, "fp8")
    return {"fp16": (fp16, 2 * w16.numel()), "int8": (int8, w8.numel()), "fp8": (fp8, wf.numel())}


def _stream_ops(nbytes: int) -> dict:
    """The stream op in each of ``STREAM_LAUNCHES``, reading ``nbytes`` (rounded down to 16) of random words: name
    -> fn, each checked first (the sum of its per-CTA partial sums equals torch's sum of the words, mod 2^32)."""
    import numpy as np

    words = torch.randint(-(1 << 31), 1 << 31, (nbytes // 16 * 4,), dtype=torch.int32, device="cuda")
    want = int(words.long().sum().item()) & 0xFFFFFFFF
    dev = words.device.index
    sms = int8_kernel.sm_count(dev)
    ops = {}
    for unroll, per_sm, threads in STREAM_LAUNCHES:
        fn = cuda_launch.function(dev, "stream_read.cu", (f"-DSR_UNROLL={unroll}",), "stream_read", 0)
        partial = torch.empty(per_sm * sms, dtype=torch.int32, device="cuda")
        # no PDL: it depends on nothing before it (and a plain launch goes through CuPy, which takes the int64)
        op = lambda fn=fn, partial=partial, threads=threads: cuda_launch.launch(  # noqa: E731
            fn, (partial.numel(), 1, 1), (threads, 1, 1),
            (cuda_launch.ptr(words), np.int64(words.numel() // 4), cuda_launch.ptr(partial)), 0, dev, pdl=False)
        op()
        if int(partial.long().sum().item()) & 0xFFFFFFFF != want:
            raise AssertionError(f"stream ({unroll}, {per_sm}, {threads}): its sum differs from torch's")
        ops[f"stream/{unroll}x{per_sm}x{threads}"] = op
    return ops


def _layer(n: int, k: int):
    kp = -(-k // BLOCK_K) * BLOCK_K
    wq = torch.randint(-32, 32, (n, kp), dtype=torch.int8, device="cuda")
    wq[:, k:] = 0
    ws = (torch.rand((n, kp // 128), device="cuda") * 2e-3 + 1e-4).half()
    qweight = torch.cat([pack_weight(wq[i : i + 2048]) for i in range(0, n, 2048)])  # whole 16-row groups
    w16 = (wq[:, :k].float() * ws.float().repeat_interleave(128, 1)[:, :k]).half()
    return wq, ws, qweight, w16


# ----------------------------------------------------------------------------------------------- harness
def _versions() -> dict:
    import cupy

    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cupy": cupy.__version__,
            "arch": cuda_launch.compiled_arch(), "driver": _driver()}


def _driver() -> str:
    try:
        import subprocess

        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def _bench_shape(n, k, ms, repeats, flush, back_to_back):
    wq, ws, qweight, w16 = _layer(n, k)
    wbytes = btc.weight_bytes(n, k)
    streams, stream_bytes = _stream_ops(wbytes), wbytes // 16 * 16  # the bytes it reads: whole 16-byte words
    rows = []
    for m in ms:
        x = (torch.randn((m, k), device="cuda") * 2).half()
        ops = {f"W6A{a}/{kern}": (_kernel_op(kern, x, qweight, ws, wq, a), wbytes)
               for a in (8, 6) for kern in KERNEL_OPS}
        ops.update(_baselines(x, w16))
        times = time_ops({op: fn for op, (fn, _) in ops.items()} | streams, repeats, flush)
        best = min(streams, key=times.get)
        streams = {best: streams[best]}  # its reads do not depend on M: the first M's fastest launch from then on
        times["stream"] = times[best]
        ops["stream"] = (streams[best], stream_bytes)
        for op, (fn, nbytes) in ops.items():
            row = {"N": n, "K": k, "M": m, "op": op, "median_us": round(times[op], 2),
                   "weight_GBps": round(nbytes / times[op] / 1e3, 1),
                   "speedup_vs_fp16": round(times["fp16"] / times[op], 3)}
            if op == "stream":
                row["speedup_vs_fp8"] = round(times["fp8"] / times[op], 3)
                row["config"] = best.split("/")[1]
            if op.startswith("W6"):
                act_bits, kern = int(op[3]), op.split("/")[1]
                row["speedup_vs_int8"] = round(times["int8"] / times[op], 3)
                row["speedup_vs_fp8"] = round(times["fp8"] / times[op], 3)
                row["of_stream"] = round(times["stream"] / times[op], 3)
                row["dispatched"] = choose_kernel(m, n, qweight.shape[1] // 24 * 128, act_bits) == kern
                if kern == "btc":
                    row["config"] = str(btc.choose_config(n, qweight.shape[1] // 24 * 128, m, act_bits))
            if back_to_back and m <= B2B_MAX_M and op != "stream":
                row["b2b_us"] = round(time_back_to_back_us(fn), 2)
            rows.append(row)
        del x, ops
    return rows


def run_kernel_bench(shapes: list[tuple[int, int]], ms: list[int], *, repeats: int = 50, flush_l2: bool = True,
                     back_to_back: bool = False) -> dict:
    """Time the BTC layer ops and the library baselines; returns a JSON-able dict (see the module docstring)."""
    ok, why = cuda_launch.available()
    if not ok:
        raise cuda_launch.KernelUnavailable(f"the kernel bench cannot run: {why}", cuda_launch.INSTALL_HINT)
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda") if flush_l2 else None
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(), "versions": _versions(),
              "copy_bandwidth_GBps": round(copy_bandwidth_GBps(), 1), "repeats": repeats, "flush_l2": flush_l2,
              "flush": ("write" if FLUSH_WRITES else "read") if flush_l2 else "none",
              "rows": []}
    for n, k in shapes:
        result["rows"] += _bench_shape(n, k, ms, repeats, flush, back_to_back)
        torch.cuda.empty_cache()
    return result


def format_table(result: dict):
    """A rich Table of the bench result: one line per row."""
    from .ui import rows_table

    cols = ["N", "K", "M", "op", "dispatched", "median_us", "weight_GBps", "of_stream", "speedup_vs_fp16",
            "speedup_vs_int8", "speedup_vs_fp8", "b2b_us"]
    return rows_table(f"{result['device']}  copy {result['copy_bandwidth_GBps']} GB/s  {result['date']}", cols, result["rows"])


def _geomean(values: list[float]) -> float:
    import math

    return math.exp(sum(map(math.log, values)) / len(values))


def summary(result: dict) -> str:
    """Plain-text digest: per (shape, M) both kernels at both activation widths and the baselines; then per model
    the geometric-mean speedups of the dispatched op for decode (M <= 8) and prefill (M 512..4096), the INT8
    kernel alone for prefill, the lowest dispatched speedup over fp16 at any M, and where INT8 overtakes BTC."""
    by = {}
    for r in result["rows"]:
        by.setdefault((r["N"], r["K"], r["M"]), {})[r["op"]] = r
    lines = [f"copy {result['copy_bandwidth_GBps']} GB/s; N K M | A6 btc/int8 us (dispatched) | A8 btc/int8 us | "
             "fp16 int8 fp8 stream us"]
    for (n, k, m), ops in by.items():
        cells = []
        for a in (6, 8):
            b, i = ops[f"W6A{a}/btc"], ops[f"W6A{a}/int8"]
            cells.append(f"{b['median_us']}/{i['median_us']} ({'int8' if i['dispatched'] else 'btc'})")
        lines.append(f"{n} {k} {m} | {cells[0]} | {cells[1]} | {ops['fp16']['median_us']} {ops['int8']['median_us']} "
                     f"{ops['fp8']['median_us']} {ops['stream']['median_us']}")
    for name, shapes in SHAPES.items():
        keys = [key for key in by if (key[0], key[1]) in shapes]
        if not keys:
            continue
        small = [key for key in keys if key[2] <= 8]
        if small:  # what the harness leaves: an op that only read the packed weights
            lines.append(f"geomean {name} stream (reads the packed weights, nothing else), M<=8: " + ", ".join(
                f"{_geomean([by[key]['stream'][f'speedup_vs_{b}'] for key in small]):.2f}x {b}"
                for b in ("fp16", "fp8")))
        for a in (6, 8):
            disp = {key: next(r for op, r in by[key].items() if op.startswith(f"W6A{a}/") and r["dispatched"])
                    for key in keys}
            for label, sel in (("M<=8", lambda m: m <= 8), ("M 512..4096", lambda m: 512 <= m <= 4096)):
                ks = [key for key in keys if sel(key[2])]
                if ks:
                    share = f"; {_geomean([disp[key]['of_stream'] for key in ks]):.2f} of stream's speed"
                    lines.append(f"geomean {name} W6A{a} dispatched, {label}: " + ", ".join(
                        f"{_geomean([disp[key][f'speedup_vs_{b}'] for key in ks]):.2f}x {b}"
                        for b in ("fp16", "int8", "fp8")) + (share if label == "M<=8" else ""))
            ks = [key for key in keys if 512 <= key[2] <= 4096]
            if ks:
                lines.append(f"geomean {name} W6A{a} int8 kernel alone, M 512..4096: " + ", ".join(
                    f"{_geomean([by[key][f'W6A{a}/int8'][f'speedup_vs_{b}'] for key in ks]):.2f}x {b}"
                    for b in ("fp16", "int8")))
            worst = min(keys, key=lambda key: disp[key]["speedup_vs_fp16"])
            lines.append(f"lowest {name} W6A{a} dispatched vs fp16: {disp[worst]['speedup_vs_fp16']:.2f}x at "
                         f"{worst[0]}x{worst[1]} M={worst[2]}")
            for n, k in shapes:
                wins = sorted(key[2] for key in keys if key[:2] == (n, k)
                              and by[key][f"W6A{a}/int8"]["median_us"] < by[key][f"W6A{a}/btc"]["median_us"])
                if wins:
                    lines.append(f"crossover {n}x{k} W6A{a}: int8 faster from M={wins[0]}")
    return "\n".join(lines)


def crossovers(result: dict) -> dict[tuple[int, int, int], int]:
    """(N, padded K, act_bits) -> the M threshold (dispatch.CROSSOVER: INT8 from there on, BTC below) that loses
    the least against the faster kernel over every timed M: the smallest sum of log(chosen time / faster time)."""
    import math

    times = {}
    for r in result["rows"]:
        if r["op"].startswith("W6"):
            kp = -(-r["K"] // BLOCK_K) * BLOCK_K  # keyed by padded K, as QuantLinear looks it up
            times.setdefault((r["N"], kp, int(r["op"][3])), {}).setdefault(r["M"], {})[r["op"][5:]] = r["median_us"]
    out = {}
    for key, per_m in times.items():
        ms = sorted(per_m)

        def loss(threshold):
            return sum(math.log(per_m[m]["int8" if m >= threshold else "btc"] / min(per_m[m].values())) for m in ms)

        out[key] = min(ms + [2 * ms[-1]], key=loss)
    return out


# ----------------------------------------------------------------------------------------------- tuning
# (warps, kb, stages) at mt = 8; kb 4 runs four independent MMA chains per warp (see kernels/btc_gemm.cu)
TUNE_CANDIDATES = [(4, 4, 3), (4, 4, 4), (8, 4, 2), (8, 4, 3), (2, 4, 4), (4, 2, 4), (8, 2, 4), (4, 2, 6)]


def tune(shapes, ms=(1, 8), repeats: int = 30) -> dict:
    """Sweep tile configs (and split-K around the heuristic) per shape and act bits; only configs whose
    accumulators are exact and whose outputs match the reference are timed (``_kernel_op`` raises otherwise, and
    such a config is skipped). Returns btc_tuning.TUNED entries."""
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    table = {}
    for n, k in shapes:
        wq, ws, qweight, _ = _layer(n, k)
        xs = [(torch.randn((m, k), device="cuda") * 2).half() for m in ms]
        for a in (6, 8):
            best = None
            for warps, kb, stages in TUNE_CANDIDATES:
                base = btc.TileConfig(warps=warps, kb=kb, stages=stages, mt=8)
                for splits in _split_candidates(n, wq.shape[1], base, a):
                    cfg = replace(base, splits=splits)
                    try:  # each M with the plane-column token count btc.choose_config would give it
                        total = sum(time_us(_kernel_op("btc", x, qweight, ws, wq, a, replace(
                            cfg, pct=btc.plane_column_tokens(x.shape[0]))), repeats, flush) for x in xs)
                    except AssertionError as e:
                        print(f"REJECTED {n}x{k} A{a} {cfg}: {e}", flush=True)
                        continue
                    if best is None or total < best[0]:
                        best = (total, cfg)
            cfg = best[1]
            kp = wq.shape[1]  # the table is looked up by the padded K (btc_linear's), e.g. 640 for SmolLM2's 576
            table[(n, kp, 8, a)] = (cfg.warps, cfg.kb, cfg.stages, cfg.mt, cfg.splits)
            heur = btc.choose_config(n, kp, 1, a)
            print(f"tuned {n}x{k} A{a}: {cfg} {best[0] / len(ms):.1f} us (heuristic {heur})", flush=True)
        torch.cuda.empty_cache()
    return table


def _split_candidates(n: int, kp: int, cfg: btc.TileConfig, act_bits: int) -> list[int]:
    nb = kp // BLOCK_K
    tiles = -(-n // cfg.rows)
    slots = btc._slots(torch.cuda.current_device(), cfg, act_bits)
    cands = {max(1, min(nb, round(f * slots / tiles))) for f in (0.5, 1, 2, 3)}
    cands.add(btc.choose_splits(cfg, n, nb, 1, slots))
    return sorted(cands)


SHAPES = {
    "llama2-7b": [(4096, 4096), (12288, 4096), (11008, 4096), (4096, 11008)],
    "llama2-13b": [(5120, 5120), (15360, 5120), (13824, 5120), (5120, 13824)],
    "llama2-70b": [(8192, 8192), (10240, 8192), (28672, 8192), (8192, 28672)],
    "llama3-8b": [(6144, 4096), (14336, 4096), (4096, 14336)],
    "smollm2": [(576, 576), (192, 576), (1536, 576), (576, 1536)],
    # what decoding runs after q/k/v and gate/up fusion (fusion.py) where the table above lacks it: gate/up of
    # LLaMA-2-7B, LLaMA-3-8B, LLaMA-2-13B and LLaMA-2-70B; q/k/v and gate/up of SmolLM2
    "fused": [(22016, 4096), (28672, 4096), (27648, 5120), (57344, 8192), (960, 576), (3072, 576)],
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="kernel_bench.json")
    p.add_argument("--models", default="llama2-70b,llama2-7b,llama3-8b,smollm2")
    p.add_argument("--ms", default="1,2,4,8,16,32,64,128,256,512,1024,2048,4096")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--tune", action="store_true")
    p.add_argument("--no-pdl", action="store_true", help="launch without programmatic dependent launch (A/B)")
    p.add_argument("--fuse", action="store_true", help="let BTC quantize its activations in the GEMM at M <= 2 (A/B)")
    args = p.parse_args(argv)
    if args.no_pdl:
        cuda_launch.PDL = False
    if args.fuse:
        btc.FUSE_PACK = True
    shapes = [s for name in args.models.split(",") for s in SHAPES[name]]
    if args.tune:
        from . import btc_tuning

        table = tune(shapes)
        btc_tuning.TUNED.update(table)  # the bench below then runs the tuned configs
        btc.choose_config.cache_clear()
        print("TUNED = {")
        for key, val in table.items():
            print(f"    {key}: {val},")
        print("}")
    res = run_kernel_bench(shapes, [int(m) for m in args.ms.split(",")], repeats=args.repeats, back_to_back=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)
    from rich.console import Console

    Console(width=200).print(format_table(res))
    print(summary(res))
    print("CROSSOVER = {")
    for key, val in crossovers(res).items():
        print(f"    {key}: {val},")
    print("}")


if __name__ == "__main__":
    main()
