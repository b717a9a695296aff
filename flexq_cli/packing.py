"""Bit-plane packing of 6-bit weights: the on-disk and in-memory layout the GPU kernels read.

Bit planes of one row (``pack_bitplanes``; also the activation pack's layout, one row per token), for padded K (a
multiple of 128):

    word index within a row:  block * 24 + plane * 4 + word        (block = k // 128, word = (k % 128) // 32)
    bit within the word:      k % 32                               (bit 0 = least significant)

``plane`` 0..5 is the bit of the two's-complement 6-bit code (plane 5 is the sign bit, weight -32). Each
(row, 128-wide K block) is one contiguous 96-byte record holding all six planes, and one K block is exactly one
scale group at the default group size. Size: 6 bits per weight, 0.75 bytes, with no padding beyond K's rounding
up to 128.

A weight's ``qweight`` (``pack_weight``) orders those records by groups of ROW_GROUP (16) rows, block-major inside
a group: (N, Kp / 128 * 24) int32 where rows 16g .. 16g + 15 of the tensor hold weight rows 16g .. 16g + 15 (so
slicing or concatenating at multiples of 16 rows keeps the layout), as (block, row % 16, 24 words). The 16 x 96 =
1,536 bytes one warp's MMA tile needs per K block are then contiguous: on the H100 the register-fed INT8 GEMMs of
the LLaMA-2-7B decode step got 5-10% faster than with each row's records in turn, the batch-4 step 3,135 -> 2,890
us (docs/kernel.md). A last group of N % 16 rows has the same order with fewer rows (the GPU kernels need N % 16 == 0
anyway).
"""

from __future__ import annotations

import torch

from .primitives import BLOCK_K

WORDS_PER_PLANE = BLOCK_K // 32  # 4 uint32 words hold 128 bits of one plane
ROW_GROUP = 16  # weight rows whose records are interleaved block by block (kernels/common.cuh, rec_index)
LAYOUT = "g16"  # the quantized manifest's extra.qweight_layout; artifacts without one hold row-major records
_SHIFTS = torch.arange(32, dtype=torch.int64)


def packed_words(kp: int, bits: int = 6) -> int:
    """Number of int32 words per row for padded K ``kp``."""
    if kp % BLOCK_K:
        raise ValueError(f"padded K must be a multiple of {BLOCK_K}, got {kp}")
    return kp // BLOCK_K * bits * WORDS_PER_PLANE


def pack_bitplanes(q: torch.Tensor, bits: int = 6) -> torch.Tensor:
    """(N, Kp) int8 codes in [-2^(bits-1), 2^(bits-1)) -> (N, Kp / 128 * bits * 4) int32 bit-plane words."""
    if q.dim() != 2 or q.shape[1] % BLOCK_K:
        raise ValueError(f"expected (N, Kp) with Kp a multiple of {BLOCK_K}, got {tuple(q.shape)}")
    n, kp = q.shape
    u = q.to(torch.int64) & ((1 << bits) - 1)  # two's complement code in the low `bits` bits
    planes = torch.stack([(u >> j) & 1 for j in range(bits)], dim=1)  # (N, bits, Kp)
    bitsk = planes.reshape(n, bits, kp // BLOCK_K, WORDS_PER_PLANE, 32)
    words = (bitsk << _SHIFTS.to(q.device)).sum(dim=-1)  # (N, bits, blocks, 4), values < 2^32
    words = words.permute(0, 2, 1, 3).reshape(n, -1)  # (N, blocks * bits * 4)
    return _to_int32(words)


def unpack_bitplanes(packed: torch.Tensor, kp: int, bits: int = 6) -> torch.Tensor:
    """Inverse of :func:`pack_bitplanes`: (N, words) int32 -> (N, Kp) int8 codes."""
    n = packed.shape[0]
    if packed.shape[1] != packed_words(kp, bits):
        raise ValueError(f"packed rows have {packed.shape[1]} words, expected {packed_words(kp, bits)} for K={kp}")
    words = packed.to(torch.int64) & 0xFFFFFFFF
    words = words.reshape(n, kp // BLOCK_K, bits, WORDS_PER_PLANE).permute(0, 2, 1, 3)  # (N, bits, blocks, 4)
    bitsk = (words.unsqueeze(-1) >> _SHIFTS.to(packed.device)) & 1  # (N, bits, blocks, 4, 32)
    u = sum(bitsk[:, j] << j for j in range(bits)).reshape(n, kp)
    signed = u - ((u >> (bits - 1)) << bits)  # sign-extend the two's complement code
    return signed.to(torch.int8)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) -> int32 with the same bits."""
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def _regroup(words: torch.Tensor, to_groups: bool) -> torch.Tensor:
    """Row-major records <-> ROW_GROUP-row groups, block-major inside a group (the module docstring)."""
    n, cols = words.shape
    if cols % (6 * WORDS_PER_PLANE):
        raise ValueError(f"packed weight rows have {cols} words, not a multiple of {6 * WORDS_PER_PLANE}")
    nb, full = cols // (6 * WORDS_PER_PLANE), n - n % ROW_GROUP
    parts = []
    for r0, r1 in ((0, full), (full, n)):
        g = min(ROW_GROUP, r1 - r0)
        if g == 0:
            continue
        shape = (-1, g, nb, 24) if to_groups else (-1, nb, g, 24)
        parts.append(words[r0:r1].reshape(shape).transpose(1, 2).reshape(r1 - r0, cols))
    return torch.cat(parts) if parts else words.clone()


def group_rows(words: torch.Tensor) -> torch.Tensor:
    """(N, words) packed records of each row in turn (``pack_bitplanes``) -> the weight layout (``pack_weight``)."""
    return _regroup(words, True)


def ungroup_rows(words: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`group_rows`."""
    return _regroup(words, False)


def pack_weight(q: torch.Tensor) -> torch.Tensor:
    """(N, Kp) int8 6-bit weight codes -> ``qweight`` in the weight layout (the module docstring)."""
    return group_rows(pack_bitplanes(q))


def unpack_weight(qweight: torch.Tensor, kp: int) -> torch.Tensor:
    """Inverse of :func:`pack_weight`: (N, Kp / 128 * 24) int32 -> (N, Kp) int8 codes."""
    return unpack_bitplanes(ungroup_rows(qweight), kp)
