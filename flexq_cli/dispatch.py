"""Which GPU kernel runs a W6Ax linear of M tokens: the bit-serial BTC GEMM or the INT8 tensor-core GEMM.

The BTC kernel (btc.py) streams the packed weights at close to memory speed but costs 36 / 48 binary MMAs per
multiply-add; the INT8 kernel (int8_kernel.py) unpacks the weights to int8 and multiplies on INT8 tensor cores
(179-283 TOPS measured at M >= 512 on 7B/70B shapes). So BTC wins for a few tokens (decode) and INT8 beyond a
crossover M that depends on the shape and the activation bits.

``CROSSOVER[(N, Kp, act_bits)]`` (Kp: K padded to 128, as packed) is the M from which INT8 runs (BTC below it),
measured on an NVIDIA H100 80GB HBM3 by ``flexq bench --kernel`` (``kernel_bench.crossovers``: the threshold that
loses least against the faster kernel over the timed M); shapes not in the table use ``DEFAULT_CROSSOVER``, the
median threshold of the table.
Both kernels give the same bits (the format's canonical epilogue), so the choice changes speed, never results.
"""

from __future__ import annotations

# H100 80GB HBM3, 2026-11-22 14:45 UTC (torch 2.11.0+cu130, CuPy 14.2.0): kernel_bench.crossovers() of the bench at
# M = 1, 2, 4 ... 128, 20 repeats, with the INT8 kernel's decode-sized tiles (int8_kernel.default_config; before
# them INT8 took over at M = 16-128); the "fused" shapes are what decoding runs after q/k/v and gate/up fusion.
CROSSOVER: dict[tuple[int, int, int], int] = {
    (4096, 4096, 8): 32,
    (4096, 4096, 6): 32,
    (12288, 4096, 8): 16,
    (12288, 4096, 6): 16,
    (11008, 4096, 8): 16,
    (11008, 4096, 6): 16,
    (4096, 11008, 8): 32,
    (4096, 11008, 6): 64,
    (22016, 4096, 8): 4,
    (22016, 4096, 6): 4,
    (28672, 4096, 8): 4,
    (28672, 4096, 6): 16,
    (57344, 8192, 8): 4,
    (57344, 8192, 6): 4,
    (960, 640, 8): 4,
    (960, 640, 6): 16,
    (3072, 640, 8): 4,
    (3072, 640, 6): 4,
    (8192, 8192, 8): 32,
    (8192, 8192, 6): 32,
    (10240, 8192, 8): 16,
    (10240, 8192, 6): 16,
    (28672, 8192, 8): 4,
    (28672, 8192, 6): 16,
    (8192, 28672, 8): 32,
    (8192, 28672, 6): 32,
    (6144, 4096, 8): 32,
    (6144, 4096, 6): 32,
    (14336, 4096, 8): 16,
    (14336, 4096, 6): 16,
    (4096, 14336, 8): 32,
    (4096, 14336, 6): 64,
    (576, 640, 8): 4,
    (576, 640, 6): 16,
    (192, 640, 8): 4,
    (192, 640, 6): 16,
    (1536, 640, 8): 4,
    (1536, 640, 6): 16,
    (576, 1536, 8): 32,
    (576, 1536, 6): 32,
}
DEFAULT_CROSSOVER = {6: 16, 8: 16}  # the median of the table's thresholds for those activation bits


def choose_kernel(m: int, n: int, k: int, act_bits: int) -> str:
    """'btc' or 'int8' for an (M, N, Kp) problem (Kp: the packed, padded K) with ``act_bits``-bit activations."""
    threshold = CROSSOVER.get((n, k, act_bits), DEFAULT_CROSSOVER[act_bits])
    return "int8" if m >= threshold else "btc"
