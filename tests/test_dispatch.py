"""The BTC/INT8 dispatch rule and the crossover it is tuned from, and the decode attention's split of the keys (pure
Python: runs without a GPU)."""

from __future__ import annotations

import pytest

from flexq_cli import dispatch
from flexq_cli.kernel_bench import crossovers


def _rows(n, k, act_bits, times):
    """Bench rows for one shape: times = {M: (btc_us, int8_us)}."""
    rows = []
    for m, (b, i) in times.items():
        rows.append({"N": n, "K": k, "M": m, "op": f"W6A{act_bits}/btc", "median_us": b})
        rows.append({"N": n, "K": k, "M": m, "op": f"W6A{act_bits}/int8", "median_us": i})
        rows.append({"N": n, "K": k, "M": m, "op": "fp16", "median_us": 1.0})
    return rows


def test_crossover_is_the_least_loss_threshold():
    # INT8 wins from 32 on, except a noisy win at 4 that a single threshold cannot follow
    times = {1: (10, 50), 4: (60, 50), 8: (12, 50), 16: (20, 50), 32: (60, 50), 64: (120, 55), 128: (240, 60)}
    result = {"rows": _rows(4096, 4096, 8, times) + _rows(4096, 4096, 6, {1: (10, 50), 8: (12, 50)})}
    cx = crossovers(result)
    assert cx[(4096, 4096, 8)] == 32
    assert cx[(4096, 4096, 6)] == 16  # INT8 never won: a threshold above every timed M


def test_choose_kernel_uses_the_table_then_the_default(monkeypatch):
    monkeypatch.setattr(dispatch, "CROSSOVER", {(4096, 4096, 8): 64})
    assert dispatch.choose_kernel(63, 4096, 4096, 8) == "btc"
    assert dispatch.choose_kernel(64, 4096, 4096, 8) == "int8"
    default = dispatch.DEFAULT_CROSSOVER[6]
    assert dispatch.choose_kernel(default - 1, 123, 4096, 6) == "btc"
    assert dispatch.choose_kernel(default, 123, 4096, 6) == "int8"


def test_measured_table_is_consistent():
    """Every entry of the shipped table is a power of two within the bench's M sweep, for both activation widths."""
    assert dispatch.CROSSOVER, "the table measured on the H100 is empty"
    for (n, k, act_bits), m in dispatch.CROSSOVER.items():
        assert act_bits in (6, 8) and n % 16 == 0 and k % 128 == 0
        assert m >= 1 and m & (m - 1) == 0 and m <= 8192


def test_fused_activation_pack_only_for_few_tokens_and_short_splits(monkeypatch):
    """btc.fuse_pack, when switched on: plane columns (M <= 2) whose warps each quantize at most
    FUSE_MAX_BLOCKS_PER_WARP blocks."""
    from flexq_cli import btc

    cfg = btc.TileConfig(warps=8, kb=4, stages=2, mt=8, pct=1, splits=4)
    assert not btc.fuse_pack(cfg, 32)  # off by default (docs/kernel.md)
    monkeypatch.setattr(btc, "FUSE_PACK", True)
    assert btc.fuse_pack(cfg, 32)  # 8 blocks per split over 8 warps
    assert not btc.fuse_pack(btc.TileConfig(warps=4, kb=4, stages=3, mt=8, pct=1, splits=1), 64)  # 16 per warp
    assert btc.fuse_pack(btc.TileConfig(warps=4, kb=4, stages=3, mt=8, pct=2, splits=0), 5)  # SmolLM2: 3 per warp
    assert not btc.fuse_pack(btc.TileConfig(warps=4, kb=4, stages=3, mt=8, pct=0, splits=4), 32)  # tokens in columns
    assert not btc.fuse_pack(btc.TileConfig(warps=4, kb=4, stages=3, mt=8, pct=4, splits=64), 64)  # M = 3, 4
    monkeypatch.setattr(btc, "FUSE_PACK", False)
    assert not btc.fuse_pack(cfg, 32)


def test_choose_config_fuses_only_with_128_token_groups_and_follows_the_switch(monkeypatch):
    """Tuned shapes need no GPU to configure. The cached choice follows FUSE_PACK and act_group_size."""
    from flexq_cli import btc

    assert not btc.choose_config(4096, 4096, 1, 8).fuse
    monkeypatch.setattr(btc, "FUSE_PACK", True)
    assert btc.choose_config(4096, 4096, 1, 8).fuse
    assert not btc.choose_config(4096, 4096, 1, 8, act_group_size=-1).fuse  # a per-token scale: the pack kernel
    assert btc.choose_config(4096, 4096, 1, 8) == btc.choose_config(4096, 4096, 1, 8, None, 128)


