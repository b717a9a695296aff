"""RMSNorm in one CUDA kernel (kernels/rmsnorm.cu), optionally with the next quantized linear's activation pack.

    y, packed = rms_norm_cuda(x, weight, eps, pack="btc", act_bits=8, padded_in=4096)

``y`` equals ``primitives.rms_norm(x, weight, eps)`` bit for bit. With ``pack="btc"`` the same launch writes what
``btc.pack_activations`` would make of ``y`` (act groups of 128), with ``pack="int8"`` what
``int8_kernel.quantize_activations`` would: the quantized linear that reads ``y`` then skips its own pack launch
(fusion.KernelRMSNorm hands it over). Arguments are checked here (ValueError naming what is wrong), launches go on
PyTorch's current stream as the GEMMs' do (cuda_launch.py), so the call works under CUDA graph capture.
"""

from __future__ import annotations

import torch

from . import cuda_launch as cl
from .primitives import BLOCK_K

KERNEL_FILE = "rmsnorm.cu"
MAX_R = 16  # squares per thread (NORM_MAX_R): 1024 threads cover rows up to 16384 wide
PACKS = {None: 0, "btc": 1, "int8": 2}
DTYPES = (torch.float16, torch.bfloat16)


def launch_shape(h: int) -> tuple[int, int]:
    """(threads per CTA, squares per thread R) for rows of width h: the row padded to a power of two P, spread as
    P/4 threads (128 to 1024; one 128-wide block per warp for the pack at H = 4096) of R = P/threads each."""
    p = 1 << max(0, (h - 1).bit_length())
    threads = min(1024, max(128, p // 4))
    r = max(1, p // threads)
    if r > MAX_R:
        raise ValueError(f"rows of width {h} are wider than the norm kernel's {1024 * MAX_R}")
    return threads, r


def rms_norm_cuda(x: torch.Tensor, weight: torch.Tensor, eps: float, *, pack: str | None = None, act_bits: int = 8,
                  padded_in: int | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """(y, None), or (y, (packed activations, float32 block scales)) for ``pack`` "btc" / "int8".

    x: (..., H) float16/bfloat16, CUDA, contiguous; weight: (H,) of x's dtype and device. With a pack:
    act_bits 6 or 8 and ``padded_in`` the consuming linear's padded K (a multiple of 128, >= H)."""
    import numpy as np

    if pack not in PACKS:
        raise ValueError(f"pack must be one of {list(PACKS)}, got {pack!r}")
    cl.check_tensor("x", x, None, DTYPES)
    cl.check_tensor("weight", weight, x.device, (x.dtype,))
    h = x.shape[-1]
    if weight.shape != (h,):
        raise ValueError(f"weight must have shape ({h},) for x of shape {tuple(x.shape)}, got {tuple(weight.shape)}")
    x2 = x.reshape(-1, h)
    m, dev = x2.shape[0], x.device.index
    y = torch.empty_like(x)
    nb, packed, sx, grid = 0, None, None, m
    if pack is not None:
        if act_bits not in (6, 8):
            raise ValueError(f"act_bits must be 6 or 8, got {act_bits}")
        if padded_in is None or padded_in % BLOCK_K or padded_in < h:
            raise ValueError(f"padded_in must be a multiple of {BLOCK_K} and >= H={h}, got {padded_in}")
        nb = padded_in // BLOCK_K
        if pack == "btc":
            grid = -(-m // 8) * 8  # btc.pack_activations' Mp: padding tokens get zero records
            packed = torch.empty((grid, nb * act_bits * 4), dtype=torch.int32, device=x.device)
        else:
            packed = torch.empty((m, nb * BLOCK_K), dtype=torch.int8, device=x.device)
        sx = torch.empty((grid, nb), dtype=torch.float32, device=x.device)
    threads, r = launch_shape(h)
    if m == 0:
        return y, None if pack is None else (packed, sx)
    opts = (f"-DNORM_BF16={int(x.dtype == torch.bfloat16)}", f"-DNORM_ACT_BITS={act_bits}",
            f"-DNORM_THREADS={threads}", f"-DNORM_MAX_R={MAX_R}")
    args = (cl.ptr(x2), cl.ptr(weight), cl.ptr(y), cl.ptr(packed), cl.ptr(sx), np.int32(m), np.int32(h),
            np.int32(r), np.int32(nb), np.float32(eps), np.int32(PACKS[pack]))
    cl.launch(cl.function(dev, KERNEL_FILE, opts, "fq_rmsnorm", 0), (grid, 1, 1), (threads, 1, 1), args, 0, dev)
    return y, None if pack is None else (packed, sx)
