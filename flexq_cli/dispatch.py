"""Which GPU kernel runs a W6Ax linear of M tokens: the bit-serial BTC GEMM or the INT8 tensor-core GEMM.

The BTC kernel (btc.py) streams the packed weights at close to memory speed but costs 36 / 48 binary MMAs per
multiply-add; the INT8 kernel (int8_kernel.py) unpacks the weights to int8 and multiplies on INT8 tensor cores
(on Hopper from 65 tokens the warp-specialized kernel: the whole layer op at 420-628 TOPS at M = 512..4096 on the
7B/70B shapes, `flexq bench --kernel` on the H100, twenty-second session), and up to 16 tokens streams the weights
through registers
(``int8_kernel.GemvConfig``). So BTC wins at 1-3 tokens on some wide layers and INT8 beyond a crossover M that
depends on the shape and the activation bits.

``CROSSOVER[(N, Kp, act_bits)]`` (Kp: K padded to 128, as packed) is the M from which INT8 runs (BTC below it),
measured on an NVIDIA H100 80GB HBM3 by ``flexq bench --kernel`` (``kernel_bench.crossovers``: the threshold that
loses least against the faster kernel over the timed M); shapes not in the table use ``DEFAULT_CROSSOVER``, the
median threshold of the table.
Both kernels give the same bits (the format's canonical epilogue), so the choice changes speed, never results.
"""

from __future__ import annotations

# H100 80GB HBM3, 2026-11-23 07:20-07:25 UTC (torch 2.11.0+cu130, CuPy 14.2.0, fifteenth session, weights in 16-row
# groups: packing.py): kernel_bench.crossovers() of the bench at M = 1, 2, 4 ... 128 (and 512, 2048 for the 7B and 70B
# shapes), 20 repeats; the "fused" shapes are what decoding runs after q/k/v and gate/up fusion. The register-fed INT8
# kernel is now the faster one from one token on every shape but LLaMA-3-8B's 14336 x 4096 (BTC up to 3 tokens), the
# A6 SmolLM2 down_proj and the fused 28672 x 4096 A6 and 22016 x 4096 (BTC at one token; see below the table).
CROSSOVER: dict[tuple[int, int, int], int] = {
    (4096, 4096, 8): 1,
    (4096, 4096, 6): 1,
    (12288, 4096, 8): 1,
    (12288, 4096, 6): 1,
    (11008, 4096, 8): 1,
    (11008, 4096, 6): 1,
    (4096, 11008, 8): 1,
    (4096, 11008, 6): 1,
    (22016, 4096, 8): 1,  # in the decode step, not alone: see below the table
    (22016, 4096, 6): 1,
    (28672, 4096, 8): 1,
    (28672, 4096, 6): 2,
    (57344, 8192, 8): 1,
    (57344, 8192, 6): 1,
    (960, 640, 8): 1,
    (960, 640, 6): 1,
    (3072, 640, 8): 1,
    (3072, 640, 6): 1,
    (576, 640, 8): 1,
    (576, 640, 6): 1,
    (192, 640, 8): 1,
    (192, 640, 6): 1,
    (1536, 640, 8): 1,
    (1536, 640, 6): 1,
    (576, 1536, 8): 1,
    (576, 1536, 6): 2,
    (8192, 8192, 8): 1,
    (8192, 8192, 6): 1,
    (10240, 8192, 8): 1,
    (10240, 8192, 6): 1,
    (28672, 8192, 8): 1,
    (28672, 8192, 6): 1,
    (8192, 28672, 8): 1,
    (8192, 28672, 6): 1,
    (6144, 4096, 8): 1,
    (6144, 4096, 6): 1,
    (14336, 4096, 8): 4,
    (14336, 4096, 6): 4,
    (4096, 14336, 8): 1,
    (4096, 14336, 6): 1,
}
# 22016 x 4096 (LLaMA-2-7B's fused gate/up) from one token is measured inside the CUDA-graph decode step, where it runs
# behind the RMSNorm that packs its input (scripts/gpu_step_configs.py llama-2-7b 1 2, H100, 2026-11-23, fifteenth
# session, two rounds, step us, BTC at one token -> INT8): W6A8 2849-2854 -> 2837-2839, W6A6 2867 -> 2827-2834;
# the layer 31.8-32.0 -> 31.1 us. Alone and L2-flushed BTC is the faster one at M = 1 (kernel_bench: 37.3 against 39.7
# us; back to back 30.4 against 28.6; the bench's threshold is 2), so `flexq bench --kernel` shows this one cell
# dispatched to the slower kernel. (12288 x 4096, the fused q/k/v, was such a cell before the 16-row groups; the bench
# now agrees with the step there: 25.8 against 26.3 us.)
DEFAULT_CROSSOVER = {6: 1, 8: 1}  # the median of the table's thresholds for those activation bits


def choose_kernel(m: int, n: int, k: int, act_bits: int) -> str:
    """'btc' or 'int8' for an (M, N, Kp) problem (Kp: the packed, padded K) with ``act_bits``-bit activations."""
    threshold = CROSSOVER.get((n, k, act_bits), DEFAULT_CROSSOVER[act_bits])
    return "int8" if m >= threshold else "btc"