def test_int8_decode_tiles_fit_the_tokens_and_the_rows():
    """Up to 16 tokens the register-fed kernel (one or two token tiles of 8); 17..64 tokens a tile of at most 2 x M
    rounded to 16 tokens and never more rows per CTA than N has; from 65 tokens the 128 x 128 tile, the
    warp-specialized one where the GPU has wgmma."""
    from flexq_cli.int8_kernel import GEMV_MAX_M, GemvConfig, Int8Config, default_config
    from flexq_cli.int8_kernel import WS_TILE as WS

    for m in (1, 4, 8, 16, 17, 32, 33, 64):
        for n in (576, 4096, 12288, 14336, 28672, 57344):
            cfg = default_config(m, n, 4096)
            if m <= GEMV_MAX_M:
                assert isinstance(cfg, GemvConfig) and m <= cfg.max_tokens < m + 8, (m, n, cfg)
            else:
                assert cfg.bm <= max(16, 2 * m) and cfg.bn <= max(64, n), (m, n, cfg)
    assert default_config(65, 4096, 4096) == default_config(4096, 57344, 8192) == Int8Config()
    assert default_config(32, 14336, 4096).bn == 64 and default_config(32, 12288, 4096).bn == 32  # one wave, 32 x 32
    assert not any(default_config(m, n, 4096).wgmma for m in (17, 64, 65, 4096) for n in (4096, 28672))
    assert all(default_config(m, n, 4096, wgmma=True) == WS for m in (65, 300, 4096) for n in (192, 28672))
    assert all(default_config(m, 4096, 4096, wgmma=True) == default_config(m, 4096, 4096) for m in (1, 16, 17, 64))


def test_ws_tile_rows_by_waves():
    """ws_config: 64-row tiles where 128-row ones fill at most half the SMs, or one to one and a half waves (the
    measured wins); 128-row tiles elsewhere, and where the SM count is not known."""
    from flexq_cli.int8_kernel import WS_TILE, WS_TILE_64, default_config, ws_config

    for m, n, want in [(65, 4096, WS_TILE_64), (128, 8192, WS_TILE_64),  # 32 and 64 tiles of 128 rows: <= 66
                       (256, 8192, WS_TILE),  # 128 tiles: one wave of 128-row tiles, two of 64-row ones
                       (192, 12288, WS_TILE_64), (128, 22016, WS_TILE_64),  # 192 and 172: 2 waves against 3 x 0.64
                       (65, 27648, WS_TILE), (1024, 5120, WS_TILE), (4096, 28672, WS_TILE)]:  # 216, 320, 7168
        assert ws_config(m, n, 132) == want, (m, n)
        assert default_config(m, n, 4096, True, 132) == want
    assert ws_config(65, 4096, 0) == WS_TILE  # SM count unknown
    # an H100 PCIe, 114 SMs: 64 tiles of 128 rows are more than half of them
    assert ws_config(128, 5120, 114) == WS_TILE_64 and ws_config(128, 8192, 114) == WS_TILE


