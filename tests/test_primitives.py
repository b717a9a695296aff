"""Quantization primitives, bit-plane packing and the reference integer GEMM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexq_cli.packing import group_rows, pack_bitplanes, pack_weight, packed_words, unpack_bitplanes, unpack_weight
from flexq_cli.packing import ungroup_rows
from flexq_cli.primitives import (dequantize, fake_quantize_activation, pad_k, padded_k, qrange, quantize_activation, quantize_weight)
from flexq_cli.primitives import EPILOGUE_CHUNK_BLOCKS
from flexq_cli.reference import block_int_gemm, reference_linear, scaled_sum


@pytest.mark.parametrize("n,kp", [(1, 128), (3, 640), (17, 1536), (64, 256), (5, 11008)])
@pytest.mark.parametrize("bits", [6, 8, 4])
def test_pack_unpack_round_trip_is_exact(n, kp, bits):
    lo, hi = qrange(bits)
    q = torch.randint(lo, hi + 1, (n, kp), dtype=torch.int8)
    q[0, :4] = torch.tensor([lo, hi, 0, -1], dtype=torch.int8)  # the extremes always appear
    packed = pack_bitplanes(q, bits)
    assert packed.dtype == torch.int32 and packed.shape == (n, packed_words(kp, bits))
    assert torch.equal(unpack_bitplanes(packed, kp, bits), q)


def test_packed_size_is_six_bits_per_weight():
    q = torch.zeros(10, 1024, dtype=torch.int8)
    assert pack_bitplanes(q).numel() * 4 == 10 * 1024 * 6 // 8


def test_packing_layout_matches_the_documented_word_order():
    q = torch.zeros(2, 256, dtype=torch.int8)
    q[1, 128 + 32 + 5] = 1 << 3  # row 1, block 1, word 1, bit 5, plane 3
    q[0, 7] = -32  # row 0, block 0: only the sign plane (5) is set, word 0 bit 7
    words = pack_bitplanes(q).to(torch.int64) & 0xFFFFFFFF
    assert words[1, 1 * 24 + 3 * 4 + 1] == 1 << 5 and words[1].count_nonzero() == 1
    assert words[0, 0 * 24 + 5 * 4 + 0] == 1 << 7 and words[0].count_nonzero() == 1


@pytest.mark.parametrize("n", [16, 48, 7, 37])
def test_weight_layout_is_sixteen_row_groups_block_major(n):
    """qweight's records: (row, block) of a group starting at row g0 with `size` rows sits at record
    g0 * NB + block * size + row - g0 (kernels/common.cuh rec_index for whole groups)."""
    nb = 3
    q = torch.randint(-32, 32, (n, nb * 128), dtype=torch.int8)
    packed = pack_weight(q)
    assert packed.shape == (n, packed_words(nb * 128)) and torch.equal(unpack_weight(packed, nb * 128), q)
    records, flat = pack_bitplanes(q).reshape(n, nb, 24), packed.reshape(-1, 24)
    for row in range(n):
        g0 = row // 16 * 16
        size = min(16, n - g0)
        for b in range(nb):
            assert torch.equal(flat[g0 * nb + b * size + row - g0], records[row, b])
    assert torch.equal(ungroup_rows(packed), pack_bitplanes(q)) and torch.equal(group_rows(pack_bitplanes(q)), packed)
    whole = n // 16 * 16
    if whole:  # slicing at whole groups keeps the layout
        assert torch.equal(packed[:whole], pack_weight(q[:whole]))
    if 0 < whole < n:
        assert torch.equal(packed[whole:], pack_weight(q[whole:]))


def test_fused_rows_keep_the_layout_with_partial_groups():
    """q/k/v fusion concatenates qweights; a member whose rows end inside a 16-row group is regrouped instead."""
    from flexq_cli.config import QuantConfig
    from flexq_cli.fusion import FusedQuantLinear
    from flexq_cli.modules import QuantLinear

    torch.manual_seed(0)
    for sizes in ((32, 16, 48), (24, 40, 8)):
        members = [QuantLinear.from_linear(torch.nn.Linear(256, n, bias=False), 6, QuantConfig()) for n in sizes]
        fused = FusedQuantLinear.concat(members)
        assert torch.equal(fused.codes(), torch.cat([m.codes() for m in members]))
        assert torch.equal(fused.qweight, pack_weight(torch.cat([m.codes() for m in members])))


def test_pack_rejects_unpadded_k():
    with pytest.raises(ValueError, match="multiple of 128"):
        pack_bitplanes(torch.zeros(2, 576, dtype=torch.int8))


def test_weight_quantization_range_scale_and_zero_groups():
    w = torch.randn(8, 256)
    w[3, :128] = 0  # an all-zero group: scale 0, codes 0, dequantizes to exact zeros
    q, s = quantize_weight(w, 6, 128)
    assert q.dtype == torch.int8 and int(q.min()) >= -32 and int(q.max()) <= 31
    assert s.dtype == torch.float16 and s.shape == (8, 2) and s[3, 0] == 0
    assert torch.equal(q[3, :128], torch.zeros(128, dtype=torch.int8))
    err = (dequantize(q, s, 128) - w).abs()
    assert torch.all(err <= s.float().repeat_interleave(128, 1) / 2 + 1e-6)  # round to nearest, no clipping
    assert (q.abs() == 31).any(dim=1).sum() >= 7  # each non-zero row's absmax maps to +-31


def test_tiny_weight_scales_underflow_to_exact_zero_codes():
    w = torch.full((1, 128), 1e-9)
    q, s = quantize_weight(w)
    assert s.item() == 0 and not q.any()


def test_per_channel_weights():
    w = torch.randn(4, 384)
    q, s = quantize_weight(w, 6, -1)
    assert s.shape == (4, 1)
    assert torch.allclose(dequantize(q, s, -1), w, atol=float(s.float().max()) / 2 + 1e-6)


def test_activation_quantization_rounds_half_to_even_with_float32_division():
    x = torch.tensor([[31.0, 0.5, 1.5, 2.5, -0.5] + [0.0] * 123])  # absmax 31 -> scale exactly 1.0 at 6 bits
    q, s = quantize_activation(x, 6, 128)
    assert s.item() == 1.0
    assert q[0, :5].tolist() == [31, 0, 2, 2, 0]
    q8, s8 = quantize_activation(x, 8, 128)
    assert torch.equal(q8[0, :5].long(), torch.round(x[0, :5] / s8[0, 0]).long())


def test_padded_k():
    assert padded_k(576) == 640 and padded_k(4096, 128, 128) == 4096 and padded_k(11008, 128) == 11008
    assert padded_k(300, 256) == 512 and padded_k(300, -1, 128) == 384
    with pytest.raises(ValueError):
        padded_k(256, 64)


def test_block_int_gemm_is_exact_against_int64():
    torch.manual_seed(1)
    x = torch.randint(-128, 128, (7, 1536), dtype=torch.int8)
    w = torch.randint(-32, 32, (33, 1536), dtype=torch.int8)
    acc = block_int_gemm(x, w)
    want = torch.einsum("mbk,nbk->bmn", x.long().reshape(7, 12, 128), w.long().reshape(33, 12, 128))
    assert acc.dtype == torch.int32 and torch.equal(acc.long(), want)
    worst = torch.full((1, 128), -128, dtype=torch.int8), torch.full((1, 128), -32, dtype=torch.int8)
    assert block_int_gemm(*worst).item() == 128 * 128 * 32  # the largest block sum is still exact


@pytest.mark.parametrize("k,wg,ag,bits", [(576, 128, 128, 8), (576, 128, 128, 6), (1536, -1, -1, 8),
                                          (300, 256, 128, 6), (96, 128, -1, 8)])
def test_reference_linear_matches_float_math_on_dequantized_values(k, wg, ag, bits):
    torch.manual_seed(k + bits)
    w, x, bias = torch.randn(48, k), torch.randn(3, 5, k), torch.randn(48)
    kp = padded_k(k, wg, ag)
    q, s = quantize_weight(pad_k(w, kp), 6, wg)
    y = reference_linear(x, q, s, act_bits=bits, act_group_size=ag, weight_group_size=wg, bias=bias)
    assert y.shape == (3, 5, 48) and y.dtype == x.dtype
    xq, sx = quantize_activation(pad_k(x.reshape(15, k), kp), bits, ag)
    want = dequantize(xq, sx, ag).double() @ dequantize(q, s, wg).double().T + bias.double()
    # float32 scale products and block sums against float64: relative error well under 1e-5
    assert torch.allclose(y.reshape(15, 48).double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    # and the quantized layer approximates the float layer (6-bit weights: a few percent)
    rel = (y.double() - (x.double() @ w.double().T + bias)).norm() / (x.double() @ w.double().T).norm()
    assert rel < (0.06 if bits == 8 else 0.09)


def test_reference_linear_returns_input_dtype_and_rejects_nonfinite():
    from flexq_cli.errors import NonFiniteError

    q, s = quantize_weight(torch.randn(8, 128))
    x = torch.randn(2, 128, dtype=torch.bfloat16)
    assert reference_linear(x, q, s, act_bits=8, act_group_size=128, weight_group_size=128).dtype == torch.bfloat16
    x = torch.randn(2, 128)
    x[1, 3] = float("nan")
    with pytest.raises(NonFiniteError):
        reference_linear(x, q, s, act_bits=8, act_group_size=128, weight_group_size=128)


@pytest.mark.parametrize("bits,group", [(6, 128), (8, 128), (6, -1)])
def test_fake_quantization_is_bit_identical_to_quantize_then_dequantize(bits, group):
    x = torch.randn(9, 384) * torch.rand(9, 1) * 10
    x[2, :128] = 0  # a zero group
    q, s = quantize_activation(x, bits, group)
    assert torch.equal(fake_quantize_activation(x, bits, group), dequantize(q, s, group))


def _scaled_sum_scalar(acc, sx, sw):
    """The canonical epilogue order, one output at a time in NumPy float32 scalars (each op one IEEE rounding)."""
    c = EPILOGUE_CHUNK_BLOCKS
    nb, m, n = acc.shape
    y = np.zeros((m, n), dtype=np.float32)
    for i in range(m):
        for j in range(n):
            chunks = []
            for c0 in range(0, nb, c):
                terms = [np.float32(acc[b, i, j]) * (np.float32(sx[i, b]) * np.float32(sw[j, b]))
                         for b in range(c0, min(c0 + c, nb))]
                p = terms[0]
                for t in terms[1:]:
                    p = np.float32(p + t)
                chunks.append(p)
            acc_y = chunks[0]
            for p in chunks[1:]:
                acc_y = np.float32(acc_y + p)
            y[i, j] = acc_y
    return y


def _random_epilogue_case(nb, m, n, seed):
    g = torch.Generator().manual_seed(seed)
    acc = torch.randint(-(1 << 19), 1 << 19, (nb, m, n), generator=g, dtype=torch.int32)
    acc[:, 0, 0] = 0  # an all-zero output: its terms are +-0
    sx = torch.rand((m, nb), generator=g) * 0.1
    sw = (torch.rand((n, nb), generator=g) * 2e-3).half().float()  # weight scales come from float16
    sw[0, :] = -sw[0, :]  # a negative scale makes -0 terms (the sign of an exact zero must survive)
    return acc, sx, sw


@pytest.mark.parametrize("nb", [1, 2, 3, 5, 8, 11])
def test_scaled_sum_follows_the_canonical_order(nb):
    """scaled_sum equals a scalar float32 implementation of the documented order, bit for bit."""
    acc, sx, sw = _random_epilogue_case(nb, 3, 5, seed=nb)
    y = scaled_sum(acc, sx, sw)
    ref = _scaled_sum_scalar(acc.numpy(), sx.numpy(), sw.numpy())
    assert np.array_equal(y.numpy().view(np.int32), ref.view(np.int32))
    assert np.array_equal(scaled_sum(acc.float(), sx, sw).numpy().view(np.int32), ref.view(np.int32))


@pytest.mark.parametrize("nb", [4, 7, 12])
def test_scaled_sum_split_at_chunk_boundaries_is_the_same(nb):
    """A split-K kernel's scheme, split 0's running sum plus each later chunk's sum in order, gives the same bits
    wherever the split falls on a chunk boundary."""
    c = EPILOGUE_CHUNK_BLOCKS
    acc, sx, sw = _random_epilogue_case(nb, 4, 6, seed=100 + nb)
    full = scaled_sum(acc, sx, sw).view(torch.int32)
    for split in range(c, nb, c):
        y = scaled_sum(acc[:split], sx[:, :split], sw[:, :split])
        for c0 in range(split, nb, c):
            y = y + scaled_sum(acc[c0:c0 + c], sx[:, c0:c0 + c], sw[:, c0:c0 + c])
        assert torch.equal(y.view(torch.int32), full)
