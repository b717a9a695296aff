"""RMSNorm (and the gated SiLU product) in one CUDA kernel each (kernels/rmsnorm.cu), optionally with the next
quantized linear's activation pack.

    y, packed = rms_norm_cuda(x, weight, eps, pack="btc", act_bits=8, padded_in=4096)

``y`` equals ``primitives.rms_norm(x, weight, eps)`` bit for bit. With ``pack="btc"`` the same launch writes what
``btc.pack_activations`` would make of ``y`` (act groups of 128), with ``pack="int8"`` what
``int8_kernel.quantize_activations`` would, and with ``pack="int8_tiled"`` what it would make in the tiled layout
of the warp-specialized INT8 kernel (``tiled=True``): the quantized linear that reads ``y`` then skips its own pack
launch (modules.KernelRMSNorm and KernelGatedMLP hand it over). Arguments are checked here (ValueError naming what is
wrong), launches go on PyTorch's current stream as the GEMMs' do (cuda_launch.py), so the call works under CUDA
graph capture.
"""

from __future__ import annotations

import torch

from . import cuda_launch as cl
from .btc import empty_pack
from .int8_kernel import empty_quant, quant_tokens
from .primitives import BLOCK_K

KERNEL_FILE = "rmsnorm.cu"
MAX_R = 16  # squares per thread (NORM_MAX_R): 1024 threads cover rows up to 16384 wide
SILU_WARPS = 4  # warps per CTA of the gated SiLU kernel
PACKS = {None: 0, "btc": 1, "int8": 2, "int8_tiled": 3}


