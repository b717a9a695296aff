"""The warp-specialized INT8 kernel (WS_TILE) in variants, against the mma.sync tile and cuBLAS fp16, on the H100:

    PYTHONPATH=. python3 scripts/gpu_int8_ws_diag.py MS SHAPES VARIANTS
    e.g. 2048 4096x4096,28672x8192 "ws=,s5=stages:5"

VARIANTS: name=A:v+B:v,...; each A:v an extra -D option for the .cu (kernels/w6_int8_gemm.cu), or stages:v the
config's stage count. Every variant is validated bit for bit against the reference before timing. All ops of a
shape take turns in one process (kernel_bench.time_ops): L2 flushed, median of REPEATS (default 10), W6A8,
microseconds; two rounds, so drift shows. (Until the twentieth session the kernel had timing-only switches,
I8_WS_DIAG and I8_WS_SKIP, that left parts of its work out; they went with the kernel they measured,
docs/kernel.md.)
"""
import os
import sys
from dataclasses import dataclass

import torch

from flexq_cli import int8_kernel
from flexq_cli.kernel_bench import FLUSH_BYTES, _kernel_op, _layer, time_ops


@dataclass(frozen=True)
class Variant(int8_kernel.Int8Config):
    """WS_TILE built with extra -D options."""

    extra: tuple = ()

    def defines(self, act_bits: int, bf16: bool, debug: bool = False) -> tuple[str, ...]:
        return (*super().defines(act_bits, bf16, debug), *self.extra)


def parse(spec: str) -> dict:
    fields = {f: getattr(int8_kernel.WS_TILE, f) for f in ("bm", "bn", "wm", "wn", "stages", "wgmma", "ws")}
    variants = {}
    for item in spec.split(","):
        name, _, defs = item.partition("=")
        options = dict(d.split(":") for d in filter(None, defs.split("+")))
        stages = int(options.pop("stages", fields["stages"]))
        variants[name] = Variant(**{**fields, "stages": stages}, extra=tuple(f"-D{k}={v}" for k, v in options.items()))
    return variants


def ops_for(x, layer, variants: dict) -> dict:
    """The ops of one problem: the mma.sync tile, each variant, cuBLAS fp16."""
    wq, ws, qweight, w16 = layer
    ops = {"mma": _kernel_op("int8", x, qweight, ws, wq, 8, int8_kernel.Int8Config())}
    for name, cfg in variants.items():
        ops[name] = _kernel_op("int8", x, qweight, ws, wq, 8, cfg)
    ops["fp16"] = lambda: torch.matmul(x, w16.T)
    return ops


def main() -> None:
    ms = [int(v) for v in sys.argv[1].split(",")]
    shapes = [tuple(int(d) for d in s.split("x")) for s in sys.argv[2].split(",")]
    variants = parse(sys.argv[3])
    repeats = int(os.environ.get("REPEATS", "10"))
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    for n, k in shapes:
        layer = _layer(n, k)
        for m in ms:
            ops = ops_for((torch.randn((m, k), device="cuda") * 2).half(), layer, variants)
            for rnd in range(2):
                res = time_ops(ops, repeats, flush)
                print(f"{n}x{k} M={m} round {rnd}: " + " ".join(f"{o} {v:.1f}" for o, v in res.items()), flush=True)
        del layer, ops
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
