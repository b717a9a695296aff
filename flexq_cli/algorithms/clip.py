"""Weight clipping search: per-group scales that minimize the layer's output error instead of using the absmax.

For a weight group (row n, group b of g columns) with quantization error e = w - Q(w), the output error over
calibration inputs X is ||X_b e||^2 = e^T H_bb e with H_bb = X_b^T X_b, the diagonal block of the Hessian of
that group (cross-group terms are ignored, as in AWQ's clip search). With no Hessian, H_bb = I: weight MSE.
Each group independently takes the shrink ratio c from a grid that gives the smallest error; the scale is
``weight_scales(w, clip=c)``, rounded to float16 exactly as the format stores it.
"""

from __future__ import annotations

import torch

from ..primitives import dequantize, quantize_with_scales, weight_scales

CLIP_GRID = tuple(round(1.0 - 0.02 * i, 2) for i in range(21))  # 1.00, 0.98, ..., 0.60


def hessian_blocks(h: torch.Tensor, group_size: int) -> torch.Tensor:
    """(Kp, Kp) Hessian -> (Kp / g, g, g) float32 diagonal blocks (one (1, Kp, Kp) block for g = -1)."""
    kp = h.shape[0]
    g = kp if group_size <= 0 else group_size
    nb = kp // g
    idx = torch.arange(nb, device=h.device)
    return h.float().reshape(nb, g, nb, g)[idx, :, idx, :]


def group_errors(w: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int,
                 blocks: torch.Tensor | None) -> torch.Tensor:
    """(N, Kp) weights quantized with (N, Kp / g) scales -> (N, Kp / g) output (or squared) error per group."""
    n, kp = w.shape
    g = kp if group_size <= 0 else group_size
    wq = dequantize(quantize_with_scales(w, scales, bits, group_size), scales, group_size)
    e = (w.float() - wq).reshape(n, kp // g, g)
    if blocks is None:
        return e.square().sum(dim=-1)
    he = torch.einsum("bkl,nbl->nbk", blocks, e)
    return (e * he).sum(dim=-1)


def search_scales(w: torch.Tensor, bits: int = 6, group_size: int = 128, h: torch.Tensor | None = None,
                  grid: tuple[float, ...] = CLIP_GRID) -> torch.Tensor:
    """(N, Kp) float weights (and an optional (Kp, Kp) Hessian X^T X) -> (N, Kp / g) float16 scales.

    ``h`` None minimizes the weight MSE of each group; otherwise its output error e^T H_bb e. Ratio 1.0 (the
    absmax scale) is always a candidate, so the result is never worse than round-to-nearest on that measure.
    """
    w = w.float()
    blocks = None if h is None else hessian_blocks(h, group_size)
    best = weight_scales(w, bits, group_size, 1.0)
    best_err = group_errors(w, best, bits, group_size, blocks)
    for c in grid:
        if c == 1.0:
            continue
        s = weight_scales(w, bits, group_size, c)
        err = group_errors(w, s, bits, group_size, blocks)
        better = err < best_err
        best = torch.where(better, s, best)
        best_err = torch.where(better, err, best_err)
    return best
