"""Every CUDA source in kernels/ compiles for sm_90 with nvcc (skipped where nvcc is not on PATH; CI has it).

The same files are compiled at run time by NVRTC through CuPy (as resources.kernel_source gives them, shared
headers pasted in), so they must not include host-only headers. Each BTC and INT8 variant the wrappers can
request (6/8-bit activations, fp16/bf16, debug accumulators, tile configs) is built, and must not spill or warn.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from flexq_cli.btc import TileConfig
from flexq_cli.int8_kernel import WGMMA_TILE, WS_TILE, WS_TILE_64, GemvConfig, Int8Config, default_config
from flexq_cli.resources import kernel_source, kernels_dir

NVCC = shutil.which("nvcc")
SOURCES = sorted(kernels_dir().glob("*.cu"))
VARIANTS = [(a, bf16, dbg) for a in (6, 8) for bf16 in (False, True) for dbg in (False, True)]


def _nvcc(src, *defines):
    arch = [] if any(d.startswith("-arch=") for d in defines) else ["-arch=sm_90"]  # wgmma configs name sm_90a
    cmd = [NVCC, "-std=c++17", *arch, "-cubin", "-Xptxas", "-v", "-o", "/dev/null", *defines, str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"
    assert "warning" not in res.stderr.lower(), f"{' '.join(cmd)}\n{res.stderr}"  # debug builds included
    return res.stderr


def _assert_no_spills(log: str) -> None:
    assert all(" 0 bytes spill" in line for line in log.splitlines() if "spill" in line), log


def _pasted(tmp_path, name: str):
    """The source as NVRTC gets it (kernel_source: shared headers pasted in), written where nvcc can read it."""
    src = tmp_path / name
    src.write_text(kernel_source(name))
    return src


def test_sources_exist():
    assert any(p.name == "btc_gemm.cu" for p in SOURCES)


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_compiles_default(src):
    _nvcc(src)


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("act_bits,bf16,debug", VARIANTS)
def test_btc_variants_compile(act_bits, bf16, debug):
    for cfg in (TileConfig(warps=8, kb=1, stages=3, mt=16), TileConfig(warps=4, kb=4, stages=3, mt=8, pct=2),
                TileConfig(warps=8, kb=4, stages=2, mt=8, pct=1, fuse=True)):
        log = _nvcc(kernels_dir() / "btc_gemm.cu", *cfg.defines(act_bits, bf16, debug))
        _assert_no_spills(log)


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("act_bits,bf16,debug", VARIANTS)
def test_int8_variants_compile_without_spills(act_bits, bf16, debug, tmp_path):
    """As NVRTC gets it: one string with common.cuh pasted in (no include path)."""
    src = _pasted(tmp_path, "w6_int8_gemm.cu")
    assert not [line for line in src.read_text().splitlines() if line.startswith("#include")]
    tiles = {default_config(m, n, 4096) for m in (17, 32, 64, 128) for n in (4096, 12288, 28672)}  # every default tile
    assert len(tiles) == 5
    for cfg in tiles:
        log = _nvcc(src, *cfg.defines(act_bits, bf16, debug))
        assert " 0 bytes spill stores" in log and "spill stores" in log, log
        _assert_no_spills(log)


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("bf16,debug", [(False, False), (True, False), (False, True)])
def test_int8_gemv_variants_compile_without_spills(bf16, debug, tmp_path):
    """The register-fed decode kernel: every config default_config picks, a deeper pipeline and the ring."""
    src = _pasted(tmp_path, "w6_int8_gemv.cu")
    cfgs = {default_config(m, n, k) for m in (1, 16) for n in (4096, 8192, 28672) for k in (4096, 8192)}
    assert len(cfgs) == 8 and any(c.ring for c in cfgs)
    for cfg in cfgs | {GemvConfig(kw=4, depth=4), GemvConfig(kw=8, ring=8), GemvConfig(kw=4, rt=2, mt=2, ring=4),
                       GemvConfig(kw=16, mt=2, ring=2)}:
        log = _nvcc(src, *cfg.defines(8, bf16, debug))
        assert "i8_gemv" in log, log
        _assert_no_spills(log)


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("act_bits,bf16,debug", VARIANTS)
def test_int8_wgmma_variants_compile_without_spills(act_bits, bf16, debug, tmp_path):
    """The Hopper mainloops, for sm_90a, one and two warpgroups and warp-specialized (whose setmaxnreg ptxas would
    ignore with a C75xx advisory): no spills, and ptxas keeps the wgmma asynchronous.
    When it cannot, it says so in a C75xx advisory (e.g. "(C7517) warpgroup.wait is injected ... to allow use of
    registers defined by GMMA", seen with nvcc 13.0 on a kernel that reads an accumulator in flight) or serializes
    the wgmma ("serialized")."""
    src = _pasted(tmp_path, "w6_int8_gemm.cu")
    for cfg in (WGMMA_TILE, Int8Config(bm=64, bn=128, wm=1, wn=1, stages=5, wgmma=True), WS_TILE, WS_TILE_64):
        defines = cfg.defines(act_bits, bf16, debug)
        assert "-arch=sm_90a" in defines
        log = _nvcc(src, *defines)
        assert cfg.kernel in log and "serializ" not in log.lower(), log
        assert "(C75" not in log, log
        _assert_no_spills(log)


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("act_bits,bf16", [(6, False), (8, True)])
def test_norm_variants_compile_without_spills(act_bits, bf16, tmp_path):
    from flexq_cli.norm_kernel import MAX_R, launch_shape

    src = _pasted(tmp_path, "rmsnorm.cu")
    for h, split in ((64, False), (576, False), (4096, False), (16384, False), (576, True), (4096, True), (8192, True)):
        threads, _ = launch_shape(h, split)
        log = _nvcc(src, f"-DNORM_BF16={int(bf16)}", f"-DNORM_ACT_BITS={act_bits}", f"-DNORM_THREADS={threads}",
                    f"-DNORM_MAX_R={MAX_R}")
        _assert_no_spills(log)


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("bf16", [False, True])
def test_rope_variants_compile_without_spills(bf16, tmp_path):
    from flexq_cli.rope_kernel import THREADS

    log = _nvcc(_pasted(tmp_path, "rope.cu"), f"-DROPE_BF16={int(bf16)}", f"-DROPE_THREADS={THREADS}")
    _assert_no_spills(log)


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
def test_decode_attention_variants_compile(tmp_path):
    from flexq_cli import attn_kernel

    src = _pasted(tmp_path, attn_kernel.KERNEL_FILE)
    for d in attn_kernel.HEAD_DIMS:
        for bf16 in (0, 1):
            for quant, qmax in ((0, 127), (1, 127), (1, 31)):
                if quant and d != 128:
                    continue
                log = _nvcc(src, f"-DAT_D={d}", f"-DAT_BF16={bf16}", f"-DAT_QUANT={quant}", f"-DAT_QMAX={qmax}",
                            f"-DAT_MAX_CHUNK={attn_kernel.MAX_CHUNK}")
                _assert_no_spills(log)


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
def test_stream_read_variants_compile_without_spills(tmp_path):
    from flexq_cli.kernel_bench import STREAM_LAUNCHES

    for unroll in sorted({u for u, _, _ in STREAM_LAUNCHES}):
        _assert_no_spills(_nvcc(_pasted(tmp_path, "stream_read.cu"), f"-DSR_UNROLL={unroll}"))
