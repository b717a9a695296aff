"""The BTC GEMM against the pure-PyTorch reference: integer block accumulators and outputs bit for bit.

The kernel's integer part is exact and its float epilogue follows the format's canonical order
(reference.scaled_sum: per-block terms, chunk sums of ``EPILOGUE_CHUNK_BLOCKS`` blocks, chunk sums in order, bias,
one rounding to the output dtype) with IEEE ops, splitting K only at chunk boundaries; so every output must equal
``reference.reference_linear`` bit for bit (compared as 16-bit words, -0 and +0 apart), for every shape, M and tile
/ split configuration. fp32 matrix units (tf32) are switched off for the reference's exact integer products.

The reference runs on the GPU (primitives.py divides by a tensor, ``absmax / full_like(absmax, qmax)``, so the
codes are the same on CPU and CUDA; a Python scalar divisor would make CUDA multiply by the reciprocal, which
differs in the last bit for some inputs); ``test_reference_cpu_equals_cuda`` holds the two devices together.
"""

from __future__ import annotations

import functools

import pytest
import torch

from flexq_cli.packing import pack_bitplanes, pack_weight
from flexq_cli.primitives import BLOCK_K, pad_k, quantize_activation
from flexq_cli.reference import block_int_gemm, block_scales, reference_linear

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
pytest.importorskip("cupy", reason="CuPy is not installed: pip install 'flexq[cuda]'")

from flexq_cli import btc, cuda_launch  # noqa: E402  (after the skips: importing is harmless, running needs CuPy)

DEV = torch.device("cuda")
SMALL_SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]  # SmolLM2 (N, K)
SHAPES_7B = [(4096, 4096), (12288, 4096), (11008, 4096), (4096, 11008)]
SHAPES_L3 = [(6144, 4096), (14336, 4096), (4096, 14336)]
SHAPES_70B = [(8192, 8192), (10240, 8192), (28672, 8192), (8192, 28672)]
M_ALL = [1, 2, 3, 7, 8, 16, 17, 31, 64, 128]
M_FEW = [1, 3, 8, 17, 64]  # the giant shapes: keep the runtime sane
CASES = [(s, m) for s in SMALL_SHAPES + SHAPES_7B for m in M_ALL] + [
    (s, m) for s in SHAPES_L3 + SHAPES_70B for m in M_FEW
]

torch.backends.cuda.matmul.allow_tf32 = False


@functools.lru_cache(maxsize=2)
def _layer(n: int, k: int, wgroup: int = 128, seed: int = 0):
    """Random int6 codes (K tail zero), float16 scales and the packed words, packed in row chunks."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    kp = -(-k // BLOCK_K) * BLOCK_K
    wq = torch.randint(-32, 32, (n, kp), generator=g, device=DEV, dtype=torch.int8)
    wq[:, k:] = 0
    cols = 1 if wgroup == -1 else kp // wgroup
    ws = (torch.rand((n, cols), generator=g, device=DEV) * 2e-3 + 1e-4).to(torch.float16)
    qweight = torch.cat([pack_weight(wq[i : i + 2048]) for i in range(0, n, 2048)])
    return wq, ws, qweight


def _x(m: int, k: int, dtype=torch.float16) -> torch.Tensor:
    x = torch.randn((m, k), device=DEV, dtype=torch.float32)
    x[:, torch.randint(0, k, (max(1, k // 64),), device=DEV)] *= 20  # a few outlier channels, like real LLMs
    return x.to(dtype)


def _quantize(x, kp, act_bits, agroup):
    """primitives.quantize_activation on the CPU (exact IEEE division, see the module docstring)."""
    xq, sx = quantize_activation(pad_k(x.float().cpu(), kp), act_bits, agroup)
    return xq.to(DEV), sx.to(DEV)


def _assert_same_bits(y: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal as 16-bit words (so NaNs never pass and -0 differs from +0)."""
    assert y.dtype == ref.dtype and y.shape == ref.shape
    same = y.view(torch.int16) == ref.view(torch.int16)
    if not same.all():
        d = (y.float() - ref.float()).abs() / ref.float().abs().clamp_min(1e-30)
        raise AssertionError(f"{(~same).sum().item()} of {same.numel()} outputs differ from the reference, "
                             f"max rel diff {d[~same].max().item():.3g}")


def _check_output(y, x, wq, ws, act_bits, agroup=128, wgroup=128, bias=None):
    ref = reference_linear(x, wq, ws, act_bits=act_bits, act_group_size=agroup, weight_group_size=wgroup, bias=bias)
    _assert_same_bits(y, ref)


