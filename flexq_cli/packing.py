"""Bit-plane packing of 6-bit weights: the on-disk and in-memory layout the BTC kernel reads.

Layout of ``qweight`` for a weight of N rows (output features) and padded K (a multiple of 128):

    qweight: (N, Kp / 128 * 24) int32, read as uint32 bit words
    word index within a row:  block * 24 + plane * 4 + word        (block = k // 128, word = (k % 128) // 32)
    bit within the word:      k % 32                               (bit 0 = least significant)

``plane`` 0..5 is the bit of the two's-complement 6-bit code (plane 5 is the sign bit, weight -32). Each
(row, 128-wide K block) is one contiguous 96-byte record holding all six planes, so a kernel streaming a tile of
rows reads whole 32-byte sectors, and one K block is exactly one scale group at the default group size.
Size: 6 bits per weight, 0.75 bytes, with no padding beyond K's rounding up to 128.
"""

from __future__ import annotations

import torch

from .primitives import BLOCK_K

WORDS_PER_PLANE = BLOCK_K // 32  # 4 uint32 words hold 128 bits of one plane
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
