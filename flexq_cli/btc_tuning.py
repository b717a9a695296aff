"""Tile configurations for the BTC GEMM, tuned on an NVIDIA H100 80GB HBM3 (sm_90, 132 SMs).

``TUNED[(N, K, m_bucket, act_bits)] = (warps, kb, stages, mt, splits)`` (TileConfig's fields; ``btc.choose_config``
adds the plane-column token count for M <= ``btc.PC_MAX_TOKENS``); ``m_bucket`` is M rounded up to 8, 16,
32 or 128 (the last: anything larger). Every entry was produced by ``scripts/gpu_kernel_check.sh`` (the
``--tune`` sweep of ``flexq_cli.kernel_bench``), which times only configurations whose block accumulators equal
``reference.block_int_gemm`` and whose outputs pass the tolerance check; a configuration that fails is never
written here. Shapes not in the table get ``btc.choose_config``'s heuristic.
"""

from __future__ import annotations

# H100 80GB HBM3, 2026-11-22 (torch 2.11.0+cu130, CuPy 14.2.0, CUDA 13.0, sm_90): the --tune sweep over
# kernel_bench.TUNE_CANDIDATES at M = 1 and 8, every config checked exact before timing (none was rejected).
TUNED: dict[tuple[int, int, int, int], tuple[int, int, int, int, int]] = {
    (8192, 8192, 8, 6): (4, 4, 3, 8, 2),
    (8192, 8192, 8, 8): (4, 2, 4, 8, 3),
    (10240, 8192, 8, 6): (8, 2, 4, 8, 3),
    (10240, 8192, 8, 8): (8, 2, 4, 8, 3),
    (28672, 8192, 8, 6): (4, 4, 4, 8, 1),
    (28672, 8192, 8, 8): (4, 4, 3, 8, 1),
    (8192, 28672, 8, 6): (8, 4, 2, 8, 2),
    (8192, 28672, 8, 8): (4, 4, 3, 8, 2),
    (4096, 4096, 8, 6): (8, 4, 2, 8, 4),
    (4096, 4096, 8, 8): (8, 4, 2, 8, 4),
    (12288, 4096, 8, 6): (4, 4, 3, 8, 1),
    (12288, 4096, 8, 8): (4, 4, 3, 8, 1),
    (11008, 4096, 8, 6): (4, 4, 3, 8, 1),
    (11008, 4096, 8, 8): (4, 4, 3, 8, 1),
    (4096, 11008, 8, 6): (4, 4, 3, 8, 4),  # both chosen inside the decode step (below)
    (4096, 11008, 8, 8): (4, 4, 3, 8, 4),
    # 2026-11-22 (seventh session), the fused gate/up shapes decoding runs (kernel_bench --tune --models fused),
    # kept only where an A/B in one run (L2 flushed, 30 repeats, M = 1 / 2, us) against the heuristic's pick
    # showed a gain: 22016 x 4096 A8 45.5 / 53.7 -> 42.4 / 40.7, A6 45.3 / 52.6 -> 40.3 / 42.6; 57344 x 8192 A8
    # 179.9 / 201.7 -> 178.3 / 183.7. (Its A6 pick lost at M = 1, 165.2 -> 166.6; 28672 x 4096: no gain.)
    (22016, 4096, 8, 6): (4, 2, 4, 8, 1),
    (22016, 4096, 8, 8): (4, 2, 4, 8, 1),
    (57344, 8192, 8, 8): (4, 4, 3, 8, 1),
    # 2026-11-22 (ninth session): 4096 x 11008 (7B down_proj) above, from scripts/gpu_step_configs.py. In the
    # CUDA-graph decode step the GEMM prefetches its first stages - 1 stages during the SiLU kernel that feeds it
    # (PDL), which the isolated --tune sweep does not see: (8, 4, 2, 8, 4) -> (4, 4, 3, 8, 4) took the layer from
    # 24.7-26.8 to 21.4-21.6 us and the batch-1 step from 3,446-3,450 to 3,333-3,344 us (A8, five runs, their
    # first unwarmed rounds left out), for A6 (the w6a6 preset's step) 24.9 -> 21.8-21.9 us and 3,459 / 3,469 ->
    # 3,364 / 3,362 us. The other 7B decode shapes kept their entries: no alternative beat them in the step.
}


def m_bucket(m: int) -> int:
    for b in (8, 16, 32):
        if m <= b:
            return b
    return 128


def lookup(n: int, k: int, m: int, act_bits: int):
    """The tuned TileConfig for this shape, or None."""
    from .btc import TileConfig

    entry = TUNED.get((n, k, m_bucket(m), act_bits))
    if entry is None:
        return None
    return TileConfig(*entry)
