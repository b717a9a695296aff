"""The bit-serial BTC GEMM (kernels/btc_gemm.cu) from Python: run-time compile with CuPy, validate, launch.

    y = btc_linear(x, qweight, w_scales, act_bits=6, act_group_size=128, weight_group_size=128)

computes ``reference.reference_linear`` on the GPU, bit for bit, in two launches on PyTorch's current stream: the
activation quantize-and-pack kernel (x -> bit planes + fp32 scales) and the GEMM (1-bit tensor-core MMAs, the fp32
epilogue in the format's canonical order, split-K only at epilogue-chunk boundaries); on sm_90 the GEMM is a
programmatic dependent launch, so its weight prefetch overlaps the pack kernel (``PDL``). Launch scalars are
numpy int32 / uint64 (CuPy checks nothing), tensors go by ``data_ptr``, so the calls work under CUDA graph capture.

This module is the one source of truth for the kernel's compile-time constants (``TileConfig.defines``).
CuPy is imported inside the functions that need it (cuda_launch.py); without it they raise
:class:`cuda_launch.KernelUnavailable`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from . import cuda_launch as cl
from .primitives import BLOCK_K, EPILOGUE_CHUNK_BLOCKS

ACT_BITS = (6, 8)
GROUP_SIZES = (128, -1)  # act_group_size / weight_group_size the kernel supports
W_WORDS = 24  # uint32 words per (row, 128-K block) weight record: 6 planes x 4 words
ROW_ALIGN = 16  # N must be a multiple of one MMA's 16 weight rows
PACK_WARPS = 4  # warps per CTA of the activation pack kernel
KERNEL_FILE = "btc_gemm.cu"
_MAX_TILES = 1 << 16  # split-K arrival counters kept per device


@dataclass(frozen=True)
class TileConfig:
    """One kernel tile configuration: compile-time tile sizes plus the run-time split-K factor.

    warps: warps per CTA, each owning 16 weight rows (the MMA's M); kb: 128-K blocks per pipeline stage;
    stages: cp.async pipeline depth; mt: tokens per CTA (multiple of 8, the MMA's N); splits: split-K ways
    (0: choose from the SM count); pct: 0 puts tokens in the MMA's columns (21/29 chained MMAs per block for up
    to 8 tokens), 1/2/4/8 puts (token, activation plane) slots there for at most pct tokens (6 * pct independent
    MMAs per block; see the .cu), the cheaper scheme for a few tokens. fuse (plane columns only): the GEMM
    quantizes its own activations (act groups of 128) instead of a separate pack launch before it.
    """

    warps: int = 4
    kb: int = 2
    stages: int = 4
    mt: int = 8
    splits: int = 0
    pct: int = 0
    fuse: bool = False

    def __post_init__(self):
        if self.warps not in (1, 2, 4, 8) or self.kb not in (1, 2, 4) or not 2 <= self.stages <= 8:
            raise ValueError(f"unsupported tile config {self}")
        if self.mt not in (8, 16, 32) or self.splits < 0:
            raise ValueError(f"unsupported tile config {self}")
        if self.pct not in (0, 1, 2, 4, 8) or (self.pct and self.mt != 8):
            raise ValueError(f"unsupported tile config {self}: pct must be 0, 1, 2, 4 or 8, with mt 8")
        if self.fuse and not self.pct:
            raise ValueError(f"unsupported tile config {self}: the fused activation pack needs plane columns (pct)")

    @property
    def rows(self) -> int:
        return 16 * self.warps

    def defines(self, act_bits: int, bf16: bool, debug: bool = False) -> tuple[str, ...]:
        """The -D options that specialise kernels/btc_gemm.cu (compile-time part of the config only)."""
        return (
            f"-DBTC_ACT_BITS={act_bits}", f"-DBTC_WARPS={self.warps}", f"-DBTC_KB={self.kb}",
            f"-DBTC_STAGES={self.stages}", f"-DBTC_MT={self.mt}", f"-DBTC_BF16={int(bf16)}",
            f"-DBTC_DEBUG_ACC={int(debug)}", f"-DBTC_PACK_WARPS={PACK_WARPS}", f"-DBTC_PCT={self.pct}",
            f"-DBTC_CHUNK={EPILOGUE_CHUNK_BLOCKS}", f"-DBTC_FUSE={int(self.fuse)}",
        )

    def smem_bytes(self, act_bits: int, blocks_per_split: int = 0) -> int:
        """Dynamic shared memory: stages x (weight rows + tokens), each row padded by 16 bytes (see the .cu); with
        ``fuse``, plus the quantized activations and scales of the split's blocks (rounded up to whole stages)."""
        w = self.rows * (96 * self.kb + 16)
        x = self.mt * (16 * act_bits * self.kb + 16)
        fused = self.pct * -(-blocks_per_split // self.kb) * self.kb * (16 * act_bits + 4) if self.fuse else 0
        return self.stages * (w + x) + fused


@functools.lru_cache(maxsize=None)
def _counters(device: int) -> torch.Tensor:
    """Split-K arrival counters: zero between launches (the last CTA of each tile resets its own)."""
    return torch.zeros(_MAX_TILES, dtype=torch.int32, device=torch.device("cuda", device))


# ----------------------------------------------------------------------------------------------- validation
def _check_groups(act_bits: int, act_group_size: int, weight_group_size: int) -> None:
    if act_bits not in ACT_BITS:
        raise ValueError(f"act_bits must be one of {ACT_BITS}, got {act_bits}")
    for name, g in (("act_group_size", act_group_size), ("weight_group_size", weight_group_size)):
        if g not in GROUP_SIZES:
            raise ValueError(f"{name}={g} is not supported by the BTC kernel; supported: {GROUP_SIZES}")


def _check_weight(x, qweight, w_scales, weight_group_size) -> tuple[int, int, int]:
    """Validate the packed weight against x; return (N, Kp, NB)."""
    cl.check_tensor("qweight", qweight, x.device, (torch.int32,))
    if qweight.dim() != 2 or qweight.shape[1] % W_WORDS or qweight.shape[1] == 0:
        raise ValueError(f"qweight must be (N, Kp/128*{W_WORDS}) int32, got shape {tuple(qweight.shape)}")
    n, nb = qweight.shape[0], qweight.shape[1] // W_WORDS
    kp = nb * BLOCK_K
    if n % ROW_ALIGN or n == 0:
        raise ValueError(f"qweight has N={n} rows: N must be a positive multiple of {ROW_ALIGN}")
    if x.shape[-1] > kp:
        raise ValueError(f"x has K={x.shape[-1]} but qweight {tuple(qweight.shape)} holds only Kp={kp}")
    cl.check_tensor("w_scales", w_scales, x.device, (torch.float16,))
    cols = 1 if weight_group_size == -1 else kp // weight_group_size
    if tuple(w_scales.shape) != (n, cols):
        raise ValueError(f"w_scales must be ({n}, {cols}) for weight_group_size={weight_group_size}, "
                         f"got {tuple(w_scales.shape)}")
    return n, kp, nb


def _check_x(x) -> None:
    cl.check_tensor("x", x, None, cl.ACTIVATION_DTYPES)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must be (..., K) with K > 0, got shape {tuple(x.shape)}")


def _check_out(out, lead, n, dtype, device) -> None:
    cl.check_tensor("out", out, device, (dtype,))
    if tuple(out.shape) != (*lead, n):
        raise ValueError(f"out must have shape {(*lead, n)}, got {tuple(out.shape)}")


def _check_bias(bias, n, dtype, device) -> None:
    cl.check_tensor("bias", bias, device, (dtype, torch.float32))
    if tuple(bias.shape) != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")


def check_linear_args(x, qweight, w_scales, bias, out, act_bits, act_group_size, weight_group_size):
    """Validate a W6Ax linear call (both kernels share it); return (x as (M, K), the (..., N) output, Kp)."""
    _check_groups(act_bits, act_group_size, weight_group_size)
    _check_x(x)
    n, kp, _ = _check_weight(x, qweight, w_scales, weight_group_size)
    lead = tuple(x.shape[:-1])
    if bias is not None:
        _check_bias(bias, n, x.dtype, x.device)
    if out is None:
        out = torch.empty((*lead, n), dtype=x.dtype, device=x.device)
    else:
        _check_out(out, lead, n, x.dtype, x.device)
    return x.reshape(-1, x.shape[-1]), out, kp


def check_accumulator_args(x, qweight, act_bits, act_group_size):
    """Validate a block-accumulator call; return (x as (M, K), unit weight scales, the (NB, M, N) int32 output)."""
    _check_groups(act_bits, act_group_size, 128)
    _check_x(x)
    if qweight.dim() != 2:
        raise ValueError(f"qweight must be 2-D, got shape {tuple(qweight.shape)}")
    nb = qweight.shape[1] // W_WORDS
    scales = torch.ones((qweight.shape[0], nb), dtype=torch.float16, device=qweight.device)
    n, _, nb = _check_weight(x, qweight, scales, 128)
    x2 = x.reshape(-1, x.shape[-1])
    return x2, scales, torch.empty((nb, x2.shape[0], n), dtype=torch.int32, device=x.device)


# ----------------------------------------------------------------------------------------------- launch
PC_MAX_TOKENS = 2  # up to this M plane columns (6 * pct MMAs per block) beat tokens in columns (measured: M = 4 loses)
# Plane-column configs may quantize their activations inside the GEMM (fuse_pack): off by default, because the
# decode step got slower with it although the layer op alone got faster (docs/kernel.md); kernel_bench --fuse: A/B.
FUSE_PACK = False
FUSE_MAX_BLOCKS_PER_WARP = 4  # ... where each warp quantizes at most this many blocks (see fuse_pack)


def plane_column_tokens(m: int) -> int:
    """The pct (a power of two >= m) for M = m tokens, or 0 (tokens in columns) above PC_MAX_TOKENS."""
    return 0 if m > PC_MAX_TOKENS else 1 << (m - 1).bit_length()


def default_config(m: int) -> TileConfig:
    """The untuned config: 4 warps; for M <= 8 four blocks per stage (four independent MMA chains per warp, see
    the .cu), three stages; for more tokens the wider token tile needs the registers, so two blocks, four stages."""
    if m <= 8:
        return TileConfig(warps=4, kb=4, stages=3, mt=8, pct=plane_column_tokens(m))
    return TileConfig(warps=4, kb=2, stages=4, mt=16 if m <= 16 else 32)


def choose_config(n: int, k: int, m: int, act_bits: int, device: int | None = None,
                  act_group_size: int = 128) -> TileConfig:
    """The tile config for this shape: the H100-tuned table (btc_tuning.py), else ``default_config``, with the
    plane-column scheme for few tokens, split-K resolved by ``choose_splits`` and the fused activation pack where
    ``fuse_pack`` allows it. Cached: every btc_linear call asks, and the split search alone costs 20-40 us of
    Python per call on untuned shapes (measured on the 2-core CPU machine), which an eager decode pays per linear.
    Whoever changes ``btc_tuning.TUNED`` at run time clears the cache (``choose_config.cache_clear``)."""
    return _choose_config(n, k, m, act_bits, device, act_group_size, FUSE_PACK)


@functools.lru_cache(maxsize=4096)
def _choose_config(n: int, k: int, m: int, act_bits: int, device: int | None, act_group_size: int,
                   fuse_allowed: bool) -> TileConfig:
    from .btc_tuning import lookup

    cfg = lookup(n, k, m, act_bits) or default_config(m)
    if cfg.mt == 8 and not cfg.pct:
        cfg = replace(cfg, pct=plane_column_tokens(m))
    nb = -(-k // BLOCK_K)
    if not cfg.splits:
        dev = torch.cuda.current_device() if device is None else device
        cfg = replace(cfg, splits=choose_splits(cfg, n, nb, m, _slots(dev, cfg, act_bits)))
    return replace(cfg, fuse=fuse_allowed and fuse_pack(cfg, nb, act_group_size))


choose_config.cache_clear = _choose_config.cache_clear


def fuse_pack(cfg: TileConfig, nb: int, act_group_size: int = 128) -> bool:
    """Whether this plane-column config should quantize its activations inside the GEMM (only with ``FUSE_PACK``):
    where each warp has at most ``FUSE_MAX_BLOCKS_PER_WARP`` (token, block) pairs to quantize. The fused pack runs
    before the main loop and its reads of x are latency-bound, so a CTA spanning many blocks (no split-K) pays more
    than the separate launch costs (layer op alone, L2 flushed, on the H100: 4096x4096, 4096x11008 and SmolLM2's
    shapes gain 2-12%, 12288x4096 with 8 blocks per warp and 28672x8192 with 16 lost 17-71% when fused). A
    per-token scale (act_group_size -1) needs the whole row's absmax before any block: never fused."""
    if not (FUSE_PACK and act_group_size == 128 and cfg.pct and cfg.pct <= PC_MAX_TOKENS):
        return False
    per = split_blocks(nb, cfg.splits) if cfg.splits else nb
    return -(-per * cfg.pct // cfg.warps) <= FUSE_MAX_BLOCKS_PER_WARP


def choose_splits(cfg: TileConfig, n: int, nb: int, m: int, slots: int) -> int:
    """Split-K ways minimising (waves of CTAs) x (blocks per CTA + a pipeline-fill allowance): with fewer CTAs
    than resident slots the SMs idle, and a last partial wave costs as much as a full one."""
    tiles = -(-n // cfg.rows) * -(-m // cfg.mt)
    best = None
    for s in range(1, min(nb, 64) + 1):
        per = split_blocks(nb, s)
        if -(-nb // per) != s:
            continue  # the same as a smaller s (splits begin at epilogue-chunk boundaries)
        cost = -(-tiles * s // slots) * (-(-per // cfg.kb) * cfg.kb + 2 * cfg.kb)
        if best is None or cost < best[0]:
            best = (cost, s)
    return best[1]


@functools.lru_cache(maxsize=None)
def _slots(device: int, cfg: TileConfig, act_bits: int) -> int:
    """Resident CTAs on the whole device for this config (occupancy from shared memory, registers, threads)."""
    props = torch.cuda.get_device_properties(device)
    smem_sm = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
    smem = cfg.smem_bytes(act_bits) + 1024  # the runtime reserves 1 KB per CTA
    per_sm = min(smem_sm // smem, 2048 // (32 * cfg.warps), 32)
    try:
        fn = cl.function(device, KERNEL_FILE, cfg.defines(act_bits, False), "btc_gemm", cfg.smem_bytes(act_bits))
        regs_warp = -(-fn.num_regs * 32 // 256) * 256
        per_sm = min(per_sm, 65536 // (regs_warp * cfg.warps))
    except Exception:  # noqa: BLE001  (occupancy is a heuristic: keep the shared-memory bound)
        pass
    return max(1, per_sm) * cl.sm_count(device)


def split_blocks(nb: int, splits: int) -> int:
    """128-K blocks per split for ``splits`` ways over NB blocks: ceil(NB / splits) rounded up to whole epilogue
    chunks (``primitives.EPILOGUE_CHUNK_BLOCKS``), so every chunk sum is formed inside one CTA and the output
    does not depend on the split (see reference.scaled_sum). Fewer splits than asked may result."""
    c = EPILOGUE_CHUNK_BLOCKS
    per = -(-nb // max(1, min(splits, nb)))
    return min(-(-per // c) * c, nb) if per < nb else nb


def partial_slots(nb: int, per: int) -> int:
    """fp32 split-K slots per output: split 0's running sum, then one per chunk of the later splits."""
    chunks = -(-nb // EPILOGUE_CHUNK_BLOCKS)
    return chunks - per // EPILOGUE_CHUNK_BLOCKS + 1


def _grid(cfg: TileConfig, n: int, mp: int, nb: int) -> tuple[tuple[int, int, int], int]:
    """((grid.x, grid.y, grid.z), blocks per split); no split is left empty."""
    per = split_blocks(nb, cfg.splits)
    return (-(-n // cfg.rows), -(-nb // per), -(-mp // cfg.mt)), per


def pack_layout(m: int, nb: int, act_bits: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes of the packed activations of M = m tokens, NB blocks: (Mp, NB*A*4) int32 bit-plane words and (Mp, NB)
    float32 per-block scales, Mp = m rounded up to 8 (the GEMM's 8-token column tile; padding tokens are zero)."""
    mp = -(-m // 8) * 8
    return (mp, nb * act_bits * 4), (mp, nb)


def empty_pack(m: int, nb: int, act_bits: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised buffers of ``pack_layout``'s shapes, for btc_act_pack or the RMSNorm kernel to fill."""
    words, scales = pack_layout(m, nb, act_bits)
    return (torch.empty(words, dtype=torch.int32, device=device),
            torch.empty(scales, dtype=torch.float32, device=device))


def pack_activations(x2: torch.Tensor, nb: int, act_bits: int, act_group_size: int, cfg: TileConfig):
    """(M, K) fp16/bf16 -> ``pack_layout``'s (bit-plane words, per-block scales), padded tokens zero. Word layout =
    packing.pack_bitplanes(xq, bits=act_bits)."""
    import numpy as np

    m, k = x2.shape
    dev = x2.device.index
    xpack, sx = empty_pack(m, nb, act_bits, x2.device)
    mp = sx.shape[0]
    opts = cfg.defines(act_bits, x2.dtype == torch.bfloat16)
    whole = act_group_size == -1
    grid = (mp, 1 if whole else -(-nb // PACK_WARPS), 1)
    args = (cl.ptr(x2), cl.ptr(xpack), cl.ptr(sx), np.int32(m), np.int32(k), np.int32(nb), np.int32(whole))
    cl.launch(cl.function(dev, KERNEL_FILE, opts, "btc_act_pack", 0), grid, (32 * PACK_WARPS, 1, 1), args, 0, dev)
    return xpack, sx


def _gemm(x2, xpack, sx, qweight, w_scales, bias, y, *, act_bits, weight_group_size, cfg, debug):
    """The GEMM launch; with ``cfg.fuse`` ``xpack`` and ``sx`` are None and the kernel quantizes ``x2`` itself."""
    import numpy as np

    m, dev = x2.shape[0], x2.device.index
    if cfg.pct and m > cfg.pct:
        raise ValueError(f"tile config {cfg} handles at most pct={cfg.pct} tokens, got M={m}")
    n, nb, mp = qweight.shape[0], qweight.shape[1] // W_WORDS, -(-m // 8) * 8
    grid, per = _grid(cfg, n, mp, nb)
    partial = None
    if grid[1] > 1 and not debug:
        partial = torch.empty((partial_slots(nb, per), mp, n), dtype=torch.float32, device=x2.device)
        if grid[0] * grid[2] > _MAX_TILES:
            raise ValueError(f"too many output tiles ({grid[0] * grid[2]}) for N={n}, M={m}")
    opts = cfg.defines(act_bits, x2.dtype == torch.bfloat16, debug)
    smem = cfg.smem_bytes(act_bits, per)
    ws_cols = w_scales.shape[1]
    args = (
        cl.ptr(qweight), cl.ptr(w_scales), cl.ptr(xpack), cl.ptr(sx), cl.ptr(bias), cl.ptr(y), cl.ptr(partial),
        cl.ptr(_counters(dev)), cl.ptr(x2 if cfg.fuse else None), np.int32(m), np.int32(n), np.int32(nb),
        np.int32(ws_cols), np.int32(0 if weight_group_size == -1 else 1), np.int32(per),
        np.int32(bias is not None and bias.dtype == torch.float32), np.int32(x2.shape[1]),
    )
    cl.launch(cl.function(dev, KERNEL_FILE, opts, "btc_gemm", smem), grid, (32 * cfg.warps, 1, 1), args, smem, dev)


def btc_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    w_scales: torch.Tensor,
    *,
    act_bits: int,
    act_group_size: int = 128,
    weight_group_size: int = 128,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: TileConfig | None = None,
    packed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """W6A6 / W6A8 linear layer: ``reference_linear`` on the GPU.

    x: (..., K) float16 or bfloat16, CUDA, contiguous; K is the original width (<= Kp, the tail is zeros).
    qweight: (N, Kp/128*24) int32 bit-plane words (packing.pack_weight: 16-row groups), N a multiple of 16.
    w_scales: (N, Kp/weight_group_size) float16, or (N, 1) for weight_group_size -1.
    act_bits: 6 or 8; act_group_size, weight_group_size: 128 or -1 (one group per row).
    bias: (N,) in x's dtype or float32, or None. out: optional (..., N) output in x's dtype.
    Returns (..., N) in x's dtype. config: force a tile config (tuning and tests), else ``choose_config``.
    packed: ``pack_activations``' result for x, made by the kernel before (the RMSNorm's, norm_kernel.py): the
    pack launch is skipped (and the GEMM does not quantize x itself).
    """
    x2, out, kp = check_linear_args(x, qweight, w_scales, bias, out, act_bits, act_group_size, weight_group_size)
    n = qweight.shape[0]
    if x2.shape[0] == 0:
        return out
    cfg = config or choose_config(n, kp, x2.shape[0], act_bits, x.device.index, act_group_size)
    if packed is not None:
        check_packed(packed, pack_layout(x2.shape[0], kp // BLOCK_K, act_bits), torch.int32, x.device,
                     act_group_size)
        cfg, (xpack, sx) = replace(cfg, fuse=False), packed
    else:
        _check_fuse(cfg, act_group_size)
        xpack, sx = (None, None) if cfg.fuse else pack_activations(x2, kp // BLOCK_K, act_bits, act_group_size, cfg)
    _gemm(x2, xpack, sx, qweight, w_scales, bias, out, act_bits=act_bits, weight_group_size=weight_group_size,
          cfg=cfg, debug=False)
    return out


def check_packed(packed, shapes: tuple[tuple[int, ...], tuple[int, ...]], dtype: torch.dtype, device,
                 act_group_size: int, other_layout: tuple[tuple, Callable[[], str]] | None = None) -> None:
    """ValueError unless ``packed`` is (activations of ``dtype``, float32 scales) of the ``shapes`` the layer's own
    pack would make (``pack_layout``, ``int8_kernel.quant_layout``), with act groups of 128 (the only kind
    norm_kernel.py makes). ``other_layout``: (the shapes of a layout the kernel cannot read, a function making the
    error for a pack in it: formatted only then, int8_linear calls this per layer)."""
    if act_group_size != BLOCK_K:
        raise ValueError(f"packed activations have act groups of {BLOCK_K}; this layer uses {act_group_size}")
    if not isinstance(packed, tuple) or len(packed) != 2:
        raise ValueError("packed must be a tuple (packed activations, float32 scales)")
    xp, sx = packed
    cl.check_tensor("packed activations", xp, device, (dtype,))
    cl.check_tensor("packed scales", sx, device, (torch.float32,))
    if other_layout is not None and (xp.shape, sx.shape) == other_layout[0]:
        raise ValueError(other_layout[1]())
    if (xp.shape, sx.shape) != shapes:
        raise ValueError(f"packed activations must be {shapes[0]} with {shapes[1]} scales, got "
                         f"{tuple(xp.shape)} and {tuple(sx.shape)}")


def _check_fuse(cfg: TileConfig, act_group_size: int) -> None:
    if cfg.fuse and act_group_size != 128:
        raise ValueError(f"tile config {cfg} fuses the activation pack, which needs act_group_size 128 "
                         f"(got {act_group_size}): pass a config with fuse=False")


def btc_block_accumulators(
    x: torch.Tensor,
    qweight: torch.Tensor,
    *,
    act_bits: int,
    act_group_size: int = 128,
    config: TileConfig | None = None,
) -> torch.Tensor:
    """The GEMM's exact int32 per-block dot products, (Kp/128, M, N): equal to ``reference.block_int_gemm``."""
    x2, scales, acc = check_accumulator_args(x, qweight, act_bits, act_group_size)
    n, nb, m = qweight.shape[0], acc.shape[0], x2.shape[0]
    kp = nb * BLOCK_K
    if m == 0:
        return acc
    cfg = config or choose_config(n, kp, m, act_bits, x.device.index, act_group_size)
    _check_fuse(cfg, act_group_size)
    xpack, sx = (None, None) if cfg.fuse else pack_activations(x2, nb, act_bits, act_group_size, cfg)
    _gemm(x2, xpack, sx, qweight, scales, None, acc, act_bits=act_bits, weight_group_size=128, cfg=cfg,
          debug=True)
    return acc


def weight_bytes(n: int, k: int, weight_group_size: int = 128) -> int:
    """Bytes the GEMM must stream per call: packed planes (0.75 B/weight) plus float16 scales."""
    kp = math.ceil(k / BLOCK_K) * BLOCK_K
    cols = 1 if weight_group_size == -1 else kp // weight_group_size
    return n * kp * 6 // 8 + n * cols * 2
