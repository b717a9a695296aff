"""The INT8 tensor-core GEMM against the pure-PyTorch reference, and the BTC/INT8 dispatch.

Same contract as the BTC kernel (tests/test_btc_gpu.py, whose helpers this file reuses): integer block
accumulators equal ``reference.block_int_gemm`` (``torch.equal``) and outputs equal ``reference_linear`` bit for
bit, as 16-bit words (the canonical fp32 epilogue leaves no room for a tolerance). The shape and M sweep of the
BTC tests plus the prefill sizes M = 256 .. 4096.
"""

from __future__ import annotations

import pytest
import torch

from flexq_cli.packing import unpack_weight
from flexq_cli.primitives import BLOCK_K
from flexq_cli.reference import block_int_gemm, block_scales

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
pytest.importorskip("cupy", reason="CuPy is not installed: pip install 'flexq[cuda]'")

from flexq_cli import int8_kernel  # noqa: E402
from flexq_cli.dispatch import choose_kernel  # noqa: E402
from flexq_cli.modules import QuantLinear  # noqa: E402
from test_btc_gpu import (  # noqa: E402
    DEV, M_ALL, M_FEW, SHAPES_7B, SHAPES_70B, SHAPES_L3, SMALL_SHAPES, _assert_same_bits, _check_exact, _check_output,
    _check_pdl_chain, _layer, _quantize, _x,
)

M_PREFILL = [256, 512, 2048, 4096]
CASES = [(s, m) for s in SMALL_SHAPES + SHAPES_7B for m in M_ALL + M_PREFILL] + [
    (s, m) for s in SHAPES_L3 + SHAPES_70B for m in M_FEW + [512, 4096]
]
ACC_LIMIT = 1 << 28  # int32 accumulators compared only up to 1 GiB (NB x M x N); outputs are always compared


@pytest.mark.parametrize("act_bits", [6, 8])
@pytest.mark.parametrize("shape,m", CASES, ids=[f"{n}x{k}-m{m}" for (n, k), m in CASES])
def test_int8_matches_reference(shape, m, act_bits):
    _check_case(shape, m, act_bits, None)