def test_gemv_configs():
    """The register-fed kernel's configs: the rule and the tuned exceptions, the thread count, the -D options and
    the chunk-sum slots (warp 0's prefix + one per chunk after warp 0's range), and what it refuses."""
    import pytest

    from flexq_cli.int8_kernel import GEMV_TUNED, GemvConfig, gemv_config
    from flexq_cli.primitives import EPILOGUE_CHUNK_BLOCKS

    assert gemv_config(1, 4096, 4096) == GemvConfig(kw=8) and gemv_config(16, 4096, 8192) == GemvConfig(4, 2, 2)
    assert gemv_config(8, 22016, 4096) == GemvConfig(kw=2) and gemv_config(9, 14336, 4096) == GemvConfig(2, 1, 2)
    for (n, kp, mt), (kw, rt, ring) in GEMV_TUNED.items():
        assert gemv_config(8 * mt, n, kp) == GemvConfig(kw, rt, mt, ring=ring)
    cfg = GemvConfig(kw=8, rt=2, mt=2, depth=4)
    assert cfg.threads == 512 and cfg.kernel == "i8_gemv" and cfg.max_tokens == 16
    assert cfg.defines(6, True, True) == ("-DGV_KW=8", "-DGV_RT=2", "-DGV_MT=2", "-DGV_DEPTH=4", "-DGV_MINB=1",
                                          "-DGV_BF16=1", "-DGV_DEBUG_ACC=1", f"-DGV_CHUNK={EPILOGUE_CHUNK_BLOCKS}",
                                          "-DGV_RING=0", "-DGV_RING_ROW=112")
    assert "-DGV_MINB=8" in GemvConfig(kw=2, occupancy=16).defines(8, False)  # 8 CTAs of 2 warps: 128 registers
    assert EPILOGUE_CHUNK_BLOCKS == 2  # the slot counts below
    assert GemvConfig(kw=8).smem_bytes(32) == (16 - 2 + 1) * 16 * 8 * 4  # 16 chunks, warp 0 takes 2
    assert GemvConfig(kw=4, rt=2, mt=2).smem_bytes(33) == (17 - 5 + 1) * 32 * 16 * 4  # 17 chunks, warp 0 takes 5
    assert GemvConfig(kw=1).smem_bytes(224) == 16 * 8 * 4  # one warp per row tile: slot 0 only
    ring = GemvConfig(kw=8, ring=4)  # 8 warps x 4 stages x 16 rows x 112 bytes, before the slots
    assert ring.ring_bytes == 8 * 4 * 1792 and ring.smem_bytes(32) == 8 * 4 * 1792 + (16 - 2 + 1) * 16 * 8 * 4
    assert ring.smem_bytes(32, debug=True) == 8 * 4 * 1792 and GemvConfig(kw=8).smem_bytes(32, debug=True) == 0
    assert "-DGV_RING=4" in ring.defines(8, False)
    for bad in (dict(kw=0), dict(kw=17), dict(rt=5), dict(kw=8, rt=4), dict(mt=3), dict(depth=3), dict(depth=6),
                dict(kw=8, occupancy=12), dict(kw=1, occupancy=72), dict(ring=3), dict(ring=10),
                dict(ring=2, depth=4)):
        with pytest.raises(ValueError, match="unsupported int8 gemv config"):
            GemvConfig(**bad)


def test_int8_wgmma_configs():
    """The Hopper mainloop's configs: warpgroups of 64 tokens x 128 rows only; its own thread count, kernel, arch
    and shared memory (two 16 KB swizzled tiles + scales, then 31 KB stages, 1024-aligned: 227 KB fit 6)."""
    import pytest

    from flexq_cli.int8_kernel import WGMMA_TILE, Int8Config

    assert (WGMMA_TILE.threads, WGMMA_TILE.kernel) == (256, "i8_gemm_wgmma")
    assert "-arch=sm_90a" in WGMMA_TILE.defines(8, False) and "-DI8_WGMMA=1" in WGMMA_TILE.defines(8, False)
    assert not any(d.startswith("-arch") for d in Int8Config().defines(8, False))
    assert WGMMA_TILE.smem_bytes() == 1024 + 33 * 1024 + 4 * 31 * 1024
    assert Int8Config(bm=128, bn=128, wm=2, wn=1, stages=6, wgmma=True).smem_bytes() <= 227 * 1024
    for bad in (dict(bm=128, bn=64, wm=2, wn=1), dict(bm=128, bn=128, wm=1, wn=1), dict(bm=192, bn=128, wm=3, wn=1),
                dict(bm=128, bn=128, wm=2, wn=2), dict(bm=128, bn=128, wm=2, wn=1, stages=2)):
        with pytest.raises(ValueError, match="unsupported int8 tile config"):
            Int8Config(**bad, wgmma=True)


