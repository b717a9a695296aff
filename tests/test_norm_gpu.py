"""The one-kernel RMSNorm (kernels/rmsnorm.cu) against primitives.rms_norm, bit for bit, and its fused activation
pack against the BTC and INT8 kernels' own pack launches; the quantized linear that takes the hand-over gives the
same bits as without it, and really skips its pack launch."""

from __future__ import annotations

import pytest
import torch

from flexq_cli.primitives import BLOCK_K, rms_norm

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
pytest.importorskip("cupy", reason="CuPy is not installed: pip install 'flexq[cuda]'")

from flexq_cli import btc, int8_kernel  # noqa: E402
from flexq_cli.norm_kernel import rms_norm_cuda, silu_mul_cuda  # noqa: E402
from flexq_cli.reference import reference_linear  # noqa: E402

DEV = torch.device("cuda")
WIDTHS = [64, 96, 576, 1000, 4096, 5120, 8192]
MS = [1, 3, 8, 17, 300]


def _inputs(m, h, dtype, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = (torch.randn(m, h, generator=g, device=DEV) * torch.rand(m, 1, generator=g, device=DEV) * 8).to(dtype)
    x[0, : h // 3] = 0  # a part-zero row; zero rows below
    w = (torch.rand(h, generator=g, device=DEV) + 0.25).to(dtype)
    return x, w


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("h", WIDTHS)
def test_norm_equals_rms_norm(h, dtype):
    for m in MS:
        x, w = _inputs(m, h, dtype, seed=h + m)
        if m > 2:
            x[2] = 0
        y, none = rms_norm_cuda(x, w, 1e-5)
        assert none is None
        assert torch.equal(y.view(torch.int16), rms_norm(x, w, 1e-5).view(torch.int16)), (h, m)
    x3 = _inputs(6, h, dtype)[0].view(2, 3, h)  # leading dimensions are kept
    assert rms_norm_cuda(x3, w, 1e-6)[0].shape == (2, 3, h)


@pytest.mark.parametrize("act_bits", [6, 8])
@pytest.mark.parametrize("h", [96, 576, 4096])
def test_btc_pack_equals_the_pack_kernel(h, act_bits):
    kp = -(-h // BLOCK_K) * BLOCK_K
    for m in [1, 2, 5, 8, 16, 33]:
        for dtype in (torch.float16, torch.bfloat16):
            x, w = _inputs(m, h, dtype, seed=m)
            y, (xp, sx) = rms_norm_cuda(x, w, 1e-6, pack="btc", act_bits=act_bits, padded_in=kp)
            assert torch.equal(y, rms_norm(x, w, 1e-6))
            ref_xp, ref_sx = btc.pack_activations(y, kp // BLOCK_K, act_bits, 128, btc.TileConfig())
            assert xp.shape == ref_xp.shape and torch.equal(xp, ref_xp) and torch.equal(sx, ref_sx), (m, dtype)


@pytest.mark.parametrize("tiled", [False, True])
@pytest.mark.parametrize("act_bits", [6, 8])
@pytest.mark.parametrize("h", [96, 576, 4096])
def test_int8_pack_equals_the_quantize_kernel(h, act_bits, tiled):
    """The INT8 pack, in the row layout and in the warp-specialized kernel's tiled one (padding tokens zeros), equals
    the quantize kernel's byte for byte."""
    kp = -(-h // BLOCK_K) * BLOCK_K
    for m in [1, 7, 64, 128, 300]:
        x, w = _inputs(m, h, torch.float16, seed=m)
        y, (xq, sx) = rms_norm_cuda(x, w, 1e-6, pack="int8_tiled" if tiled else "int8", act_bits=act_bits,
                                    padded_in=kp)
        ref_q, ref_s = int8_kernel.quantize_activations(y, kp // BLOCK_K, act_bits, 128, tiled=tiled)
        assert torch.equal(xq, ref_q) and torch.equal(sx, ref_s), m
        assert torch.equal(y, rms_norm(x, w, 1e-6))


@pytest.mark.parametrize("h", [576, 4096, 5120, 8192])
def test_split_rows_give_the_same_bits(h, monkeypatch):
    """A token's row split over several CTAs (norm_kernel.SPLIT_PACKS; each sums all the squares, then writes and
    packs its share) gives the bits of one CTA per token, for every pack, with a padded K past the width."""
    from flexq_cli import norm_kernel

    kp = -(-h // BLOCK_K) * BLOCK_K + BLOCK_K
    for m in (1, 3, 17):
        x, w = _inputs(m, h, torch.float16, seed=m + h)
        runs = []
        for split in (set(), set(norm_kernel.PACKS)):
            monkeypatch.setattr(norm_kernel, "SPLIT_PACKS", split)
            outs = [rms_norm_cuda(x, w, 1e-6)[0]]
            for pack in ("btc", "int8", "int8_tiled"):
                y, (codes, scales) = rms_norm_cuda(x, w, 1e-6, pack=pack, act_bits=8, padded_in=kp)
                outs += [y, codes, scales]
            runs.append(outs)
        assert all(torch.equal(a, b) for a, b in zip(*runs)), (h, m)
        assert torch.equal(runs[0][0], rms_norm(x, w, 1e-6))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("h", [96, 1000, 4096, 5120])
def test_residual_add_in_the_norm_gives_the_adds_bits(h, dtype):
    """With a residual the kernel normalizes residual + x as PyTorch adds them, writes that sum, and everything it
    makes (the norm, either pack, split or not) has the bits of the separate add followed by the plain norm."""
    kp = -(-h // BLOCK_K) * BLOCK_K
    for m in (1, 3, 17, 300):
        x, w = _inputs(m, h, dtype, seed=m + h)
        r = (torch.randn(m, h, device=DEV) * 30).to(dtype)
        r[-1, : h // 2] = -x[-1, : h // 2]  # exact cancellations: +0 sums
        ref = r + x
        for pack in (None, "btc", "int8", "int8_tiled"):
            kw = {} if pack is None else dict(pack=pack, act_bits=8, padded_in=kp)
            s = torch.full_like(x, float("nan"))
            y, packed = rms_norm_cuda(x, w, 1e-6, residual=r, sum_out=s, **kw)
            y_ref, packed_ref = rms_norm_cuda(ref, w, 1e-6, **kw)
            assert torch.equal(s.view(torch.int16), ref.view(torch.int16)), (m, pack)
            assert torch.equal(y.view(torch.int16), y_ref.view(torch.int16)), (m, pack)
            assert packed is None or all(torch.equal(a, b) for a, b in zip(packed, packed_ref)), (m, pack)


def test_bad_residual_arguments_are_value_errors():
    x, w = _inputs(4, 256, torch.float16)
    r, s = torch.randn_like(x), torch.empty_like(x)
    with pytest.raises(ValueError, match="residual and sum_out go together"):
        rms_norm_cuda(x, w, 1e-6, residual=r)
    with pytest.raises(ValueError, match="sum_out must not be x or residual"):
        rms_norm_cuda(x, w, 1e-6, residual=r, sum_out=r)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        rms_norm_cuda(x, w, 1e-6, residual=r[:2].contiguous(), sum_out=s)
    with pytest.raises(ValueError, match="residual must have dtype"):
        rms_norm_cuda(x, w, 1e-6, residual=r.float(), sum_out=s)


def test_bad_arguments_are_value_errors():
    x, w = _inputs(4, 256, torch.float16)
    with pytest.raises(ValueError, match="weight must have shape"):
        rms_norm_cuda(x, w[:128].contiguous(), 1e-6)
    with pytest.raises(ValueError, match="dtype"):
        rms_norm_cuda(x.float(), w, 1e-6)
    with pytest.raises(ValueError, match="padded_in"):
        rms_norm_cuda(x, w, 1e-6, pack="btc", padded_in=200)
    with pytest.raises(ValueError, match="pack must be"):
        rms_norm_cuda(x, w, 1e-6, pack="fp8")
    from flexq_cli.packing import pack_weight

    qweight = pack_weight(torch.zeros(64, 256, dtype=torch.int8, device=DEV))
    scales = torch.ones(64, 2, dtype=torch.float16, device=DEV)
    _, packed = rms_norm_cuda(x, w, 1e-6, pack="btc", act_bits=8, padded_in=256)
    with pytest.raises(ValueError, match="packed activations must be"):
        btc.btc_linear(x, qweight, scales, act_bits=6, packed=packed)  # 8-bit planes for a 6-bit layer
    with pytest.raises(ValueError, match="act groups"):
        btc.btc_linear(x, qweight, scales, act_bits=8, act_group_size=-1, packed=packed)


@pytest.mark.parametrize("m", [1, 2, 8, 16, 64, 65, 300])
def test_quant_linear_takes_the_hand_over(m, monkeypatch):
    """A fused q/k/v-like consumer: the same bits with the norm's pack as with its own and as the reference, and no
    pack launch; the pack is in the layout of the kernel the layer runs (tiled for the warp-specialized INT8 kernel:
    Hopper, M > 64)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from flexq_cli.config import QuantConfig
    from flexq_cli.modules import KernelRMSNorm, QuantLinear

    torch.manual_seed(m)
    h = 576
    linear = torch.nn.Linear(h, 1536, bias=False, device=DEV, dtype=torch.float16)
    layer = QuantLinear.from_linear(linear, 8, QuantConfig(act_bits=8))
    hf = LlamaRMSNorm(h, eps=1e-5).to(DEV).half()
    hf.weight.data = (torch.rand(h, device=DEV) + 0.5).half()
    norm = KernelRMSNorm(hf, layer)
    x = torch.randn(m, h, device=DEV, dtype=torch.float16) * 3
    with torch.no_grad():
        y = norm(x)
        kernel = layer.kernel_for(y)
        tiled = kernel == "int8" and int8_kernel.reads_tiled_acts(m, 1536, layer.padded_in, y.device)
        assert layer.handed_over is not None and layer.handed_over[1] == ("int8_tiled" if tiled else kernel)
        assert not tiled or (m > 64 and layer.handed_over[2][0].dim() == 4)

        def no_pack(*args, **kwargs):
            raise AssertionError("the layer ran its own pack launch")

        with monkeypatch.context() as mp:
            mp.setattr(btc, "pack_activations", no_pack)
            mp.setattr(int8_kernel, "quantize_activations", no_pack)
            handed = layer(y)
        assert layer.handed_over is None  # used once
        own = layer(y.clone())
        ref = reference_linear(y, layer.codes(), layer.scales, act_bits=8, act_group_size=128, weight_group_size=128)
    assert torch.equal(handed.view(torch.int16), own.view(torch.int16))
    assert torch.equal(handed.view(torch.int16), ref.view(torch.int16))
    assert torch.equal(y, rms_norm(x, hf.weight, 1e-5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("i", [96, 640, 1536, 11008])
def test_silu_mul_equals_torch_and_packs(i, dtype):
    kp = -(-i // BLOCK_K) * BLOCK_K
    for m in [1, 5, 16, 300]:
        g = torch.Generator(device=DEV).manual_seed(m + i)
        gu = (torch.randn(m, 2 * i, generator=g, device=DEV) * 4).to(dtype)
        gu[0, :7] = torch.tensor([0.0, -0.0, 30.0, -30.0, 90.0, -90.0, 1e-3])
        expect = torch.nn.functional.silu(gu[:, :i]) * gu[:, i:]
        h, none = silu_mul_cuda(gu)
        assert none is None and torch.equal(h.view(torch.int16), expect.view(torch.int16)), (m, i)
        h, (xp, sx) = silu_mul_cuda(gu, pack="btc", act_bits=6, padded_in=kp)
        ref = btc.pack_activations(h, kp // BLOCK_K, 6, 128, btc.TileConfig())
        assert torch.equal(h, expect) and torch.equal(xp, ref[0]) and torch.equal(sx, ref[1])
        for tiled in (False, True):
            h, (xq, sx) = silu_mul_cuda(gu, pack="int8_tiled" if tiled else "int8", act_bits=8, padded_in=kp)
            ref = int8_kernel.quantize_activations(h, kp // BLOCK_K, 8, 128, tiled=tiled)
            assert torch.equal(h, expect) and torch.equal(xq, ref[0]) and torch.equal(sx, ref[1]), (m, tiled)
