"""GPTQ error compensation for INT6 weights with per-group scales (Frantar et al., 2022), as plain functions.

Columns are quantized one at a time; each column's rounding error is spread over the columns not yet quantized
through the inverse Hessian H^-1 (H = 2 X^T X / tokens from the layer's calibration inputs), so the layer
output, not the weight, is what the rounding preserves. Lazy batch updates: the error is applied inside a
128-column block at once and to the rest of the row once per block. Group scales are chosen when the first
column of the group is reached, from the already-updated weights (absmax, or the clip search of clip.py on
the group's Hessian block); with act-order the columns run by decreasing H diagonal, so the scales are fixed
up front instead ("static groups"), keeping the group layout of the format.

Output: (N, Kp) int8 codes and (N, Kp / g) float16 scales, exactly the format of ``primitives.quantize_weight``.
"""

from __future__ import annotations

import torch

from ..primitives import qrange, weight_scales
from .clip import search_scales

BLOCK = 128  # lazy-update block: one weight group (groups are multiples of 128, so blocks never straddle one)


class Hessian:
    """Running H = 2 / tokens * sum x^T x over every token of (..., K) inputs, in float32 on x's device."""

    def __init__(self, k: int, device=None):
        self.h = torch.zeros(k, k, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        n = x.shape[0]
        self.h.mul_(self.tokens / (self.tokens + n))
        self.tokens += n
        x = x * (2.0 / self.tokens) ** 0.5
        self.h.addmm_(x.T, x)


def choose_scales(w: torch.Tensor, bits: int, group_size: int, clip: str, h: torch.Tensor | None) -> torch.Tensor:
    """(N, cols) weights -> (N, cols / g) float16 scales: absmax, or the clip search (weight MSE or output)."""
    if clip == "none":
        return weight_scales(w, bits, group_size)
    return search_scales(w, bits, group_size, h if clip == "output" else None)


def inverse_hessian_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1; the damping grows tenfold until H is positive."""
    diag_mean = torch.diag(h).mean()
    for attempt in range(6):
        hd = h.clone()
        hd.diagonal().add_(damp * (10 ** attempt) * diag_mean)
        chol, info = torch.linalg.cholesky_ex(hd)
        if info == 0:
            inv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if info == 0:
                return upper
    raise FloatingPointError("the calibration Hessian is not positive definite even with heavy damping")


@torch.no_grad()
def gptq_quantize(w: torch.Tensor, h: torch.Tensor, bits: int = 6, group_size: int = 128, *, damp: float = 0.01,
                  act_order: bool = False, clip: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """(N, Kp) float weights (K zero-padded) and their (Kp, Kp) Hessian -> ((N, Kp) int8 codes,
    (N, Kp / g) float16 scales). ``clip``: how each group's scale is chosen (none, mse, output)."""
    w, h = w.float().clone(), h.float().clone()
    n, kp = w.shape
    g = kp if group_size <= 0 else group_size
    dead = torch.diag(h) == 0  # padding and never-active inputs: weight 0, no say in the error
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    static = act_order or group_size <= 0
    scales = choose_scales(w, bits, group_size, clip, h) if static else torch.zeros(n, kp // g, dtype=torch.float16,
                                                                                       device=w.device)
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(kp, device=w.device)
    wt = w[:, perm].T.contiguous()  # (Kp, N): column i of W is the contiguous row i
    hinv = inverse_hessian_cholesky(h[perm][:, perm], damp)
    codes_t = torch.zeros(kp, n, device=w.device)
    col_groups = perm // g  # (Kp,) the group (scale column) of each permuted column
    for i1 in range(0, kp, BLOCK):
        i2 = min(i1 + BLOCK, kp)
        if not static and i1 % g == 0:  # the first column of a group: its scale, from the updated weights
            gi = i1 // g
            scales[:, gi : gi + 1] = choose_scales(wt[i1 : i1 + g].T, bits, -1, clip, h[i1 : i1 + g, i1 : i1 + g])
        err = _quantize_block(wt[i1:i2], hinv[i1:i2, i1:i2], codes_t[i1:i2], scales.T[col_groups[i1:i2]].float(), bits)
        wt[i2:] -= hinv[i1:i2, i2:].T @ err
    return codes_t[torch.argsort(perm)].T.to(torch.int8).contiguous(), scales


def _quantize_block(w1: torch.Tensor, hinv1: torch.Tensor, codes1: torch.Tensor, s1: torch.Tensor,
                    bits: int) -> torch.Tensor:
    """Quantize the (B, N) rows of a block of transposed weights in order, in place, with their (B, N) float32
    scales; each row's error is spread over the rows after it. Returns the (B, N) errors / diag(H^-1) for the
    lazy update of the rows after the block. A zero scale (an all-zero group) gives code 0."""
    qmin, qmax = qrange(bits)
    threads = torch.get_num_threads()
    if not w1.is_cuda:  # hundreds of tiny ops: thread hand-offs cost more than they save (and stall on busy CPUs)
        torch.set_num_threads(1)
    try:
        return _column_loop(w1, hinv1, codes1, s1, qmin, qmax)
    finally:
        torch.set_num_threads(threads)


def _column_loop(w1, hinv1, codes1, s1, qmin: int, qmax: int) -> torch.Tensor:
    live = (s1 > 0).float()
    safe = torch.where(s1 > 0, s1, torch.ones_like(s1))  # divide as primitives.quantize_with_scales does
    err = torch.empty_like(w1)
    for i in range(w1.shape[0]):
        q = (w1[i] / safe[i]).round_().clamp_(qmin, qmax).mul_(live[i])
        codes1[i] = q
        err[i] = (w1[i] - q * s1[i]) / hinv1[i, i]
        w1[i + 1 :].addr_(hinv1[i, i + 1 :], err[i], alpha=-1.0)
    return err
