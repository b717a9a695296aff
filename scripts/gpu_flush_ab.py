"""A/B of the bench's L2 flush before each timed replay: a 256 MB write (kernel_bench before 2026-11-23), a 256 MB
read (kernel_bench since), a 1 GB read (the control: it must evict as well as the 256 MB read does).

For each shape and M, in one process: the dispatched W6A8 and W6A6 layer ops (validated bit for bit first), cuBLAS
fp16 and fp8, each timed as kernel_bench.time_ops does under each flush, ROUNDS times. Microseconds, medians of 20.
Usage: python scripts/gpu_flush_ab.py [SHAPES] [MS]   (SHAPES "8192x8192,..." or "": the 7B and 70B shapes; MS "1,8")
"""

from __future__ import annotations

import sys

import torch

from flexq_cli import kernel_bench as kb
from flexq_cli.dispatch import choose_kernel

ROUNDS = 2


def main() -> None:
    spec = (sys.argv[1] if len(sys.argv) > 1 else "") or ",".join(
        f"{n}x{k}" for name in ("llama2-7b", "llama2-70b") for n, k in kb.SHAPES[name])
    shapes = [tuple(int(v) for v in s.split("x")) for s in spec.split(",")]
    ms = [int(m) for m in (sys.argv[2] if len(sys.argv) > 2 else "1,8").split(",")]
    big = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    flushes = {"write256": (True, big[: kb.FLUSH_BYTES]), "read256": (False, big[: kb.FLUSH_BYTES]),
               "read1g": (False, big)}
    for n, k in shapes:
        wq, ws, qweight, w16 = kb._layer(n, k)
        for m in ms:
            x = (torch.randn((m, k), device="cuda") * 2).half()
            ops = {f"W6A{a}": kb._kernel_op(choose_kernel(m, n, wq.shape[1], a), x, qweight, ws, wq, a)
                   for a in (8, 6)}
            ops.update({name: fn for name, (fn, _) in kb._baselines(x, w16).items() if name != "int8"})
            for rnd in range(ROUNDS):
                for name, (writes, buf) in flushes.items():
                    kb.FLUSH_WRITES = writes
                    t = kb.time_ops(ops, 20, buf)
                    print(f"{n}x{k} M={m} round {rnd} {name}: " + " ".join(f"{o} {v:.2f}" for o, v in t.items())
                          + f" | W6A8 {t['fp16'] / t['W6A8']:.2f}x fp16", flush=True)
            del x, ops
        del wq, ws, qweight, w16
        torch.cuda.empty_cache()
    kb.FLUSH_WRITES = False


if __name__ == "__main__":
    main()
