"""The kernel bench on the GPU: the stream op (kernels/stream_read.cu) reads every word it is given, and the bench's
rows carry it. Skipped without a CUDA device and CuPy."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
pytest.importorskip("cupy", reason="CuPy is not installed: pip install 'flexq[cuda]'")

from flexq_cli import kernel_bench  # noqa: E402


@pytest.mark.parametrize("nbytes", [16 * 1009, 16 * 65521 + 7, 12_845_056])
def test_stream_ops_sum_every_word(nbytes):
    """Each launch's per-CTA sums add up to torch's sum of the words (random, so a skipped or twice-read word shows;
    the sizes leave partial unrolled strides and a tail). _stream_ops raises otherwise."""
    ops = kernel_bench._stream_ops(nbytes)
    assert len(ops) == len(kernel_bench.STREAM_LAUNCHES)


def test_bench_rows_carry_the_stream_bound():
    result = kernel_bench.run_kernel_bench([(256, 640)], [1, 3], repeats=2)
    launches = {r["config"] for r in result["rows"] if r["op"] == "stream"}
    assert len(launches) == 1  # the first M's fastest launch, kept for the shape's other Ms
    for m in (1, 3):
        rows = {r["op"]: r for r in result["rows"] if r["M"] == m}
        assert set(rows) == set(kernel_bench.OPS)
        stream = rows["stream"]
        assert stream["config"] in {f"{u}x{c}x{t}" for u, c, t in kernel_bench.STREAM_LAUNCHES}
        assert stream["speedup_vs_fp16"] == pytest.approx(rows["fp16"]["median_us"] / stream["median_us"], rel=1e-2)
        for op in ("W6A8/btc", "W6A8/int8", "W6A6/btc", "W6A6/int8"):
            assert rows[op]["of_stream"] == pytest.approx(stream["median_us"] / rows[op]["median_us"], rel=1e-2)
    assert "stream us" in kernel_bench.summary(result)