def launch_shape(h: int, split: bool = False) -> tuple[int, int]:
    """(threads per CTA, squares per thread R) for the norm of rows of width h: the row padded to a power of two P,
    R = P / threads squares per thread. One CTA per token: a quarter of P in threads (128 to 1024), one 128-wide
    block per warp at 4096. ``split``: as many squares per thread as it takes (MAX_R), so as few threads as 128-1024
    allow, and several CTAs per token (``ctas_per_token``) that write and pack one block per warp."""
    p = 1 << max(0, (h - 1).bit_length())
    threads = min(1024, max(128, p // (MAX_R if split else 4)))
    r = max(1, p // threads)
    if r > MAX_R:
        raise ValueError(f"rows of width {h} are wider than the norm kernel's {1024 * MAX_R}")
    return threads, r


def ctas_per_token(threads: int, nb: int) -> int:
    """CTAs that share one token's row of ``nb`` 128-wide blocks: one block per warp."""
    return max(1, -(-nb // (threads // 32)))


# Which packs split a token's row over several CTAs. H100, 2026-11-23, LLaMA-2-7B shape (4096), back to back: the
# INT8 pack 2.96 -> 2.22 us at one token, the BTC pack 4.15 -> 2.59, the norm alone 2.25 -> 2.34; in the CUDA-graph
# decode step (scripts/gpu_step_configs.py norm=one, one process, two rounds) W6A8 at batch 16 (INT8 packs)
# 4387-4390 -> 4344-4355 us, but at batch 1 (BTC packs) 3121 -> 3149-3153, and FP16 within 0.3% either way.
# Re-measured once the residual adds moved into the norms (fourteenth session, e2e_bench.measure, W6A8 batch 1, three
# rounds, us per step): BTC unsplit 3169-3175, split 3225-3229 (no PDL: the rule below), split with PDL 3166-3170.
# The tiled INT8 pack (only for the warp-specialized GEMM: M > 64) is not split. H100, 2026-11-23, 7B shape, 2048-token
# prefill, W6A8 batch 1, one process, three rounds (ms): the layers quantizing their own input 88.16 / 88.07 / 87.21,
# the tiled pack split 87.06 / 87.96 / 86.67, unsplit 85.87 / 86.13 / 84.64. (Each CTA of a split row re-reads the
# whole row for its sum, likely why; not profiled. Only 2048 tokens measured.)
SPLIT_PACKS = {"int8"}
# A norm that adds the residual directly follows a GEMM (modules.KernelRMSNorm.add). It is launched with PDL unless
# its row is split over CTAs. H100, 2026-11-23, 7B decode step, one process, two rounds (us; separate add -> fused
# with PDL, fused without): FP16 batch 1 5913-5914 -> 5696-5722, 5909-5918; W6A8 batch 1 3127-3129 -> 3063-3068,
# 3078-3080; but W6A8 batch 16 (split INT8 packs behind the register-fed GEMM) 4312-4314 -> 4475-4476, 4245-4248.
# Launched early, the split norm's many small CTAs may land on the few SMs the GEMM frees first (a guess, not
# profiled); unsplit with PDL it took 4297-4300.


def rms_norm_cuda(x: torch.Tensor, weight: torch.Tensor, eps: float, *, pack: str | None = None, act_bits: int = 8,
                  padded_in: int | None = None, residual: torch.Tensor | None = None,
                  sum_out: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """(y, None), or (y, (packed activations, float32 block scales)) for ``pack`` "btc", "int8" or "int8_tiled".

    x: (..., H) float16/bfloat16, CUDA, contiguous; weight: (H,) of x's dtype and device. With a pack:
    act_bits 6 or 8 and ``padded_in`` the consuming linear's padded K (a multiple of 128, >= H).
    With ``residual`` (x's shape and dtype) the row normalized is ``residual + x`` as PyTorch adds them (the
    decoder's residual stream), written to ``sum_out`` (x's shape and dtype, a tensor of its own: not x or
    residual) in the same launch."""
    import numpy as np

    cl.check_tensor("x", x, None, cl.ACTIVATION_DTYPES)
    cl.check_tensor("weight", weight, x.device, (x.dtype,))
    h = x.shape[-1]
    if weight.shape != (h,):
        raise ValueError(f"weight must have shape ({h},) for x of shape {tuple(x.shape)}, got {tuple(weight.shape)}")
    _check_residual(x, residual, sum_out)
    x2 = x.reshape(-1, h)
    y = torch.empty_like(x)
    packed, grid = _pack_buffers(x2.shape[0], h, x.device, pack, act_bits, padded_in)
    split = pack in SPLIT_PACKS
    threads, r = launch_shape(h, split)
    nb = 0 if packed is None else packed[1].shape[1]
    args = (cl.ptr(x2), cl.ptr(residual), cl.ptr(weight), cl.ptr(sum_out), cl.ptr(y), *_ptrs(packed),
            np.int32(x2.shape[0]), np.int32(h), np.int32(r), np.int32(nb), np.float32(eps), np.int32(PACKS[pack]))
    _launch("fq_rmsnorm", x, threads, (grid, ctas_per_token(threads, nb) if split else 1), act_bits, args,
            pdl=residual is None or not split)
    return y, packed


def silu_mul_cuda(gu: torch.Tensor, *, pack: str | None = None, act_bits: int = 8, padded_in: int | None = None
                  ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """HF's gated SiLU product ``silu(gate) * up`` for ``gu`` = [gate | up] (..., 2I), the fused gate/up GEMM's
    output, in one launch: (h (..., I), None), or with ``pack`` also down_proj's packed activations of h, as
    ``rms_norm_cuda``. h equals ``torch.nn.functional.silu(gate) * up`` on the GPU bit for bit."""
    import numpy as np

    cl.check_tensor("gate/up", gu, None, cl.ACTIVATION_DTYPES)
    if gu.shape[-1] % 2:
        raise ValueError(f"gate/up must hold two halves of equal width, got width {gu.shape[-1]}")
    i = gu.shape[-1] // 2
    g2 = gu.reshape(-1, 2 * i)
    h = torch.empty((*gu.shape[:-1], i), dtype=gu.dtype, device=gu.device)
    packed, rows = _pack_buffers(g2.shape[0], i, gu.device, pack, act_bits, padded_in)
    nb = -(-i // BLOCK_K) if packed is None else packed[1].shape[1]
    args = (cl.ptr(g2), cl.ptr(h), *_ptrs(packed), np.int32(g2.shape[0]), np.int32(i), np.int32(nb),
            np.int32(PACKS[pack]))
    # SILU_WARPS warps per CTA, each a 128-wide block at a time, and as many CTAs per token as that takes
    _launch("fq_silu_mul", gu, 32 * SILU_WARPS, (rows, -(-nb // SILU_WARPS)), act_bits, args)
    return h, packed


def _check_residual(x: torch.Tensor, residual: torch.Tensor | None, sum_out: torch.Tensor | None) -> None:
    if residual is None and sum_out is None:
        return
    if residual is None or sum_out is None:
        raise ValueError("residual and sum_out go together: the sum residual + x is written to sum_out")
    for name, t in (("residual", residual), ("sum_out", sum_out)):
        cl.check_tensor(name, t, x.device, (x.dtype,))
        if t.shape != x.shape:
            raise ValueError(f"{name} must have x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
    if sum_out.data_ptr() in (x.data_ptr(), residual.data_ptr()):
        raise ValueError("sum_out must not be x or residual: every CTA of a token reads the whole row")


def _pack_buffers(m: int, width: int, device, pack, act_bits, padded_in):
    """(None or (packed activations, scales) to fill, the tokens the grid covers): the layouts of
    btc.pack_activations (Mp = M rounded up to 8 rows, padding tokens zero) and int8_kernel.quantize_activations
    (int8_tiled: Mt tiles of 128 tokens, padding tokens zero)."""
    if pack not in PACKS:
        raise ValueError(f"pack must be one of {list(PACKS)}, got {pack!r}")
    if pack is None:
        return None, m
    if act_bits not in (6, 8):
        raise ValueError(f"act_bits must be 6 or 8, got {act_bits}")
    if padded_in is None or padded_in % BLOCK_K or padded_in < width:
        raise ValueError(f"padded_in must be a multiple of {BLOCK_K} and >= the width {width}, got {padded_in}")
    nb = padded_in // BLOCK_K
    if pack == "btc":
        packed = empty_pack(m, nb, act_bits, device)
        return packed, packed[1].shape[0]
    tiled = pack == "int8_tiled"
    return empty_quant(m, nb, device, tiled), quant_tokens(m, tiled)


def _ptrs(packed):
    return (cl.ptr(None), cl.ptr(None)) if packed is None else (cl.ptr(packed[0]), cl.ptr(packed[1]))


def _launch(name: str, x: torch.Tensor, threads: int, grid: tuple[int, int], act_bits: int, args,
            pdl: bool = True) -> None:
    if grid[0] == 0:
        return
    dev = x.device.index
    opts = (f"-DNORM_BF16={int(x.dtype == torch.bfloat16)}", f"-DNORM_ACT_BITS={act_bits}",
            f"-DNORM_THREADS={threads}", f"-DNORM_MAX_R={MAX_R}")
    cl.launch(cl.function(dev, KERNEL_FILE, opts, name, 0), (*grid, 1), (threads, 1, 1), args, 0, dev, pdl)
