"""The W6Ax GEMM on INT8 tensor cores (kernels/w6_int8_gemm.cu), for prefill and large batches.

    y = int8_linear(x, qweight, w_scales, act_bits=8)

computes ``reference.reference_linear`` on the GPU, bit for bit, like ``btc.btc_linear``, from the same packed
6-bit weights (no second copy): each CTA unpacks its weight tile to int8 in shared memory and multiplies with
``mma.sync.m16n8k32.s8`` (6- and 8-bit activation codes are int8 alike). Two launches on PyTorch's current
stream: the activation quantize kernel (x -> int8 codes in the kernel's permuted K order + fp32 block scales) and
the GEMM, a programmatic dependent launch on sm_90 as the BTC kernel's.

Up to 16 tokens a second kernel takes the same inputs (kernels/w6_int8_gemv.cu, ``GemvConfig``): no CTA-wide
pipeline, each warp loads its weight words into registers (or through its own small shared-memory ring, ``ring``)
and unpacks them there, so a layer streams its weights with many independent warps in flight. ``default_config``
picks it from the token count.

The bit-serial BTC kernel costs 36/48 binary MMAs per multiply-add; it still wins at 1-3 tokens on some wide layers
and these kernels above a crossover measured on the H100 (``dispatch.py``). This module is the one source of truth
for the kernels' compile-time constants (``Int8Config.defines``, ``GemvConfig.defines``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import cuda_launch as cl
from .btc import check_accumulator_args, check_linear_args, check_packed
from .primitives import BLOCK_K, EPILOGUE_CHUNK_BLOCKS

KERNEL_FILE = "w6_int8_gemm.cu"
GEMV_FILE = "w6_int8_gemv.cu"
QUANT_WARPS = 4  # warps per CTA of the activation quantize kernel
SMEM_LIMIT = 227 * 1024  # dynamic shared memory one CTA may ask for on sm_90


@dataclass(frozen=True)
class Int8Config:
    """CTA tile: ``bm`` tokens x ``bn`` weight rows, ``wm`` x ``wn`` warps (warp tile bm/wm x bn/wn), a
    ``stages``-deep cp.async pipeline of 128-K blocks. The default is the largest tile whose three fp32/int32
    register tiles (block accumulator, chunk sum, running output) fit 255 registers per thread without spilling."""

    bm: int = 128
    bn: int = 128
    wm: int = 2
    wn: int = 4
    stages: int = 4
    wgmma: bool = False  # the Hopper mainloop (sm_90a): wm warpgroups of 64 tokens x 128 rows, wn = 1
    ws: bool = False  # with wgmma: warp-specialized and persistent (copy warps, wm consumer warpgroups of 64 rows)

    def __post_init__(self):
        tm, tn = self.bm // max(1, self.wm), self.bn // max(1, self.wn)
        if self.ws:
            bad = not self.wgmma or (self.bm, self.bn, self.wm, self.wn) not in ((128, 128, 2, 1), (128, 64, 1, 1)) \
                or self.smem_bytes() > SMEM_LIMIT
        elif self.wgmma:
            bad = self.bn != 128 or self.wn != 1 or self.wm not in (1, 2) or self.bm != 64 * self.wm \
                or self.smem_bytes() > SMEM_LIMIT
        else:
            bad = self.wm * self.wn not in (2, 4, 8) or tm % 16 or tn % 16 or tm * self.wm != self.bm \
                or tn * self.wn != self.bn or (self.bn * 4) % self.threads
        if bad or not 3 <= self.stages <= 6:
            raise ValueError(f"unsupported int8 tile config {self}")

    @property
    def threads(self) -> int:
        if self.ws:
            return 128 * (self.wm + 1)  # the producer warpgroup, then the consumers
        return 128 * self.wm if self.wgmma else 32 * self.wm * self.wn

    @property
    def kernel(self) -> str:
        return "i8_gemm_ws" if self.ws else "i8_gemm_wgmma" if self.wgmma else "i8_gemm"

    def defines(self, act_bits: int, bf16: bool, debug: bool = False) -> tuple[str, ...]:
        """-D options for the .cu; a wgmma config also names sm_90a (wgmma is an sm_90a feature, not sm_90), the
        warp-specialized one the shared memory its launch gets (a static_assert in the .cu holds smem_bytes to the
        kernel's own layout)."""
        return (
            f"-DI8_ACT_BITS={act_bits}", f"-DI8_BM={self.bm}", f"-DI8_BN={self.bn}", f"-DI8_WM={self.wm}",
            f"-DI8_WN={self.wn}", f"-DI8_STAGES={self.stages}", f"-DI8_BF16={int(bf16)}",
            f"-DI8_DEBUG_ACC={int(debug)}", f"-DI8_QUANT_WARPS={QUANT_WARPS}", f"-DI8_CHUNK={EPILOGUE_CHUNK_BLOCKS}",
            f"-DI8_WGMMA={2 if self.ws else int(self.wgmma)}", *(("-arch=sm_90a",) if self.wgmma else ()),
            *((f"-DI8_WS_SMEM={self.smem_bytes()}",) if self.ws else ()),  # the .cu checks its plan against it
        )

    def smem_bytes(self) -> int:
        """mma.sync: stages x (activation tile + packed weight records + scales), plus two unpacked int8 weight
        tiles. wgmma: two swizzled unpacked tiles and their float scales, then the stages, each rounded up to the
        1024 bytes of a swizzle atom, plus 1024 to align the base (.cu, W_HEAD and W_STAGE_BYTES). ws: the stages
        (activation tile and the tile's packed records, .cu W_STAGE), twice as many slots of both scales (W_SCALES),
        each consumer warp's 4 KB of finished outputs (W_OUT), two mbarriers per stage, 1024 to align the base."""
        if self.ws:
            return 1024 + self.stages * (128 * 128 + self.bn * 96) + 2 * self.stages * (128 + self.bn) * 4 \
                + self.bn // 16 * 128 * 32 + 2 * self.stages * 8
        if self.wgmma:
            head = _round_up(2 * self.bn * 128 + 2 * self.bn * 4, 1024)
            stage = _round_up(self.bm * 128 + self.bn * 112 + self.bm * 4 + self.bn * 4, 1024)
            return 1024 + head + self.stages * stage
        stage = self.bm * 144 + self.bn * 112 + self.bm * 4 + self.bn * 4
        return self.stages * stage + 2 * self.bn * 144


# The register-fed kernel's ring rows (GemvConfig.ring): a weight row's 96-byte record at this stride in shared memory,
# so the 8 rows one ldmatrix phase reads start 28 words apart and cover the 32 banks once.
RING_ROW_BYTES = 112


@dataclass(frozen=True)
class GemvConfig:
    """The decode-sized kernel (kernels/w6_int8_gemv.cu): no CTA-wide pipeline, each warp loads its weight words
    ``depth`` 128-K blocks ahead into registers (or ``ring`` blocks ahead into its own shared memory, below) and
    unpacks them in registers. CTA: ``rt`` row tiles of 16 weight
    rows x ``kw`` warps per row tile, splitting the K chunks; ``mt`` token tiles of 8 (M <= 8 * mt). ``occupancy``:
    the warps per SM its registers must allow (__launch_bounds__; 16 = 128 registers, 4 warps per scheduler), 0 (the
    default) for no bound. On the H100 a bound of 16 warps was no better overall: with one token tile it took 118
    instead of 130 registers and ran 0.61-1.11x the unbounded build, shape by shape; with two it spills.
    ``ring``: 0, or the weights come through a per-warp ring of that many blocks in shared memory (cp.async, then
    ldmatrix) instead of registers, ``ring`` blocks ahead; the scales and activation codes stay ``depth`` ahead in
    registers."""

    kw: int = 4
    rt: int = 1
    mt: int = 1
    depth: int = 2
    occupancy: int = 0
    ring: int = 0

    def __post_init__(self):
        occ = self.occupancy
        if not (1 <= self.kw <= 16 and 1 <= self.rt <= 4 and self.kw * self.rt <= 16 and self.mt in (1, 2)
                and self.depth in (2, 4) and occ % (self.kw * self.rt) == 0 and occ <= 64
                and self.ring in (0, 2, 4, 6, 8) and self.ring % self.depth == 0):
            raise ValueError(f"unsupported int8 gemv config {self}")

    @property
    def threads(self) -> int:
        return 32 * self.kw * self.rt

    @property
    def kernel(self) -> str:
        return "i8_gemv"

    @property
    def max_tokens(self) -> int:
        return 8 * self.mt

    def defines(self, act_bits: int, bf16: bool, debug: bool = False) -> tuple[str, ...]:
        """-D options for w6_int8_gemv.cu (its codes are int8 whatever the activation bits: act_bits unused)."""
        return (f"-DGV_KW={self.kw}", f"-DGV_RT={self.rt}", f"-DGV_MT={self.mt}", f"-DGV_DEPTH={self.depth}",
                f"-DGV_MINB={max(1, self.occupancy // (self.kw * self.rt))}", f"-DGV_BF16={int(bf16)}",
                f"-DGV_DEBUG_ACC={int(debug)}", f"-DGV_CHUNK={EPILOGUE_CHUNK_BLOCKS}", f"-DGV_RING={self.ring}",
                f"-DGV_RING_ROW={RING_ROW_BYTES}")

    @property
    def ring_bytes(self) -> int:
        """The rings of a CTA's warps: ``ring`` stages of 16 rows at a RING_ROW_BYTES stride each (.cu, RING_BYTES)."""
        return self.kw * self.rt * self.ring * 16 * RING_ROW_BYTES

    def smem_bytes(self, nb: int, debug: bool = False) -> int:
        """The rings, then the chunk-sum slots of the .cu (none in a debug build): warp 0's prefix, then one per
        chunk past warp 0's range."""
        nc = -(-nb // EPILOGUE_CHUNK_BLOCKS)
        return self.ring_bytes + (0 if debug else (nc - -(-nc // self.kw) + 1) * 16 * self.rt * 8 * self.mt * 4)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


# The Hopper mainloop's tile: two warpgroups, 128 tokens x 128 rows. Exact; against the mma.sync tile on the H100 at
# M = 512..4096 0.97-1.01x in the tenth session's runs, 1.01-1.11x in the seventeenth's (docs/kernel.md).
# default_config does not pick it: ask for it.
WGMMA_TILE = Int8Config(bm=128, bn=128, wm=2, wn=1, stages=4, wgmma=True)
# The warp-specialized persistent wgmma kernel (i8_gemm_ws): three copy warps (bulk copies of the packed records and
# of the tiled activations, cp.async of the weight scales), two consumer warpgroups that unpack their own weight rows
# into wgmma's register operand, multiply and run the epilogue, mbarriers between. Exact; on the H100 1.3-1.4x the
# kernel it replaced (which unpacked into shared memory in separate warps) and 1.8-2.1x the mma.sync tile at
# M = 512-2048 (twentieth session, docs/kernel.md); the one before was already 1.35-1.68x the mma.sync tile at every
# M from 65 to 4096 on the LLaMA-2-7B/70B, LLaMA-3-8B, SmolLM2 and fused linears, so default_config picks it from 65
# tokens on a Hopper GPU. It reads the tiled activation layout (quant_layout), which the RMSNorm and SiLU kernels
# write for it (norm_kernel.py, pack "int8_tiled"; modules._pack_for). 6 stages, the most that fit next to the 32 KB
# output buffer (twenty-second session); 5-7 measured within 1% of each other before that buffer, with one copy warp.
WS_TILE = Int8Config(bm=128, bn=128, wm=2, wn=1, stages=6, wgmma=True, ws=True)
# The same kernel on 64-row tiles (one consumer warpgroup): twice the CTAs, for where 128-row tiles leave SMs idle
# (ws_config). Exact; one 64-row tile took 0.62-0.67 of a 128-row one's time on the H100 (one wave of each: 4096,
# 5120, 6144 and 8192 rows at 65-128 tokens, K = 4096..28672, 25th session).
WS_TILE_64 = Int8Config(bm=128, bn=64, wm=1, wn=1, stages=6, wgmma=True, ws=True)
WS_64_TILE_TIME = 0.64


@functools.lru_cache(maxsize=None)
def sm_count(device: int) -> int:
    """Multiprocessors of the device: the persistent kernel's grid."""
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.lru_cache(maxsize=None)
def wgmma_capable(device: int) -> bool:
    """wgmma exists on sm_90 (Hopper) only: not on Ampere/Ada, and Blackwell's sm_100 has a different MMA."""
    return torch.cuda.get_device_capability(device) == (9, 0)


# Decode-sized tiles (17 <= M <= 64; up to 16 tokens the register-fed kernel below), chosen from an H100 sweep of
# the configs below on LLaMA-2-7B/70B shapes (scripts/gpu_int8_small_m.py and the bench of 2026-11-22 14:30-14:45
# UTC, docs/kernel.md): a CTA streams its bn weight rows over all of K, so what matters at small M is enough CTAs for
# the SMs (small N: 64-row tiles, a deep pipeline) without reading the weights once per token tile (large N: one
# token tile, wider rows; 33-64 tokens: 16-token tiles only below N = 8192, which took 137 us against 102 with the
# 64 x 128 tile), in one wave: 32 x 32 tiles fit 3 CTAs per SM by their shared memory (computed, not profiled), 396
# CTAs on an H100, so N <= 12,672; 14336 rows (448 CTAs) took 73 us against 42-54 us at M = 16 and 64.
NARROW_N, SMALL_N, ONE_WAVE_32 = 8_192, 10_000, 12_672
_TILE_16_64 = Int8Config(bm=16, bn=64, wm=1, wn=4, stages=6)


# The register-fed kernel (w6_int8_gemv.cu) up to 16 tokens: on the H100 it beat every tile below at M = 1..16 on the
# LLaMA-2-7B/70B shapes (scripts/gpu_int8_gemv.py, 2026-11-23, docs/kernel.md), e.g. 4096 x 4096 at M = 8 14.5 us
# against 35.7 for the 16 x 64 tile, 28672 x 8192 at M = 16 117.6 against 119.2.
GEMV_MAX_M = 16
# Warps per row tile, row tiles per CTA and ring where the rule of gemv_config lost more than 3% to the best of a
# sweep (scripts/gpu_int8_gemv.py, L2 flushed: kw 1..16, 4 x 2 rows, rings of 2, 4 and 8; same run), over M = 1, 8
# for one token tile, at M = 16 for two; the 7B decode shapes with two token tiles inside the decode step at batch
# 16 (scripts/gpu_step_configs.py, the layer's GEMM in us, two rounds), which is where they run. H100, 2026-11-23.
# With the 16-row weight groups (packing.py) the rule's kw 2 without a ring beat the entries 12288 x 4096 had (4, 1,
# 2: 22.6-22.7 against 24.0-24.1 us) and 22016 x 4096 (4, 1, 4: 37.8-37.9 against 43.3-43.4): step 4045-4047 against
# 4256-4264 us. The 70B entries were re-swept on the groups (scripts/gpu_int8_gemv.py 1,8,16, L2 flushed, 20 repeats,
# same day): the rings lost to plain register loads on three of the four.
# (N, Kp, token tiles) -> (kw, rt, ring).
GEMV_TUNED: dict[tuple[int, int, int], tuple[int, int, int]] = {
    (28672, 8192, 1): (8, 1, 0),  # 77.8 us at M = 1, 80.0 at M = 8 against 83.0, 85.6 with a ring of 4, 85.2, 88.5 kw 2
    (28672, 8192, 2): (4, 1, 0),  # 96.7 us at M = 16 against 111.5 with a ring of 4
    (8192, 8192, 2): (2, 1, 4),  # 40.2 against 44.5 (kw 8, the rule)
    (8192, 28672, 2): (4, 1, 0),  # 107.5 against 110.0 (kw 8, the rule: 2%, under the 3% bar) and 114.2 (16, 1, 2)
    (4096, 4096, 2): (4, 1, 4),  # in the step 10.5 against 11.5-11.6 (2 row tiles of 4 warps, the rule)
    (4096, 11008, 2): (4, 1, 4),  # in the step 22.1-22.2 against 25.1-25.2 (2 row tiles of 4 warps)
    # LLaMA-3-8B's fused q/k/v and gate/up and its down_proj (2026-11-23, 23rd session): the isolated sweep, then
    # inside the W6A8 decode step (scripts/gpu_step_configs.py llama-3-8b, three rounds each): the step 3328-3334 ->
    # 3264-3267 us at batch 1, 4402-4408 -> 4152 us at batch 16.
    (6144, 4096, 1): (4, 1, 0),  # 13.7 / 14.0 us at M = 1 / 8 against 14.5 / 15.1 (kw 8, the rule); step 12.5 v 13.6
    (6144, 4096, 2): (4, 1, 0),  # 15.7 against 19.5 (kw 8, the rule) at M = 16; in the step 14.3 against 18.7-19.1
    (28672, 4096, 1): (4, 1, 0),  # 40.3-40.5 / 41.3-41.5 against 42.0-42.1 / 42.7-42.8 (kw 2); step 40.0 v 40.8-41.2
    (4096, 14336, 2): (4, 1, 4),  # 31.0 against 32.9-33.0 (2 row tiles of 4 warps); step 28.8-29.0 v 31.5-32.0
    # SmolLM2-135M (K = 576 is Kp = 640) at 9-16 tokens, where the rule gives 2 row tiles of 4 warps (same session,
    # the isolated sweep, two runs; in the W6A8 decode step at batch 16, scripts/gpu_step_configs.py smollm2-135m,
    # three rounds: the step 1261-1273 us against 1351-1353 with the rule, the down_proj 5.1 us against 6.7):
    (960, 640, 2): (4, 1, 0),  # fused q/k/v: 7.0 against 7.7-7.8 us
    (576, 640, 2): (4, 1, 0),  # o_proj: 6.8 against 7.6
    (3072, 640, 2): (4, 1, 0),  # fused gate/up: 7.6 against 7.9
    (576, 1536, 2): (8, 1, 0),  # down_proj: 7.3-7.4 against 9.3
    # LLaMA-2-13B's fused q/k/v, o_proj, fused gate/up and down_proj (24th session): the isolated sweep (one run, 30
    # repeats, us at M = 1 / 8, then 16), then inside the W6A8 decode step (three rounds): at batch 1 the step
    # 4993-4996 us against 5463-5474 with the rule (5044-5046 with (4, 1, 0) for q/k/v); at batch 16 6994-7011
    # against 7903-7905 (the GEMMs in the step: 37.0-37.5 / 20.6-21.1 / 57.9-58.4 / 34.0-34.5 us against 40.7-40.8 /
    # 29.7-29.8 / 60.2-60.4 / 42.0-42.1 with the rule).
    (15360, 5120, 1): (4, 2, 0),  # 28.7 / 30.2 against 33.9 / 35.2 (kw 2, the rule); step 28.0 against 32.4-33.0
    (15360, 5120, 2): (4, 1, 0),  # 37.5 against 41.4
    (5120, 5120, 1): (4, 1, 0),  # 14.3 / 14.8 against 15.9 / 16.7 (kw 8); step 16.9-17.0 against 18.8-19.1
    (5120, 5120, 2): (4, 1, 0),  # 17.3 against 23.3
    (27648, 5120, 1): (4, 1, 0),  # 47.1 / 48.7 against 49.9 / 51.6 (kw 2); step 46.7 against 49.1-49.5
    (27648, 5120, 2): (4, 1, 0),  # 58.8 against 61.2
    (5120, 13824, 1): (4, 1, 0),  # 27.6 / 28.2 against 30.2 / 32.3 (kw 8); step 25.8-25.9 against 28.5-29.0
    (5120, 13824, 2): (4, 1, 0),  # 35.9 against 43.2
    # its unfused gate / up (--no-fuse), the isolated sweep only (the step runs the fused 27648 x 5120):
    (13824, 5120, 1): (4, 2, 0),  # 27.5 / 28.6 against 31.8 / 32.9 (kw 2, the rule; BTC 29.8 at M = 1)
    (13824, 5120, 2): (4, 1, 0),  # 36.2 against 40.0
}


def gemv_config(m: int, n: int, kp: int) -> GemvConfig:
    """The register-fed kernel's config for M <= 16 tokens, N rows, Kp (padded) K. The rule, from the sweep: narrow
    layers (few row tiles) split K over 8 warps per row tile, so that 4096- and 8192-row layers still launch
    ~2,000-4,000 warps; wide layers have warps enough with 2, which keeps each warp's stream long; at 9..16
    tokens a 4096-row layer does best with two row tiles of 4 warps per CTA."""
    mt = 1 if m <= 8 else 2
    tuned = GEMV_TUNED.get((n, kp, mt))
    if tuned:
        kw, rt, ring = tuned
    elif n <= 4096 and mt == 2:
        kw, rt, ring = 4, 2, 0
    else:
        kw, rt, ring = (8 if n <= 8192 else 2), 1, 0
    return GemvConfig(kw=kw, rt=rt, mt=mt, ring=ring)


def ws_config(m: int, n: int, sms: int) -> Int8Config:
    """WS_TILE, or WS_TILE_64 where its waves of tiles take less time on ``sms`` SMs (0: not known, WS_TILE): the
    persistent kernel runs ceil(tiles / SMs) tiles on its busiest SM, and a 64-row tile takes WS_64_TILE_TIME of a
    128-row one. So 64-row tiles where 128-row ones fill at most half the SMs (1.47-1.60x on the H100), or one to one
    and a half waves (1.12-1.14x); elsewhere they were 0.84-0.98x, or at most 1.02x (docs/kernel.md, "64-row tiles";
    scripts/gpu_ws_rows.py)."""
    if sms <= 0:
        return WS_TILE
    tiles = -(-m // 128) * -(-n // 128)
    return WS_TILE_64 if WS_64_TILE_TIME * -(-2 * tiles // sms) < -(-tiles // sms) else WS_TILE


@functools.cache
def default_config(m: int, n: int, kp: int, wgmma: bool = False, sms: int = 0) -> Int8Config | GemvConfig:
    """The config for M tokens, N weight rows and Kp (padded) K on a GPU of ``sms`` SMs: the register-fed kernel up
    to GEMV_MAX_M tokens, from 65 tokens tiles of 128 tokens (where the GPU has ``wgmma`` the warp-specialized
    kernel, of 128 or 64 rows: ws_config), decode-sized tiles between (cached: every int8_linear call asks, an eager
    decode once per linear)."""
    if m <= GEMV_MAX_M:
        return gemv_config(m, n, kp)
    if m > 64:
        return ws_config(m, n, sms) if wgmma else Int8Config()
    if m > 32:  # four 16-token tiles read the weights four times: only worth it for the narrowest layers
        return _TILE_16_64 if n < NARROW_N else Int8Config(bm=64, bn=128, wm=1, wn=8)
    if n < SMALL_N:
        return _TILE_16_64
    if n <= ONE_WAVE_32:
        return Int8Config(bm=32, bn=32, wm=2, wn=1, stages=6)
    return Int8Config(bm=32, bn=64, wm=2, wn=2, stages=4)


def quant_layout(m: int, nb: int, tiled: bool = False) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the quantized activations of M = m tokens, NB blocks: (M, NB*128) int8 codes, (M, NB) scales; tiled
    (the warp-specialized kernel's, kernels/w6_int8_gemm.cu, i8_act_quant): (Mt, NB, 128, 128) and (Mt, NB, 128) for
    Mt token tiles of 128."""
    if tiled:
        mt = -(-m // 128)
        return (mt, nb, 128, BLOCK_K), (mt, nb, 128)
    return (m, nb * BLOCK_K), (m, nb)


def quant_tokens(m: int, tiled: bool = False) -> int:
    """The tokens ``quant_layout``'s buffers hold, all written by a pack (its grid covers them): M, or tiled the
    Mt * 128 of whole token tiles, the padding tokens' codes and scales zeros."""
    return -(-m // 128) * 128 if tiled else m


def empty_quant(m: int, nb: int, device, tiled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised buffers of ``quant_layout``'s shapes, for i8_act_quant or the RMSNorm kernel to fill."""
    codes, scales = quant_layout(m, nb, tiled)
    return (torch.empty(codes, dtype=torch.int8, device=device),
            torch.empty(scales, dtype=torch.float32, device=device))


# The module i8_act_quant is compiled from: the GEMM's file with the default tile, whatever config the GEMM runs
# (the quantize kernel's code depends on the activation bits and dtype only).
_QUANT_MODULE_CONFIG = Int8Config()


def quantize_activations(x2: torch.Tensor, nb: int, act_bits: int, act_group_size: int, tiled: bool = False):
    """(M, K) fp16/bf16 -> ``quant_layout``'s (int8 codes in the kernel's K order, float32 block scales)."""
    import numpy as np

    m, k = x2.shape
    dev = x2.device.index
    xq, sx = empty_quant(m, nb, x2.device, tiled)
    whole = act_group_size == -1
    grid = (quant_tokens(m, tiled), 1 if whole else -(-nb // QUANT_WARPS), 1)
    args = (cl.ptr(x2), cl.ptr(xq), cl.ptr(sx), np.int32(m), np.int32(k), np.int32(nb), np.int32(whole),
            np.int32(tiled))
    opts = _QUANT_MODULE_CONFIG.defines(act_bits, x2.dtype == torch.bfloat16)
    cl.launch(cl.function(dev, KERNEL_FILE, opts, "i8_act_quant", 0), grid, (32 * QUANT_WARPS, 1, 1), args, 0, dev)
    return xq, sx


def _gemm(x2, xq, sx, qweight, w_scales, bias, y, *, act_bits, weight_group_size, cfg, debug):
    """Launch the GEMM kernel of ``cfg`` (i8_gemm / i8_gemm_wgmma or i8_gemv: one argument list)."""
    import numpy as np

    m, n, dev = x2.shape[0], qweight.shape[0], x2.device.index
    nb = xq.shape[1] if xq.dim() == 4 else xq.shape[1] // BLOCK_K
    if isinstance(cfg, GemvConfig):
        file, grid, smem = GEMV_FILE, (-(-n // (16 * cfg.rt)), 1, 1), cfg.smem_bytes(nb, debug)
        if smem > SMEM_LIMIT:
            raise ValueError(f"int8 gemv config {cfg} needs {smem} bytes of shared memory for K = {nb * BLOCK_K} "
                             f"(at most {SMEM_LIMIT}): use more warps per row tile (kw), fewer token tiles (mt) "
                             "or a shorter ring")
    elif cfg.ws:  # persistent: one CTA per SM at most, each walks its share of the tiles
        file, smem = KERNEL_FILE, cfg.smem_bytes()
        grid = (min(-(-n // cfg.bn) * -(-m // cfg.bm), sm_count(dev)), 1, 1)
    else:
        file, grid, smem = KERNEL_FILE, (-(-n // cfg.bn), -(-m // cfg.bm), 1), cfg.smem_bytes()
        if grid[1] > 65535:
            raise ValueError(f"M={m} is too large for one int8 GEMM launch (at most {65535 * cfg.bm} tokens)")
    args = (
        cl.ptr(qweight), cl.ptr(w_scales), cl.ptr(xq), cl.ptr(sx), cl.ptr(bias), cl.ptr(y), np.int32(m),
        np.int32(n), np.int32(nb), np.int32(w_scales.shape[1]), np.int32(0 if weight_group_size == -1 else 1),
        np.int32(bias is not None and bias.dtype == torch.float32),
    )
    opts = cfg.defines(act_bits, x2.dtype == torch.bfloat16, debug)
    cl.launch(cl.function(dev, file, opts, cfg.kernel, smem), grid, (cfg.threads, 1, 1), args, smem, dev)


def _tiled_acts(cfg: Int8Config | GemvConfig) -> bool:
    """Whether the kernel of ``cfg`` reads ``quant_layout``'s tiled activations (the warp-specialized one)."""
    return isinstance(cfg, Int8Config) and cfg.ws


def _config(config: Int8Config | GemvConfig | None, m: int, n: int, kp: int, device: torch.device):
    if isinstance(config, GemvConfig) and m > config.max_tokens:
        raise ValueError(f"int8 gemv config {config} takes at most {config.max_tokens} tokens, got M={m}: "
                         "use mt=2 (16 tokens) or an Int8Config")
    if isinstance(config, Int8Config) and config.wgmma and not wgmma_capable(device.index):
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"int8 tile config {config} needs wgmma, an sm_90 (Hopper) feature; {name} lacks it: "
                         "use a config with wgmma=False")
    wgmma = wgmma_capable(device.index)
    return config or default_config(m, n, kp, wgmma, sm_count(device.index) if wgmma else 0)


def _wrong_layout(cfg: Int8Config | GemvConfig, tiled: bool) -> str:
    """int8_linear's error for a pack in the activation layout its kernel does not read."""
    layout, pack = ("tiled", "int8_tiled") if tiled else ("row", "int8")
    return (f"int8 tile config {cfg} reads the {layout} activation layout and the pack given is in the other one: "
            f"pass packed=None or a pack made with pack={pack!r}")


def reads_tiled_acts(m: int, n: int, kp: int, device: torch.device) -> bool:
    """Whether int8_linear's default config for this problem reads the tiled activation layout (modules._pack_for
    then has the norm kernels make the pack "int8_tiled")."""
    return _tiled_acts(_config(None, m, n, kp, device))


def int8_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    w_scales: torch.Tensor,
    *,
    act_bits: int,
    act_group_size: int = 128,
    weight_group_size: int = 128,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: Int8Config | GemvConfig | None = None,
    packed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """W6A6 / W6A8 linear layer on INT8 tensor cores: ``reference_linear`` on the GPU, bit for bit.

    Arguments as ``btc.btc_linear`` (same packed weights, checks and ValueErrors): x (..., K) float16/bfloat16
    CUDA contiguous; qweight (N, Kp/128*24) int32; w_scales (N, Kp/weight_group_size) or (N, 1) float16;
    act_bits 6 or 8; group sizes 128 or -1; bias (N,) or None; out optional (..., N). config: force a tile config.
    packed: ``quantize_activations``' result for x in the layout the chosen kernel reads (tiled for the
    warp-specialized one: ``reads_tiled_acts``), made by the kernel before (the RMSNorm's or the SiLU product's,
    norm_kernel.py): the quantize launch is skipped.
    """
    x2, out, kp = check_linear_args(x, qweight, w_scales, bias, out, act_bits, act_group_size, weight_group_size)
    if x2.shape[0] == 0:
        return out
    cfg = _config(config, x2.shape[0], qweight.shape[0], kp, x.device)
    tiled = _tiled_acts(cfg)
    if packed is not None:
        wrong = (quant_layout(x2.shape[0], kp // BLOCK_K, not tiled), lambda: _wrong_layout(cfg, tiled))
        check_packed(packed, quant_layout(x2.shape[0], kp // BLOCK_K, tiled), torch.int8, x.device, act_group_size,
                     wrong)
        xq, sx = packed
    else:
        xq, sx = quantize_activations(x2, kp // BLOCK_K, act_bits, act_group_size, tiled)
    _gemm(x2, xq, sx, qweight, w_scales, bias, out, act_bits=act_bits, weight_group_size=weight_group_size,
          cfg=cfg, debug=False)
    return out


def int8_block_accumulators(x: torch.Tensor, qweight: torch.Tensor, *, act_bits: int, act_group_size: int = 128,
                            config: Int8Config | GemvConfig | None = None) -> torch.Tensor:
    """The GEMM's exact int32 per-block dot products, (Kp/128, M, N): equal to ``reference.block_int_gemm``."""
    x2, scales, acc = check_accumulator_args(x, qweight, act_bits, act_group_size)
    if x2.shape[0] == 0:
        return acc
    cfg = _config(config, x2.shape[0], qweight.shape[0], acc.shape[0] * BLOCK_K, x.device)
    xq, sx = quantize_activations(x2, acc.shape[0], act_bits, act_group_size, _tiled_acts(cfg))
    _gemm(x2, xq, sx, qweight, scales, None, acc, act_bits=act_bits, weight_group_size=128, cfg=cfg, debug=True)
    return acc