def test_int8_ws_config():
    """The warp-specialized kernel's config: three warpgroups (the copy warps', two consumers), its kernel and arch,
    and shared memory matching the .cu's plan (6 stages of 28 KB: activation tile, records; 12 slots of both
    scales, 1 KB each; the consumer warps' 32 KB of outputs; two mbarriers per stage; the alignment slack) within the
    227 KB a CTA may have, so 6 stages at most; anything else is refused."""
    from flexq_cli.int8_kernel import SMEM_LIMIT, WS_TILE, WS_TILE_64, Int8Config

    assert (WS_TILE.threads, WS_TILE.kernel, WS_TILE.stages) == (384, "i8_gemm_ws", 6)
    assert "-DI8_WGMMA=2" in WS_TILE.defines(8, False) and "-arch=sm_90a" in WS_TILE.defines(8, False)
    assert WS_TILE.smem_bytes() == 1024 + 6 * 28 * 1024 + 12 * 1024 + 32 * 1024 + 12 * 8 <= SMEM_LIMIT
    assert f"-DI8_WS_SMEM={WS_TILE.smem_bytes()}" in WS_TILE.defines(8, False)  # the .cu static_asserts its plan
    ws = dict(bm=128, bn=128, wm=2, wn=1, stages=6, wgmma=True, ws=True)
    assert Int8Config(**{**ws, "stages": 3}).smem_bytes() == 1024 + 3 * 28 * 1024 + 6 * 1024 + 32 * 1024 + 6 * 8
    assert 1024 + 7 * 28 * 1024 + 14 * 1024 + 32 * 1024 + 14 * 8 > SMEM_LIMIT  # so 7 stages are refused
    for bad in (dict(stages=2), dict(stages=7), dict(bm=64, wm=1), dict(wgmma=False), dict(bn=64), dict(wm=1)):
        with pytest.raises(ValueError, match="unsupported int8 tile config"):
            Int8Config(**{**ws, **bad})
    # 64-row tiles: one consumer warpgroup; stages of 22 KB (records of 64 rows), slots of 768 B, 16 KB of outputs
    assert (WS_TILE_64.threads, WS_TILE_64.kernel, WS_TILE_64.bn) == (256, "i8_gemm_ws", 64)
    assert WS_TILE_64.smem_bytes() == 1024 + 6 * 22 * 1024 + 12 * 768 + 16 * 1024 + 12 * 8 <= SMEM_LIMIT
    assert "-DI8_BN=64" in WS_TILE_64.defines(8, False) and "-DI8_WM=1" in WS_TILE_64.defines(8, False)


@pytest.mark.parametrize("pairs", [1, 32, 512, 4096])
@pytest.mark.parametrize("keys", [1, 17, 384, 40000])
def test_decode_attention_split_covers_the_keys(pairs, keys):
    """attn_kernel.split: every key in exactly one CTA's chunk, chunks within the kernel's shared-memory bound, and
    more CTAs per (sequence, head) only while the pairs alone leave SMs idle."""
    from flexq_cli import attn_kernel

    s, chunk = attn_kernel.split(pairs, keys)
    assert s >= 1 and 1 <= chunk <= attn_kernel.MAX_CHUNK
    assert (s - 1) * chunk < keys <= s * chunk
    if pairs >= attn_kernel.TARGET_CTAS and keys <= attn_kernel.MAX_CHUNK:
        assert s == 1 and attn_kernel.faster_alone(pairs)
    if s > 1 and chunk < attn_kernel.MAX_CHUNK:
        assert pairs * (s - 1) < attn_kernel.TARGET_CTAS


def test_decode_attention_buffers_grow_without_freeing_the_old_ones(monkeypatch):
    """A graph captured with the smaller buffers still writes into them when replayed: growing keeps them alive."""
    import torch

    from flexq_cli import attn_kernel

    monkeypatch.setattr(attn_kernel, "_workspace", {})
    monkeypatch.setattr(attn_kernel, "_retired", [])
    cpu = torch.device("cpu")
    first = attn_kernel._buffers(cpu, 100, 4)
    assert attn_kernel._buffers(cpu, 50, 2) is first  # large enough: reused
    second = attn_kernel._buffers(cpu, 300, 4)
    assert second[0].numel() == 300 and second[1].numel() == 4 and not second[1].any()
    assert len(attn_kernel._retired) == 1 and attn_kernel._retired[0] is first


def test_check_packed_names_the_other_layout(monkeypatch):
    """A pack in the layout the kernel does not read gets that layout's error (made only then: int8_linear calls this
    per layer); a pack of the right shapes passes; other shapes get the shape error."""
    import torch

    from flexq_cli import btc, cuda_launch
    from flexq_cli.int8_kernel import quant_layout

    monkeypatch.setattr(cuda_launch, "check_tensor", lambda *args: None)  # CPU tensors stand in for CUDA ones

    def never() -> str:
        raise AssertionError("the other layout's error was made without a pack in that layout")

    def pack(shapes):
        return torch.zeros(shapes[0], dtype=torch.int8), torch.zeros(shapes[1])

    tiled, rows = quant_layout(300, 5, True), quant_layout(300, 5)
    btc.check_packed(pack(tiled), tiled, torch.int8, None, 128, (rows, never))
    with pytest.raises(ValueError, match="reads the tiled activation layout"):
        btc.check_packed(pack(rows), tiled, torch.int8, None, 128, (rows, lambda: "reads the tiled activation layout"))
    with pytest.raises(ValueError, match="packed activations must be"):
        btc.check_packed(pack(quant_layout(299, 5)), tiled, torch.int8, None, 128, (rows, never))
