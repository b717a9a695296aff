"""The reference W6Ax GEMM in pure PyTorch (any device). It defines the numerics the GPU kernels reproduce.

    y[m, n] = sum over K blocks b of  float32(acc[b, m, n]) * (sx[m, b] * sw[n, b])   (+ bias), in block order

where ``acc[b]`` is the exact integer dot product of the activation codes and weight codes over the 128-wide
K block b, and ``sx``/``sw`` are the activation/weight scales of the groups that block belongs to.

The integer products are computed with float32 matrix products of integer-valued tensors: inside one block
|acc| <= 128 * 32 * 128 = 2^19 < 2^24, so every partial sum is an exactly representable float32 integer
whatever order the library adds in. The result is then converted to int32 without rounding.
"""

from __future__ import annotations

import torch

from .errors import NonFiniteError
from .primitives import BLOCK_K, pad_k, quantize_activation


def block_int_gemm(xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    """(M, Kp) and (N, Kp) integer codes -> (Kp / 128, M, N) int32 per-block dot products, exact."""
    m, kp = xq.shape
    n = wq.shape[0]
    nb = kp // BLOCK_K
    xb = xq.float().reshape(m, nb, BLOCK_K).transpose(0, 1)  # (blocks, M, 128)
    wb = wq.float().reshape(n, nb, BLOCK_K).permute(1, 2, 0)  # (blocks, 128, N)
    return torch.bmm(xb, wb).to(torch.int32)


def block_scales(scales: torch.Tensor, group_size: int, kp: int) -> torch.Tensor:
    """(R, Kp / g) group scales -> (R, Kp / 128) float32: the scale of the group each 128-block lies in."""
    nb = kp // BLOCK_K
    per = nb if group_size <= 0 else group_size // BLOCK_K
    return scales.float().repeat_interleave(per, dim=1)[:, :nb]


def scaled_sum(acc: torch.Tensor, sx: torch.Tensor, sw: torch.Tensor) -> torch.Tensor:
    """(B, M, N) int32 and (M, B), (N, B) float32 block scales -> (M, N) float32, summed in block order."""
    y = torch.zeros(acc.shape[1:], dtype=torch.float32, device=acc.device)
    for b in range(acc.shape[0]):
        y += acc[b].float() * (sx[:, b, None] * sw[None, :, b])
    return y


def reference_linear(
    x: torch.Tensor,
    wq: torch.Tensor,
    w_scales: torch.Tensor,
    *,
    act_bits: int,
    act_group_size: int,
    weight_group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """W6Ax linear on integer codes.

    x: (..., K) float activations (any float dtype); wq: (N, Kp) int8 weight codes (Kp >= K, zero padded);
    w_scales: (N, Kp / weight_group_size) float16; bias: (N,) or None. Returns (..., N) in x's dtype.
    """
    lead, kp = x.shape[:-1], wq.shape[1]
    x2 = pad_k(x.reshape(-1, x.shape[-1]).float(), kp)
    xq, sx = quantize_activation(x2, act_bits, act_group_size)
    if not torch.isfinite(sx).all():
        raise NonFiniteError("NaN/Inf in the activations reaching a quantized linear layer",
                             "check the input and the layers before it (an overflow in float16?)")
    acc = block_int_gemm(xq, wq)
    y = scaled_sum(acc, block_scales(sx, act_group_size, kp), block_scales(w_scales, weight_group_size, kp))
    if bias is not None:
        y += bias.float()
    return y.to(x.dtype).reshape(*lead, wq.shape[0])
