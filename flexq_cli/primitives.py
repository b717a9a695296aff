"""Quantization primitives: choose scales, quantize, dequantize. Pure tensor functions, no modules.

Numerics (the GPU kernels reproduce these exactly on the integer part):

* Symmetric, signed integers. ``bits`` b gives the range [-2^(b-1), 2^(b-1) - 1]; the scale maps the group's
  absolute maximum to ``qmax = 2^(b-1) - 1`` (6 bits: [-32, 31], qmax 31; 8 bits: [-128, 127], qmax 127).
* Groups run along the last dimension K. ``group_size`` g > 0 gives one scale per g consecutive elements;
  ``group_size`` -1 gives one scale for the whole row (per output channel for weights, per token for
  activations). K must already be padded to a multiple of g (``pad_k``); the padding is zeros.
* Weight scales are stored as float16; quantization divides by the *stored* (rounded) scale so that
  ``dequantize(quantize(w))`` uses exactly the scale on disk.
* Activation scales are float32 and never stored: ``s = absmax / qmax`` and ``q = rint(x / s)`` with IEEE
  float32 division and round-half-to-even (CUDA: ``__fdiv_rn`` then ``rintf``).
* A group whose scale is 0 (all zeros, or a weight scale below float16 range) quantizes to 0.
"""

from __future__ import annotations

import math

import torch

BLOCK_K = 128  # K is always padded to a multiple of this: the packing unit of the format (see packing.py)
# 128-K blocks per epilogue chunk: the fp32 output sums the block terms chunk by chunk in this fixed order, so
# that every backend (reference.scaled_sum, kernels/btc_gemm.cu via -DBTC_CHUNK) gives the same bits. Split-K
# kernels split only at chunk boundaries. Part of the format's numerics: changing it changes outputs.
EPILOGUE_CHUNK_BLOCKS = 2