def _check_exact(linear, accumulators, x, qweight, wq, ws, act_bits, cfg=None, out=None):
    """One kernel (``linear``, ``accumulators``: btc_* or int8_*) on x: block accumulators equal to the reference's
    integers, outputs equal to reference_linear bit for bit (into ``out`` when given)."""
    acc = accumulators(x, qweight, act_bits=act_bits, config=cfg)
    xq, _ = _quantize(x, wq.shape[1], act_bits, 128)
    assert torch.equal(acc, block_int_gemm(xq, wq))
    _check_output(linear(x, qweight, ws, act_bits=act_bits, config=cfg, out=out), x, wq, ws, act_bits)


def _check_pdl_chain(monkeypatch, linear, x0, qweight, wq, ws, act_bits, steps):
    """Each call's activation kernel reads the previous call's output while, with programmatic dependent launch,
    the kernels may overlap: the chain must equal plain launches bit for bit, and each step the reference."""
    chains = {}
    for pdl in (False, True):
        monkeypatch.setattr(cuda_launch, "PDL", pdl)
        x, ys = x0, []
        for _ in range(steps):
            x = linear(x, qweight, ws, act_bits=act_bits)
            ys.append(x)
        torch.cuda.synchronize()
        chains[pdl] = ys
    assert all(torch.equal(a, b) for a, b in zip(chains[False], chains[True]))
    for x, y in zip([x0] + chains[True][:-1], chains[True]):
        _check_output(y, x, wq, ws, act_bits)


@pytest.mark.parametrize("act_bits", [6, 8])
@pytest.mark.parametrize("shape,m", CASES, ids=[f"{n}x{k}-m{m}" for (n, k), m in CASES])
def test_block_accumulators_exact(shape, m, act_bits):
    n, k = shape
    wq, _, qweight = _layer(n, k)
    x = _x(m, k)
    acc = btc.btc_block_accumulators(x, qweight, act_bits=act_bits)
    xq, _ = _quantize(x, wq.shape[1], act_bits, 128)
    assert torch.equal(acc, block_int_gemm(xq, wq))


