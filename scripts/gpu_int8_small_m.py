"""Small-M tiles of the INT8 kernel against BTC and cuBLAS fp16 (decode batches 8..64), on the H100.

Every config is first checked bit for bit against the reference (kernel_bench._kernel_op), then timed with the
bench's harness (CUDA graph, L2 flushed, median). Usage: python scripts/gpu_int8_small_m.py [OUT.json]
"""

from __future__ import annotations

import json
import sys

import torch

from flexq_cli import kernel_bench
from flexq_cli.int8_kernel import Int8Config

SHAPES = [(4096, 4096), (12288, 4096), (22016, 4096), (11008, 4096), (4096, 11008), (8192, 8192), (28672, 8192)]
MS = [8, 16, 32, 64]
CONFIGS = {
    "default": None,
    "16x64w4s4": Int8Config(bm=16, bn=64, wm=1, wn=4, stages=4),
    "16x64w4s6": Int8Config(bm=16, bn=64, wm=1, wn=4, stages=6),
    "16x32w2s6": Int8Config(bm=16, bn=32, wm=1, wn=2, stages=6),
    "32x64w4s4": Int8Config(bm=32, bn=64, wm=2, wn=2, stages=4),
    "32x32w2s6": Int8Config(bm=32, bn=32, wm=2, wn=1, stages=6),
    "16x128w8s4": Int8Config(bm=16, bn=128, wm=1, wn=8, stages=4),
}


def main() -> None:
    flush = torch.empty(kernel_bench.FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    rows = []
    for n, k in SHAPES:
        wq, ws, qweight, w16 = kernel_bench._layer(n, k)
        for m in MS:
            x = (torch.randn(m, k, device="cuda") * 0.5).half()
            row = {"n": n, "k": k, "m": m}
            row["fp16"] = kernel_bench.time_us(lambda: torch.matmul(x, w16.T), 30, flush)
            row["btc"] = kernel_bench.time_us(kernel_bench._kernel_op("btc", x, qweight, ws, wq, 8), 30, flush)
            for name, cfg in CONFIGS.items():
                if cfg is not None and cfg.bm > 2 * m:
                    continue
                try:
                    fn = kernel_bench._kernel_op("int8", x, qweight, ws, wq, 8, cfg)
                    row[name] = kernel_bench.time_us(fn, 30, flush)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    row[name] = f"{type(exc).__name__}: {exc}"[:120]
            rows.append(row)
            print(f"{n}x{k} M={m}: {row_cells(row)}", flush=True)
    if len(sys.argv) > 1:
        write_rows(sys.argv[1], rows)


def row_cells(row: dict) -> str:
    """A result row's timings (or errors) as one line: "name us  name us ..." without the shape."""
    return "  ".join(f"{key} {v:.1f}" if isinstance(v, float) else f"{key} {v}" for key, v in row.items()
                     if key not in ("n", "k", "m"))


def write_rows(path: str, rows: list[dict]) -> None:
    with open(path, "w") as fh:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