def qrange(bits: int) -> tuple[int, int]:
    """(qmin, qmax) of a signed symmetric ``bits``-bit integer."""
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"bits must be in 2..8, got {bits}")
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def padded_k(k: int, *group_sizes: int) -> int:
    """K rounded up to the packing block (128) and to every positive group size (each a multiple of 128)."""
    unit = BLOCK_K
    for g in group_sizes:
        check_group_size(g)
        if g > 0:
            unit = math.lcm(unit, g)
    return -(-k // unit) * unit


def check_group_size(g: int) -> None:
    """Group sizes are -1 (one group per row) or a positive multiple of the 128-wide packing block."""
    if g != -1 and (g <= 0 or g % BLOCK_K):
        raise ValueError(f"group_size must be -1 (per row) or a multiple of {BLOCK_K}, got {g}")


def pad_k(x: torch.Tensor, kp: int) -> torch.Tensor:
    """Zero-pad the last dimension of ``x`` to ``kp`` (no copy when already that size)."""
    k = x.shape[-1]
    if k == kp:
        return x
    if k > kp:
        raise ValueError(f"cannot pad K={k} down to {kp}")
    return torch.nn.functional.pad(x, (0, kp - k))


def _grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """View (..., K) as (..., K / g, g); g = -1 means one group of K."""
    k = x.shape[-1]
    g = k if group_size <= 0 else group_size
    if k % g:
        raise ValueError(f"K={k} is not a multiple of group_size={g}: pad it first (pad_k)")
    return x.reshape(*x.shape[:-1], k // g, g)


def group_absmax(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(..., K) -> (..., K / g) float32 absolute maxima."""
    return _grouped(x.float(), group_size).abs().amax(dim=-1)


def _div_qmax(absmax: torch.Tensor, bits: int) -> torch.Tensor:
    """absmax / qmax with IEEE float32 division on every device. (A Python-scalar divisor lets PyTorch's CUDA
    kernels multiply by the reciprocal instead, which is off by one ulp for some inputs and flips codes.)"""
    _, qmax = qrange(bits)
    return absmax / torch.full_like(absmax, qmax)


def weight_scales(w: torch.Tensor, bits: int = 6, group_size: int = 128, clip: torch.Tensor | float = 1.0):
    """(N, Kp) float weights -> (N, Kp / g) float16 scales (absmax * clip / qmax, rounded to float16)."""
    return _div_qmax(group_absmax(w, group_size) * clip, bits).to(torch.float16)


def quantize_with_scales(x: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """(..., Kp) float and (..., Kp / g) scales -> (..., Kp) int8 codes; groups with scale 0 give 0."""
    qmin, qmax = qrange(bits)
    s = scales.float().unsqueeze(-1)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.round(_grouped(x.float(), group_size) / safe).clamp_(qmin, qmax)
    q = torch.where(s > 0, q, torch.zeros_like(q))
    return q.reshape(x.shape).to(torch.int8)


def quantize_weight(w: torch.Tensor, bits: int = 6, group_size: int = 128):
    """(N, Kp) float -> ((N, Kp) int8 codes, (N, Kp / g) float16 scales). Round to nearest, absmax scales."""
    scales = weight_scales(w, bits, group_size)
    return quantize_with_scales(w, scales, bits, group_size), scales


def dequantize(q: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """(..., Kp) integer codes and (..., Kp / g) scales -> (..., Kp) float32."""
    return (_grouped(q.float(), group_size) * scales.float().unsqueeze(-1)).reshape(q.shape)


def quantize_activation(x: torch.Tensor, bits: int, group_size: int = 128):
    """(M, Kp) float -> ((M, Kp) int8 codes, (M, Kp / g) float32 scales). Dynamic, per token (and group)."""
    scales = _div_qmax(group_absmax(x, group_size), bits)
    return quantize_with_scales(x, scales, bits, group_size), scales


def fake_quantize_activation(x: torch.Tensor, bits: int, group_size: int = 128) -> torch.Tensor:
    """Quantize-dequantize float32 (..., Kp) activations: bit-identical to
    ``dequantize(*quantize_activation(x))`` in fewer passes (the simulation analysis runs hundreds of times).

    A zero group gets a tiny positive scale instead of 0: its elements are all 0, so 0 / tiny rounds to 0.
    """
    _, qmax = qrange(bits)
    xg = _grouped(x.float(), group_size)
    s = _div_qmax(xg.abs().amax(dim=-1, keepdim=True), bits).clamp_(min=torch.finfo(torch.float32).tiny)
    return (xg / s).round_().clamp_(-qmax - 1, qmax).mul_(s).reshape(x.shape)


def block_rotate(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``x`` (..., K) times the block-diagonal matrix diag(q, q, ...) of (b, b) blocks ``q``; K a multiple of b.
    The online input rotation of a quantized linear (algorithms/rotate.py): one block per 128-wide group."""
    b = q.shape[0]
    return (x.unflatten(-1, (x.shape[-1] // b, b)) @ q.to(x.dtype)).flatten(-2)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's LlamaRMSNorm (``weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)``) in a fixed float32 order, so the
    one-kernel RMSNorm (kernels/rmsnorm.cu) can equal it bit for bit: the squares summed as a bottom-up pairwise
    tree over the row zero-padded to a power of two (neighbours first: element 2i + 1 into 2i, then 4i + 2 into 4i,
    ...), the mean a rounded division, and ``1 / sqrt`` in place of rsqrt (both IEEE-rounded, unlike rsqrt).
    Within float32 rounding of HF's; the model in fusion.py runs this order on CUDA only (the CPU keeps HF's)."""
    h = x.shape[-1]
    xf = x.float()
    sq = xf * xf
    width = 1 << max(0, (h - 1).bit_length())
    sq = torch.nn.functional.pad(sq, (0, width - h))
    while sq.shape[-1] > 1:
        sq = sq[..., 0::2] + sq[..., 1::2]
    # a tensor divisor: PyTorch's CUDA division by a Python scalar multiplies by its rounded reciprocal instead
    inv = torch.sqrt(sq / torch.full_like(sq, h) + eps).reciprocal()
    return weight * (xf * inv).to(x.dtype)
