"""The reference W6Ax GEMM in pure PyTorch (any device). It defines the numerics the GPU kernels reproduce.

    y[m, n] = sum over K blocks b of  float32(acc[b, m, n]) * (sx[m, b] * sw[n, b])   (+ bias)

where ``acc[b]`` is the exact integer dot product of the activation codes and weight codes over the 128-wide
K block b, and ``sx``/``sw`` are the activation/weight scales of the groups that block belongs to.

The integer products are computed with float32 matrix products of integer-valued tensors: inside one block
|acc| <= 128 * 32 * 128 = 2^19 < 2^24, so every partial sum is an exactly representable float32 integer
whatever order the library adds in. The result is then converted to int32 without rounding.

The float epilogue has one canonical order, part of the format (every backend gives the same bits), with
C = ``primitives.EPILOGUE_CHUNK_BLOCKS`` blocks per chunk and every operation a single IEEE float32 rounding
(round to nearest even; no fused multiply-add, no flush to zero):

    term_b = float32(acc_b) * (sx[m, b] * sw[n, b])        two multiplies, each rounded
    p_c    = ((term_cC + term_cC+1) + ...) + term_cC+C-1    chunk c, blocks in order (the last chunk may be short)
    y      = ((p_0 + p_1) + p_2) + ...                      chunks in order
    y      = y + float32(bias[n]);  out = y rounded to the output dtype

Each sum begins with its first term (not 0 + term: that would turn a -0 into +0). PyTorch's elementwise ops are
single-rounded on CPU and CUDA alike, so ``scaled_sum`` gives the same bits on both; a kernel may split K only at
chunk boundaries and must add the chunk sums in chunk order (kernels/btc_gemm.cu, docs/kernel.md).
"""

from __future__ import annotations

import torch

from .errors import NonFiniteError
from .primitives import BLOCK_K, EPILOGUE_CHUNK_BLOCKS, pad_k, quantize_activation

_CHUNK_ELEMENTS = 1 << 25  # 128 MB of float32 per temporary


def block_int_gemm(xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    """(M, Kp) and (N, Kp) integer codes -> (Kp / 128, M, N) int32 per-block dot products, exact."""
    return _block_products(xq.float(), wq.float()).to(torch.int32)


def _block_products(xf: torch.Tensor, wf: torch.Tensor) -> torch.Tensor:
    """Integer-valued float32 (M, Kp) and (N, Kp) -> (Kp / 128, M, N) float32 block sums (exact integers)."""
    m, kp = xf.shape
    nb = kp // BLOCK_K
    xb = xf.reshape(m, nb, BLOCK_K).transpose(0, 1)  # (blocks, M, 128)
    wb = wf.reshape(wf.shape[0], nb, BLOCK_K).permute(1, 2, 0)  # (blocks, 128, N)
    return torch.bmm(xb, wb)


def block_scales(scales: torch.Tensor, group_size: int, kp: int) -> torch.Tensor:
    """(R, Kp / g) group scales -> (R, Kp / 128) float32: the scale of the group each 128-block lies in."""
    nb = kp // BLOCK_K
    per = nb if group_size <= 0 else group_size // BLOCK_K
    return scales.float().repeat_interleave(per, dim=1)[:, :nb]


def scaled_sum(acc: torch.Tensor, sx: torch.Tensor, sw: torch.Tensor) -> torch.Tensor:
    """(B, M, N) block sums (int32, or exact integers in float32) and (M, B), (N, B) float32 block scales ->
    (M, N) float32 in the canonical order of the module docstring: terms, chunk sums over
    ``EPILOGUE_CHUNK_BLOCKS`` blocks in block order, then the chunk sums in chunk order."""
    terms = (sx.T[:, :, None] * sw.T[:, None, :]).mul_(acc)  # (B, M, N): fp32(sx * sw), then times acc
    y = None
    for c0 in range(0, terms.shape[0], EPILOGUE_CHUNK_BLOCKS):
        p = terms[c0].clone()
        for b in range(c0 + 1, min(c0 + EPILOGUE_CHUNK_BLOCKS, terms.shape[0])):
            p.add_(terms[b])
        y = p if y is None else y.add_(p)
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
    sx, sw = block_scales(sx, act_group_size, kp), block_scales(w_scales, weight_group_size, kp)
    wf = wq.float()
    rows = max(1, _CHUNK_ELEMENTS // (wq.shape[0] * (kp // BLOCK_K)))  # bound the (B, rows, N) temporaries
    y = torch.cat([scaled_sum(_block_products(xq[i:i + rows].float(), wf), sx[i:i + rows], sw)
                   for i in range(0, xq.shape[0], rows)])
    if bias is not None:
        y += bias.float()
    return y.to(x.dtype).reshape(*lead, wq.shape[0])