@pytest.mark.parametrize("act_bits", [6, 8])
@pytest.mark.parametrize("shape,m", CASES, ids=[f"{n}x{k}-m{m}" for (n, k), m in CASES])
def test_linear_matches_reference(shape, m, act_bits):
    n, k = shape
    wq, ws, qweight = _layer(n, k)
    x = _x(m, k)
    out = torch.full((m, n), float("nan"), dtype=x.dtype, device=DEV)
    y = btc.btc_linear(x, qweight, ws, act_bits=act_bits, act_group_size=128, weight_group_size=128, out=out)
    assert y is out
    _check_output(y, x, wq, ws, act_bits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("agroup,wgroup", [(128, 128), (-1, 128), (128, -1), (-1, -1)])
@pytest.mark.parametrize("bias_dtype", [None, "x", torch.float32])
def test_variants(dtype, agroup, wgroup, bias_dtype, monkeypatch):
    """M = 5 (tokens in columns) and M = 1 (plane columns, with the fused activation pack where act groups are
    128; act groups of the whole row keep the pack kernel)."""
    monkeypatch.setattr(btc, "FUSE_PACK", True)
    n, k = 1536, 576
    wq, ws, qweight = _layer(n, k, wgroup, seed=1)
    bias = None if bias_dtype is None else torch.randn(n, device=DEV).to(dtype if bias_dtype == "x" else bias_dtype)
    for m in (5, 1):
        x = _x(m, k, dtype).reshape(1, m, k)  # leading dims are kept
        for act_bits in (6, 8):
            y = btc.btc_linear(x, qweight, ws, act_bits=act_bits, act_group_size=agroup, weight_group_size=wgroup,
                               bias=bias)
            assert y.shape == (1, m, n) and y.dtype == dtype
            _check_output(y.reshape(m, n), x.reshape(m, k), wq, ws, act_bits, agroup, wgroup, bias)


CONFIGS = [
    btc.TileConfig(warps=w, kb=kb, stages=st, mt=mt, splits=sp)
    for (w, kb, st, mt, sp) in [(4, 2, 4, 8, 1), (4, 2, 4, 8, 5), (2, 4, 3, 8, 3), (8, 1, 6, 8, 2), (4, 2, 2, 16, 7),
                                (4, 1, 4, 32, 2), (1, 4, 2, 8, 64), (8, 2, 4, 16, 1), (4, 4, 3, 8, 1), (4, 4, 4, 8, 4),
                                (8, 4, 2, 8, 2), (8, 4, 3, 8, 3), (2, 4, 4, 8, 7), (4, 2, 6, 8, 2), (4, 4, 3, 16, 2),
                                (4, 4, 3, 32, 1)]
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("m", [1, 9, 40])
def test_every_tile_config_exact(cfg, m):
    """Every config the tuner may pick: exact accumulators and outputs (K = 4096 + an odd tail of blocks)."""
    n, k = 1088, 4224
    wq, ws, qweight = _layer(n, k, seed=2)
    for act_bits in (6, 8):
        _check_exact(btc.btc_linear, btc.btc_block_accumulators, _x(m, k), qweight, wq, ws, act_bits, cfg)


PC_CONFIGS = [
    btc.TileConfig(warps=w, kb=kb, stages=st, mt=8, splits=sp, pct=pct, fuse=fuse)
    for (w, kb, st, sp, pct) in [(4, 4, 3, 1, 1), (4, 4, 3, 5, 2), (8, 2, 4, 3, 4), (2, 1, 2, 2, 8), (4, 4, 4, 4, 8),
                                 (8, 4, 2, 2, 1), (1, 4, 3, 64, 4), (4, 2, 4, 1, 2), (8, 4, 3, 7, 1)]
    for fuse in (False, True)
]


@pytest.mark.parametrize("cfg", PC_CONFIGS, ids=str)
def test_plane_column_configs_exact(cfg):
    """The plane-column scheme (activation planes in the MMA's columns) for every M up to its token count, with the
    activation pack as its own launch and fused into the GEMM."""
    n, k = 1088, 4224
    wq, ws, qweight = _layer(n, k, seed=4)
    for m in sorted({1, max(1, cfg.pct - 1), cfg.pct}):
        for act_bits in (6, 8):
            out = torch.full((m, n), float("nan"), dtype=torch.float16, device=DEV)
            _check_exact(btc.btc_linear, btc.btc_block_accumulators, _x(m, k), qweight, wq, ws, act_bits, cfg, out)
    with pytest.raises(ValueError, match="pct"):
        btc.btc_linear(_x(cfg.pct + 1, k), qweight, ws, act_bits=6, config=cfg)


@pytest.mark.parametrize("shape", [(1536, 576), (576, 1536)], ids=["1536x576", "576x1536"])
@pytest.mark.parametrize("act_bits", [6, 8])
def test_reference_cpu_equals_cuda(shape, act_bits):
    """The reference gives the same bits on the CPU and on the GPU (SmolLM2 shapes, bias, fp16 and bf16), and
    the kernel equals the CPU reference too."""
    n, k = shape
    wq, ws, qweight = _layer(n, k, seed=6)
    bias = torch.randn(n, device=DEV).half()
    for dtype in (torch.float16, torch.bfloat16):
        x = _x(7, k, dtype)
        kw = dict(act_bits=act_bits, act_group_size=128, weight_group_size=128)
        cpu = reference_linear(x.cpu(), wq.cpu(), ws.cpu(), bias=bias.cpu().to(dtype), **kw)
        gpu = reference_linear(x, wq, ws, bias=bias.to(dtype), **kw)
        _assert_same_bits(gpu.cpu(), cpu)
        _assert_same_bits(btc.btc_linear(x, qweight, ws, bias=bias.to(dtype), **kw).cpu(), cpu)


def test_output_independent_of_splits():
    """Every split-K factor (including ones that do not divide the chunk count) gives the same bits."""
    n, k, m = 576, 4224, 5  # 33 blocks: an odd tail block in the last chunk
    wq, ws, qweight = _layer(n, k, seed=7)
    x = _x(m, k)
    ref = reference_linear(x, wq, ws, act_bits=6, act_group_size=128, weight_group_size=128)
    for splits in range(1, 34):
        for pct, fuse in ((0, False), (8, False), (8, True)):
            y = btc.btc_linear(x, qweight, ws, act_bits=6, config=btc.TileConfig(kb=4, stages=3, splits=splits,
                                                                                  pct=pct, fuse=fuse))
            _assert_same_bits(y, ref)


@pytest.mark.parametrize("k", [13, 576, 4100])
@pytest.mark.parametrize("agroup", [128, -1])
@pytest.mark.parametrize("act_bits", [6, 8])
def test_pack_matches_packing(k, agroup, act_bits):
    """The quantize-and-pack kernel's words and scales equal packing.pack_bitplanes / quantize_activation."""
    m = 11
    kp = -(-k // BLOCK_K) * BLOCK_K
    x = _x(m, k, torch.bfloat16)
    xpack, sx = btc.pack_activations(x, kp // BLOCK_K, act_bits, agroup, btc.TileConfig())
    xq, sref = _quantize(x, kp, act_bits, agroup)
    assert torch.equal(xpack[:m], pack_bitplanes(xq, bits=act_bits))
    assert torch.equal(sx[:m], block_scales(sref, agroup, kp))
    assert not xpack[m:].any() and not sx[m:].any()  # padded tokens are zero


@pytest.mark.parametrize("m,fuse", [(4, False), (1, False), (1, True)])
def test_cuda_graph_capture(monkeypatch, m, fuse):
    monkeypatch.setattr(btc, "FUSE_PACK", fuse)
    n, k = 576, 1536
    wq, ws, qweight = _layer(n, k, seed=3)
    x = _x(m, k)
    btc.btc_linear(x, qweight, ws, act_bits=6)  # compile and warm up outside the capture
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        with torch.cuda.graph(g):
            y = btc.btc_linear(x, qweight, ws, act_bits=6)
    for _ in range(2):
        x.copy_(_x(m, k))
        y.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        _check_output(y, x, wq, ws, 6)


@pytest.mark.parametrize("m,fuse", [(3, False), (1, True)])
def test_chained_calls_pdl(monkeypatch, m, fuse):
    """M = 3: pack kernel + GEMM per call; M = 1 fused: the GEMM alone reads the previous GEMM's output."""
    monkeypatch.setattr(btc, "FUSE_PACK", fuse)
    n = k = 576
    wq, ws, qweight = _layer(n, k, seed=5)
    _check_pdl_chain(monkeypatch, btc.btc_linear, _x(m, k), qweight, wq, ws, 6, steps=6)


def test_a_forced_fused_config_needs_128_token_groups():
    wq, ws, qweight = _layer(192, 576)
    cfg = btc.TileConfig(warps=4, kb=4, stages=3, mt=8, splits=1, pct=1, fuse=True)
    with pytest.raises(ValueError, match="act_group_size 128"):
        btc.btc_linear(_x(1, 576), qweight, ws, act_bits=6, act_group_size=-1, config=cfg)


def test_config_fuses_the_pack_only_when_asked_for_few_tokens_and_short_splits(monkeypatch):
    assert not btc.choose_config(4096, 4096, 1, 8).fuse  # off by default (docs/kernel.md)
    monkeypatch.setattr(btc, "FUSE_PACK", True)
    assert btc.choose_config(4096, 4096, 1, 8).fuse and btc.choose_config(576, 576, 2, 6).fuse
    assert not btc.choose_config(4096, 4096, 3, 8).fuse  # tokens in columns: the pack kernel
    assert not btc.choose_config(28672, 8192, 1, 8).fuse  # one split of 64 blocks: 16 per warp


def test_errors():
    wq, ws, qweight = _layer(192, 576)
    x = _x(2, 576)
    ok = dict(act_bits=6, act_group_size=128, weight_group_size=128)
    bad = [
        (x.float(), qweight, ws, ok, "dtype"),
        (x.cpu(), qweight, ws, ok, "device"),
        (x.t(), qweight, ws, ok, "contiguous"),
        (_x(2, 1000), qweight, ws, ok, "K=1000"),
        (x, qweight[:, :-1], ws, ok, "shape"),
        (x, qweight[:100].contiguous(), ws[:100].contiguous(), ok, "N=100"),
        (x, qweight, ws[:, :2].contiguous(), ok, "w_scales"),
        (x, qweight, ws.float(), ok, "dtype"),
        (x, qweight.float(), ws, ok, "dtype"),
        (x, qweight, ws, {**ok, "act_bits": 4}, "act_bits"),
        (x, qweight, ws, {**ok, "act_group_size": 256}, "supported"),
        (x, qweight, ws, {**ok, "weight_group_size": 64}, "supported"),
    ]
    for xx, qw, s, kw, words in bad:
        with pytest.raises(ValueError, match=words):
            btc.btc_linear(xx, qw, s, **kw)
    with pytest.raises(ValueError, match="bias"):
        btc.btc_linear(x, qweight, ws, bias=torch.zeros(191, device=DEV, dtype=x.dtype), **ok)
    with pytest.raises(ValueError, match="out"):
        btc.btc_linear(x, qweight, ws, out=torch.empty(2, 191, device=DEV, dtype=x.dtype), **ok)