def _check_case(shape, m, act_bits, cfg):
    """Block accumulators equal to the reference's integers (where they fit in ACC_LIMIT), outputs into a
    NaN-poisoned ``out`` equal to reference_linear bit for bit; ``cfg`` None: the default tile."""
    n, k = shape
    wq, ws, qweight = _layer(n, k)
    x = _x(m, k)
    if (wq.shape[1] // BLOCK_K) * m * n <= ACC_LIMIT:
        acc = int8_kernel.int8_block_accumulators(x, qweight, act_bits=act_bits, config=cfg)
        xq, _ = _quantize(x, wq.shape[1], act_bits, 128)
        assert torch.equal(acc, block_int_gemm(xq, wq))
        del acc
    out = torch.full((m, n), float("nan"), dtype=x.dtype, device=DEV)
    y = int8_kernel.int8_linear(x, qweight, ws, act_bits=act_bits, out=out, config=cfg)
    assert y is out
    _check_output(y, x, wq, ws, act_bits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("agroup,wgroup", [(128, 128), (-1, 128), (128, -1), (-1, -1)])
@pytest.mark.parametrize("bias_dtype", [None, "x", torch.float32])
def test_variants(dtype, agroup, wgroup, bias_dtype):
    n, k = 1536, 576
    wq, ws, qweight = _layer(n, k, wgroup, seed=1)
    bias = None if bias_dtype is None else torch.randn(n, device=DEV).to(dtype if bias_dtype == "x" else bias_dtype)
    for m in (5, 300):
        x = _x(m, k, dtype).reshape(1, m, k)
        for act_bits in (6, 8):
            y = int8_kernel.int8_linear(x, qweight, ws, act_bits=act_bits, act_group_size=agroup,
                                        weight_group_size=wgroup, bias=bias)
            assert y.shape == (1, m, n) and y.dtype == dtype
            _check_output(y.reshape(m, n), x.reshape(m, k), wq, ws, act_bits, agroup, wgroup, bias)


CONFIGS = [int8_kernel.Int8Config(), int8_kernel.Int8Config(bm=64, bn=128, wm=1, wn=8),
           int8_kernel.Int8Config(stages=3), int8_kernel.Int8Config(stages=5),
           int8_kernel.Int8Config(bm=64, bn=64, wm=2, wn=2, stages=4),
           # the decode-sized tiles of default_config (17..64 tokens), and 16 x 128, which it picked before the
           # register-fed kernel took M <= 16
           int8_kernel.Int8Config(bm=16, bn=64, wm=1, wn=4, stages=6),
           int8_kernel.Int8Config(bm=16, bn=128, wm=1, wn=8), int8_kernel.Int8Config(bm=32, bn=64, wm=2, wn=2),
           int8_kernel.Int8Config(bm=32, bn=32, wm=2, wn=1, stages=6),
           # the Hopper mainloop (opt-in): two warpgroups, one, pipeline depths
           int8_kernel.WGMMA_TILE, int8_kernel.Int8Config(bm=64, bn=128, wm=1, wn=1, stages=3, wgmma=True),
           int8_kernel.Int8Config(bm=128, bn=128, wm=2, wn=1, stages=5, wgmma=True),
           # warp-specialized, persistent: 128-row and 64-row tiles
           int8_kernel.WS_TILE, int8_kernel.WS_TILE_64]
HOPPER = int8_kernel.wgmma_capable(torch.cuda.current_device())


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("m", [1, 100, 129, 300])
def test_every_tile_config_exact(cfg, m):
    """Partial tiles in M and N (N = 1088) and an odd block count (K = 4224: 33 blocks, a one-block last chunk)."""
    if cfg.wgmma and not HOPPER:
        pytest.skip("wgmma needs an sm_90 GPU")
    n, k = 1088, 4224
    wq, ws, qweight = _layer(n, k, seed=2)
    for act_bits in (6, 8):
        _check_exact(int8_kernel.int8_linear, int8_kernel.int8_block_accumulators, _x(m, k), qweight, wq, ws,
                     act_bits, cfg)


GEMV_CONFIGS = [int8_kernel.GemvConfig(kw=kw, rt=rt, mt=mt, depth=d) for kw, rt in ((1, 1), (2, 1), (8, 1), (16, 1),
                                                                                   (4, 2), (2, 4))
                for mt in (1, 2) for d in (2, 4)] + [int8_kernel.GemvConfig(kw=8, occupancy=16)] + [  # 128 registers
    int8_kernel.GemvConfig(kw=kw, rt=rt, mt=mt, depth=d, ring=r)  # weights through the shared-memory ring
    for kw, rt, mt, d, r in ((1, 1, 1, 2, 2), (2, 1, 2, 2, 8), (8, 1, 1, 2, 4), (8, 1, 2, 4, 4), (16, 1, 1, 2, 6),
                             (4, 2, 2, 2, 4), (2, 4, 1, 2, 6))]


@pytest.mark.parametrize("cfg", GEMV_CONFIGS, ids=str)
def test_every_gemv_config_exact(cfg):
    """The register-fed kernel: N = 1104 (69 row tiles: a CTA of 2 or 4 row tiles is partial), K = 4224 (33 blocks:
    17 chunks split unevenly over the warps, a one-block last chunk) and K = 576 (5 blocks: more warps than chunks),
    every M its token tiles take; accumulators torch.equal, outputs bit for bit."""
    for n, k, seed in ((1104, 4224, 3), (1104, 576, 4)):
        wq, ws, qweight = _layer(n, k, seed=seed)
        for m in (1, 3, 8, 9, 16):
            if m > cfg.max_tokens:
                continue
            for act_bits in (6, 8):
                _check_exact(int8_kernel.int8_linear, int8_kernel.int8_block_accumulators, _x(m, k), qweight, wq, ws,
                             act_bits, cfg)


TUNED_CASES = [((n, kp), m) for n, kp, mt in sorted(int8_kernel.GEMV_TUNED) for m in ((1, 8) if mt == 1 else (9, 16))]


@pytest.mark.parametrize("shape,m", TUNED_CASES, ids=[f"{n}x{k}-m{m}" for (n, k), m in TUNED_CASES])
def test_every_tuned_gemv_entry_exact(shape, m):
    """Each GEMV_TUNED exception as the dispatch picks it, on its own shape (the M sweep meets only some of them):
    accumulators torch.equal, outputs bit for bit, both activation widths."""
    (n, kp), mt = shape, 1 if m <= 8 else 2
    kw, rt, ring = int8_kernel.GEMV_TUNED[(n, kp, mt)]
    assert int8_kernel.default_config(m, n, kp, True) == int8_kernel.GemvConfig(kw, rt, mt, ring=ring)
    for act_bits in (6, 8):
        _check_case(shape, m, act_bits, None)


def test_gemv_errors():
    """Forced gemv configs that cannot run: more tokens than its token tiles, more chunk slots than shared memory."""
    wq, ws, qweight = _layer(64, 576, seed=5)
    with pytest.raises(ValueError, match="takes at most 8 tokens, got M=9"):
        int8_kernel.int8_linear(_x(9, 576), qweight, ws, act_bits=8, config=int8_kernel.GemvConfig())
    wq, ws, qweight = _layer(64, 128 * 1800, seed=5)  # 900 chunks, warp 0 takes 450: 451 slots of 64 x 16 floats
    with pytest.raises(ValueError, match="bytes of shared memory"):
        int8_kernel.int8_linear(_x(16, 128 * 1800), qweight, ws, act_bits=8,
                                config=int8_kernel.GemvConfig(kw=2, rt=4, mt=2))


@pytest.mark.parametrize("m,k,agroup", [(11, 576, 128), (300, 4100, 128), (300, 576, -1)])
def test_quantize_tiled_layout(m, k, agroup):
    """The warp-specialized kernel's tiled layout holds the row layout's codes and scales (byte for byte, after
    undoing the tiles, the 128-byte swizzle and the transpose of each block's 4 x 4 groups of 4 bytes: row-layout
    byte 32e + 16h + 4q + i at 32q + 16h + 4e + i, common.cuh), and zeros for the padding tokens of the last tile."""
    kp = -(-k // BLOCK_K) * BLOCK_K
    nb, mt = kp // BLOCK_K, -(-m // 128)
    x = _x(m, k)
    xq, sx = int8_kernel.quantize_activations(x, nb, 8, agroup)
    tq, ts = int8_kernel.quantize_activations(x, nb, 8, agroup, tiled=True)
    assert tq.shape == (mt, nb, 128, 128) and ts.shape == (mt, nb, 128)
    r = torch.arange(128, device=DEV)
    chunk = torch.arange(8, device=DEV)[None, :] ^ (r[:, None] % 8)  # where logical chunk c of row r is stored
    rows = tq.reshape(mt, nb, 128, 8, 16).gather(3, chunk[None, None, :, :, None].expand(mt, nb, 128, 8, 16))
    rows = rows.reshape(mt, nb, 128, 4, 2, 4, 4).transpose(3, 5)  # (q, h, e, i) -> (e, h, q, i)
    rows = rows.reshape(mt, nb, 128, 128).permute(0, 2, 1, 3).reshape(mt * 128, nb * 128)
    assert torch.equal(rows[:m], xq) and not rows[m:].any()
    scales = ts.permute(0, 2, 1).reshape(mt * 128, nb)
    assert torch.equal(scales[:m], sx) and not scales[m:].any()


def _unpermute(xq: torch.Tensor) -> torch.Tensor:
    """The kernel's K order back to the natural one: logical kk = 16r + 4t + i holds physical k = 2t + r + 8i."""
    kk = torch.arange(32)
    r, t, i = kk // 16, (kk // 4) % 4, kk % 4
    phys = 2 * t + r + 8 * i
    out = torch.empty_like(xq)
    steps = xq.reshape(xq.shape[0], -1, 32)
    out.reshape(xq.shape[0], -1, 32)[:, :, phys.to(xq.device)] = steps
    return out


@pytest.mark.parametrize("k", [13, 576, 4100])
@pytest.mark.parametrize("agroup", [128, -1])
@pytest.mark.parametrize("act_bits", [6, 8])
def test_quantize_matches_primitives(k, agroup, act_bits):
    m, kp = 11, -(-k // BLOCK_K) * BLOCK_K
    x = _x(m, k, torch.bfloat16)
    xq, sx = int8_kernel.quantize_activations(x, kp // BLOCK_K, act_bits, agroup)
    ref_q, ref_s = _quantize(x, kp, act_bits, agroup)
    assert torch.equal(_unpermute(xq), ref_q)
    assert torch.equal(sx, block_scales(ref_s, agroup, kp))


def test_weight_unpack_order():
    """A single nonzero weight code lands on the same output as in the reference (the K permutation is internal)."""
    n, k, m = 64, 256, 130
    wq = torch.zeros((n, k), dtype=torch.int8, device=DEV)
    for row, col, val in [(0, 0, -32), (3, 37, 31), (17, 129, -1), (63, 255, 5)]:
        wq[row, col] = val
    from flexq_cli.packing import pack_weight

    qweight = pack_weight(wq)
    assert torch.equal(unpack_weight(qweight, k), wq)
    x = _x(m, k)
    acc = int8_kernel.int8_block_accumulators(x, qweight, act_bits=8)
    xq, _ = _quantize(x, k, 8, 128)
    assert torch.equal(acc, block_int_gemm(xq, wq))


@pytest.mark.parametrize("m", [5, 300])  # the register-fed kernel, the tiles
def test_cuda_graph_and_pdl_chain(monkeypatch, m):
    n = k = 576
    wq, ws, qweight = _layer(n, k, seed=5)
    _check_pdl_chain(monkeypatch, int8_kernel.int8_linear, _x(m, k), qweight, wq, ws, 6, steps=4)
    x = _x(m, k)
    s, g = torch.cuda.Stream(), torch.cuda.CUDAGraph()
    with torch.cuda.stream(s), torch.cuda.graph(g):
        y = int8_kernel.int8_linear(x, qweight, ws, act_bits=8)
    x.copy_(_x(m, k))
    y.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    _check_output(y, x, wq, ws, 8)


def test_errors():
    wq, ws, qweight = _layer(192, 576)
    x = _x(2, 576)
    ok = dict(act_bits=6, act_group_size=128, weight_group_size=128)
    for xx, qw, s, kw, words in [
        (x.float(), qweight, ws, ok, "dtype"), (x.cpu(), qweight, ws, ok, "device"),
        (x.t(), qweight, ws, ok, "contiguous"), (_x(2, 1000), qweight, ws, ok, "K=1000"),
        (x, qweight[:100].contiguous(), ws[:100].contiguous(), ok, "N=100"),
        (x, qweight, ws, {**ok, "act_bits": 4}, "act_bits"), (x, qweight, ws, {**ok, "act_group_size": 256}, "supported"),
    ]:
        with pytest.raises(ValueError, match=words):
            int8_kernel.int8_linear(xx, qw, s, **kw)
    with pytest.raises(ValueError, match="unsupported int8 tile config"):
        int8_kernel.Int8Config(bm=40)


WG_CASES = [(s, m) for s in SMALL_SHAPES + SHAPES_7B for m in (1, 17, 128, 512)] + [
    (s, m) for s in SHAPES_L3 + SHAPES_70B for m in (129, 2048)
]


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
@pytest.mark.parametrize("cfg", [int8_kernel.WGMMA_TILE, int8_kernel.WS_TILE, int8_kernel.WS_TILE_64],
                         ids=["wgmma", "ws", "ws64"])
@pytest.mark.parametrize("act_bits", [6, 8])
@pytest.mark.parametrize("shape,m", WG_CASES, ids=[f"{n}x{k}-m{m}" for (n, k), m in WG_CASES])
def test_wgmma_matches_reference(shape, m, act_bits, cfg):
    """The Hopper mainloops forced, on the model shapes."""
    _check_case(shape, m, act_bits, cfg)


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
@pytest.mark.parametrize("dtype,agroup,wgroup,bias", [(torch.float16, 128, 128, None),
                                                      (torch.bfloat16, -1, 128, torch.float32),
                                                      (torch.float16, 128, -1, "x"), (torch.bfloat16, -1, -1, "x")])
@pytest.mark.parametrize("cfg,n", [(int8_kernel.WS_TILE, 4160), (int8_kernel.WS_TILE_64, 4176)], ids=["ws", "ws64"])
def test_ws_persistent(dtype, agroup, wgroup, bias, cfg, n):
    """The warp-specialized kernel walks several tiles per CTA (33 x 33 tiles of 128 rows or 33 x 66 of 64, more than
    an H100's 132 SMs), with an odd block count (K = 4224: 33 blocks, a one-block last chunk), partial last tiles in M
    (4100) and N (4160: 64 rows of 128; 4176: 16 of 64), the group sizes and biases: accumulators torch.equal,
    outputs bit for bit."""
    k, m = 4224, 4100
    wq, ws, qweight = _layer(n, k, wgroup, seed=7)
    b = None if bias is None else torch.randn(n, device=DEV).to(dtype if bias == "x" else bias)
    x = _x(m, k, dtype)
    assert -(-n // cfg.bn) * -(-m // 128) > 8 * int8_kernel.sm_count(torch.cuda.current_device())
    for act_bits in (6, 8):
        if agroup == 128 and wgroup == 128:
            acc = int8_kernel.int8_block_accumulators(x, qweight, act_bits=act_bits, config=cfg)
            xq, _ = _quantize(x, wq.shape[1], act_bits, 128)
            assert torch.equal(acc, block_int_gemm(xq, wq))
            del acc
        out = torch.full((m, n), float("nan"), dtype=dtype, device=DEV)
        y = int8_kernel.int8_linear(x, qweight, ws, act_bits=act_bits, act_group_size=agroup,
                                    weight_group_size=wgroup, bias=b, out=out, config=cfg)
        _check_output(y, x, wq, ws, act_bits, agroup, wgroup, b)


@pytest.mark.skipif(not HOPPER, reason="wgmma needs an sm_90 GPU")
@pytest.mark.parametrize("cfg", [int8_kernel.WS_TILE, int8_kernel.WS_TILE_64], ids=["ws", "ws64"])
def test_ws_repeated_calls_identical(cfg):
    """The warp-specialized kernel's stage ring under load: 300 calls on a LLaMA-2-70B shape at 2048 tokens, each
    into a NaN-poisoned output, all bit-equal to the reference. Before the scales had a ring of their own
    (w6_int8_gemm.cu, W_SCALES), a copy could refill a stage while a warp's last scale loads were still pending:
    with the shared-memory output store 26 of 500 such calls gave wrong outputs for 8-16 tokens of one warp."""
    n, k, m = 10240, 8192, 2048
    wq, ws, qweight = _layer(n, k, seed=11)
    x = _x(m, k)
    first = int8_kernel.int8_linear(x, qweight, ws, act_bits=8, config=cfg)
    _check_output(first, x, wq, ws, 8)
    out = torch.empty_like(first)
    bad = 0
    for _ in range(300):
        out.fill_(float("nan"))
        int8_kernel.int8_linear(x, qweight, ws, act_bits=8, out=out, config=cfg)
        bad += int(not torch.equal(out.view(torch.int16), first.view(torch.int16)))
    assert bad == 0, f"{bad} of 300 calls differ from the first"


def test_wgmma_config_needs_hopper(monkeypatch):
    """The wgmma tiles run only where the GPU has wgmma: elsewhere a ValueError when asked for, and the default from
    65 tokens is the warp-specialized kernel on Hopper only (the mma.sync tile elsewhere)."""
    wq, ws, qweight = _layer(192, 576, seed=6)
    x = _x(300, 576)
    sms = int8_kernel.sm_count(x.device.index)
    assert int8_kernel._config(None, 300, 192, 640, x.device) == (int8_kernel.ws_config(300, 192, sms) if HOPPER
                                                                     else int8_kernel.Int8Config())
    assert int8_kernel.reads_tiled_acts(300, 192, 640, x.device) == HOPPER
    if HOPPER:
        _check_output(int8_kernel.int8_linear(x, qweight, ws, act_bits=8, config=int8_kernel.WGMMA_TILE), x, wq, ws, 8)
        rows = int8_kernel.quantize_activations(x, 5, 8, 128)  # the row layout, which the ws kernel cannot read
        with pytest.raises(ValueError, match="reads the tiled activation layout"):
            int8_kernel.int8_linear(x, qweight, ws, act_bits=8, packed=rows)
        tiles = int8_kernel.quantize_activations(x, 5, 8, 128, tiled=True)  # what it reads: the quantize skipped
        _check_output(int8_kernel.int8_linear(x, qweight, ws, act_bits=8, packed=tiles), x, wq, ws, 8)
        with pytest.raises(ValueError, match="reads the row activation layout"):
            int8_kernel.int8_linear(x, qweight, ws, act_bits=8, packed=tiles, config=int8_kernel.Int8Config())
    monkeypatch.setattr(int8_kernel, "wgmma_capable", lambda device: False)
    assert int8_kernel._config(None, 300, 192, 640, x.device) == int8_kernel.Int8Config()
    with pytest.raises(ValueError, match="needs wgmma"):
        int8_kernel.int8_linear(x, qweight, ws, act_bits=8, config=int8_kernel.WGMMA_TILE)


@pytest.mark.parametrize("rotated", [False, True])
@pytest.mark.parametrize("m", [1, 8, 63, 64, 300])
def test_quant_linear_dispatch(m, rotated):
    """QuantLinear on CUDA: auto, btc and int8 give the same bits as the reference path, whichever kernel runs
    (with the online input rotation too: every backend quantizes the same rotated input)."""
    n, k = 1536, 640 if rotated else 576
    linear = torch.nn.Linear(k, n, bias=True).to(DEV)
    from flexq_cli.algorithms.rotate import fold_input_rotation, online_block
    from flexq_cli.config import QuantConfig

    if rotated:
        fold_input_rotation(linear, online_block())
    layer = QuantLinear.from_linear(linear, 8, QuantConfig()).to(DEV)
    assert (layer.rotation is not None) == rotated
    layer.bias.data = layer.bias.data.half()
    x = _x(m, k)
    outs = {}
    for backend in ("reference", "btc", "int8", "auto"):
        layer.backend = backend
        outs[backend] = layer(x)
    for backend in ("btc", "int8", "auto"):
        _assert_same_bits(outs[backend], outs["reference"])
    assert choose_kernel(m, n, 640, 8) in ("btc", "int8")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_both_kernels_on_the_second_gpu():
    """Kernels follow their tensors' device whatever device is current (modules load into that device's context)."""
    from flexq_cli import btc
    from flexq_cli.reference import reference_linear

    dev = torch.device("cuda", 1)
    n, k = 1536, 576
    wq, ws, qweight = (t.to(dev) for t in _layer(n, k, seed=8))
    with torch.cuda.device(0):
        for m in (3, 300):
            x = _x(m, k).to(dev)
            ref = reference_linear(x, wq, ws, act_bits=8, act_group_size=128, weight_group_size=128)
            for kernel in (btc.btc_linear, int8_kernel.int8_linear):
                y = kernel(x, qweight, ws, act_bits=8)
                assert y.device == dev
                _assert_same_bits(y, ref)
