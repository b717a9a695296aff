"""The register-fed INT8 decode kernel (kernels/w6_int8_gemv.cu) against BTC, the INT8 GEMM tile and cuBLAS fp16.

Every config is first checked bit for bit against the reference (kernel_bench._kernel_op: block accumulators and
outputs), then timed with the bench's harness (CUDA graph, L2 flushed, median). One line per (shape, M).
Usage: python scripts/gpu_int8_gemv.py [MS] [SHAPES] [OUT.json]   (MS "1,4,8,16"; SHAPES "4096x4096,..." or "all")
Env: REPEATS (20), CONFIGS "kw:rt:depth[:ring[:occupancy[:l2pf[:swpf]]]],..." ("-": the default; the token tiles
follow M), ACT_BITS (8), PARTS=1: for the fastest
config also the GEMV alone on activations packed before (packed_us), the quantize kernel alone (quant_us) and the
layer op back to back without an L2 flush (b2b_us).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
from gpu_int8_small_m import row_cells, write_rows  # scripts/ is on sys.path when run as a script

from flexq_cli import kernel_bench
from flexq_cli import int8_kernel
from flexq_cli.int8_kernel import GemvConfig

SHAPES = [(4096, 4096), (12288, 4096), (22016, 4096), (4096, 11008), (11008, 4096), (8192, 8192), (10240, 8192),
          (28672, 8192), (8192, 28672), (57344, 8192)]


@dataclass(frozen=True)
class _Knobs(GemvConfig):
    """A/B only: the register path's L2 prefetch-size hint on the weight loads (-DGV_L2PF: 0 none, 1 = 128 B,
    2 = 256 B) and the ring's scale prefetch (-DGV_SWPF); None keeps the .cu's default."""

    l2pf: int | None = None
    swpf: int | None = None

    def defines(self, act_bits, bf16, debug=False):
        extra = [f"-DGV_{k.upper()}={v}" for k, v in (("l2pf", self.l2pf), ("swpf", self.swpf)) if v is not None]
        return (*super().defines(act_bits, bf16, debug), *extra)


def _configs(m: int) -> dict[str, GemvConfig]:
    """CONFIGS items kw:rt:depth[:ring[:occupancy[:l2pf[:swpf]]]] ("-": the default)."""
    spec = os.environ.get("CONFIGS", "4:1:2,8:1:2,2:2:2,4:2:2,4:1:4,8:1:4")
    out = {}
    for item in spec.split(","):
        kw, rt, depth, *more = [None if v == "-" else int(v) for v in item.split(":")]
        more += [None] * (4 - len(more))
        cfg = dict(kw=kw, rt=rt, mt=1 if m <= 8 else 2, depth=depth, ring=more[0] or 0, occupancy=more[1] or 0)
        knobs = more[2:]
        out[f"gv{item.replace(':', '.')}"] = _Knobs(**cfg, l2pf=knobs[0], swpf=knobs[1]) if any(
            v is not None for v in knobs) else GemvConfig(**cfg)
    return out


def _parts(row, x, qweight, ws, bits, cfg, repeats, flush) -> None:
    nb = qweight.shape[1] // 24
    packed = int8_kernel.quantize_activations(x, nb, bits, 128)
    row["packed_us"] = kernel_bench.time_us(
        lambda: int8_kernel.int8_linear(x, qweight, ws, act_bits=bits, config=cfg, packed=packed), repeats, flush)
    row["quant_us"] = kernel_bench.time_us(lambda: int8_kernel.quantize_activations(x, nb, bits, 128), repeats,
                                           flush)
    row["b2b_us"] = kernel_bench.time_back_to_back_us(
        lambda: int8_kernel.int8_linear(x, qweight, ws, act_bits=bits, config=cfg))


def main() -> None:
    ms = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "1,4,8,16").split(",")]
    spec = sys.argv[2] if len(sys.argv) > 2 else "all"
    shapes = SHAPES if spec == "all" else [tuple(int(v) for v in s.split("x")) for s in spec.split(",")]
    repeats = int(os.environ.get("REPEATS", "20"))
    bits = int(os.environ.get("ACT_BITS", "8"))
    flush = torch.empty(kernel_bench.FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    rows = []
    for n, k in shapes:
        wq, ws, qweight, w16 = kernel_bench._layer(n, k)
        wbytes = qweight.numel() * 4 + ws.numel() * 2
        for m in ms:
            x = (torch.randn(m, k, device="cuda") * 0.5).half()
            row = {"n": n, "k": k, "m": m}
            row["fp16"] = kernel_bench.time_us(lambda: torch.matmul(x, w16.T), repeats, flush)
            row["btc"] = kernel_bench.time_us(kernel_bench._kernel_op("btc", x, qweight, ws, wq, bits), repeats, flush)
            row["i8tile"] = kernel_bench.time_us(kernel_bench._kernel_op("int8", x, qweight, ws, wq, bits), repeats,
                                                 flush)
            for name, cfg in _configs(m).items():
                try:
                    fn = kernel_bench._kernel_op("int8", x, qweight, ws, wq, bits, cfg)
                    row[name] = kernel_bench.time_us(fn, repeats, flush)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    row[name] = f"{type(exc).__name__}: {exc}"[:160]
            rows.append(row)
            cells = row_cells(row)
            ok = [(v, key) for key, v in row.items() if isinstance(v, float) and key.startswith("gv")]
            if ok:
                t, key = min(ok)
                if os.environ.get("PARTS") == "1":
                    _parts(row, x, qweight, ws, bits, _configs(m)[key], repeats, flush)
                    cells += "  " + "  ".join(f"{p} {row[p]:.1f}" for p in ("packed_us", "quant_us", "b2b_us"))
                cells += (f" | best {key} {row['fp16'] / t:.2f}x fp16 {row['btc'] / t:.2f}x btc "
                          f"{wbytes / t / 1e3:.0f} GB/s")
            print(f"{n}x{k} M={m}: {cells}", flush=True)
    if len(sys.argv) > 3:
        write_rows(sys.argv[3], rows)


if __name__ == "__main__":
    main()
