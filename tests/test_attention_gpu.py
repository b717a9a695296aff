"""The decode attention kernel (kernels/attention.cu, attn_kernel.py): against a float64 softmax(q k^T s + mask) v
within a stated tolerance, its fused o_proj quantize against int8_kernel.quantize_activations bit for bit, the split
combine's counters, graph capture, errors, and KernelAttention's decode step against transformers' attention."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
pytest.importorskip("cupy", reason="CuPy is not installed: pip install 'flexq[cuda]'")

from flexq_cli import attn_kernel, int8_kernel  # noqa: E402
from flexq_cli.attn_kernel import decode_attention_cuda  # noqa: E402

DEV = torch.device("cuda")
# |kernel - float64 reference| <= ATOL + RTOL * |reference|: the kernel sums in float32 and rounds once to 16 bits
TOL = {torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def _case(b, h, hkv, d, n, dtype, g, room=37, masked=True):
    """q (B, H, 1, D); keys, values: views of the first n positions of (B, Hkv, n + room, D) caches; an additive
    mask hiding a different left-padding prefix per sequence (never the last key)."""
    q = torch.randn((b, h, 1, d), generator=g, device=DEV).to(dtype)
    cache = [torch.randn((b, hkv, n + room, d), generator=g, device=DEV).to(dtype) for _ in range(2)]
    keys, values = (c[:, :, :n] for c in cache)
    mask = None
    if masked:
        full = torch.zeros((b, 1, 1, n + room), dtype=dtype, device=DEV)
        for i in range(b):
            full[i, ..., : min(n - 1, 5 * i)] = float("-inf")
        mask = full[..., :n]
    return q, keys, values, mask


def _reference(q, keys, values, mask, scale):
    rep = q.shape[1] // keys.shape[1]
    k, v = (t.double().repeat_interleave(rep, dim=1) for t in (keys, values))
    s = (q.double() @ k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s + mask.double()
    return (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(q.shape[0], 1, -1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,h,hkv,d,n", [(1, 32, 32, 128, 1), (1, 32, 32, 128, 17), (1, 32, 32, 128, 384),
                                         (16, 32, 32, 128, 200), (2, 9, 3, 64, 77), (3, 8, 2, 128, 600),
                                         (1, 4, 4, 128, 1300), (5, 4, 1, 64, 33)])
def test_matches_float64_attention(b, h, hkv, d, n, dtype):
    g = torch.Generator(device=DEV).manual_seed(b * 1000 + n)
    for masked in (True, False):
        q, keys, values, mask = _case(b, h, hkv, d, n, dtype, g, masked=masked)
        out, packed = decode_attention_cuda(q, keys, values, mask, d ** -0.5)
        assert packed is None and out.shape == (b, 1, h * d) and out.dtype == dtype
        ref = _reference(q, keys, values, mask, d ** -0.5)
        atol, rtol = TOL[dtype]
        assert ((out.double() - ref).abs() <= atol + rtol * ref.abs()).all(), (masked, (out.double() - ref).abs().max())


@pytest.mark.parametrize("bits", [6, 8])
@pytest.mark.parametrize("b,n", [(1, 300), (4, 129), (16, 64)])
def test_fused_quantize_equals_the_quantize_kernel(b, n, bits):
    g = torch.Generator(device=DEV).manual_seed(n)
    q, keys, values, mask = _case(b, 32, 8, 128, n, torch.float16, g)
    out, (codes, scales) = decode_attention_cuda(q, keys, values, mask, 128 ** -0.5, quant_bits=bits)
    ref_codes, ref_scales = int8_kernel.quantize_activations(out.view(b, -1), 32, bits, 128)
    assert torch.equal(codes, ref_codes) and torch.equal(scales, ref_scales)
    plain, _ = decode_attention_cuda(q, keys, values, mask, 128 ** -0.5)
    assert torch.equal(out, plain)


def test_split_counters_are_reset_and_runs_repeat_bit_for_bit():
    g = torch.Generator(device=DEV).manual_seed(3)
    q, keys, values, mask = _case(1, 4, 4, 128, 1300, torch.float16, g)
    s, chunk = attn_kernel.split(4, 1300)
    assert s > 1 and chunk <= attn_kernel.MAX_CHUNK
    first, _ = decode_attention_cuda(q, keys, values, mask, 0.1)
    torch.cuda.synchronize()
    assert not attn_kernel._workspace[torch.cuda.current_device()][1].any()
    for _ in range(3):
        again, _ = decode_attention_cuda(q, keys, values, mask, 0.1)
        assert torch.equal(first, again)


def test_graph_replay_equals_eager():
    g = torch.Generator(device=DEV).manual_seed(5)
    q, keys, values, mask = _case(2, 32, 32, 128, 150, torch.float16, g)
    eager, packed = decode_attention_cuda(q, keys, values, mask, 0.09, quant_bits=8)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        decode_attention_cuda(q, keys, values, mask, 0.09, quant_bits=8)  # warm-up on the capturing stream
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            out, (codes, scales) = decode_attention_cuda(q, keys, values, mask, 0.09, quant_bits=8)
    torch.cuda.current_stream().wait_stream(stream)
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager) and torch.equal(codes, packed[0]) and torch.equal(scales, packed[1])


def test_graph_keeps_its_buffers_when_a_longer_view_grows_them():
    """A graph captured on small split buffers must still replay correctly after a longer view (more keys, more CTAs
    per pair) replaced them with larger ones: the old buffers stay allocated (attn_kernel._retired) and its writes
    land there, not in freed memory. (Generation warms up at its longest view before it captures, so its own graphs
    share the largest buffers; an earlier decoder's graphs, still alive, can meet the replacement.)"""
    g = torch.Generator(device=DEV).manual_seed(11)
    old = attn_kernel._workspace.pop(torch.cuda.current_device(), None)  # start from buffers for the short view
    if old is not None:
        attn_kernel._retired.append(old)
    short = _case(1, 4, 4, 128, 40, torch.float16, g)
    long = _case(1, 4, 4, 128, 1300, torch.float16, g)
    assert attn_kernel.split(4, 40)[0] < attn_kernel.split(4, 1300)[0]
    eager, _ = decode_attention_cuda(*short, 0.1)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        decode_attention_cuda(*short, 0.1)  # warm-up on the capturing stream
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            out, _ = decode_attention_cuda(*short, 0.1)
    torch.cuda.current_stream().wait_stream(stream)
    small = attn_kernel._workspace[torch.cuda.current_device()]
    long_out, _ = decode_attention_cuda(*long, 0.1)  # grows the buffers
    assert attn_kernel._workspace[torch.cuda.current_device()][0].numel() > small[0].numel()
    assert any(r[0] is small[0] for r in attn_kernel._retired)
    filler = torch.full((1 << 24,), 7.0, device=DEV)  # allocations that would take freed memory
    for _ in range(2):
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager)
    again, _ = decode_attention_cuda(*long, 0.1)
    assert torch.equal(again, long_out) and (filler == 7.0).all()


def test_rejects_bad_arguments():
    g = torch.Generator(device=DEV).manual_seed(0)
    q, keys, values, mask = _case(2, 8, 4, 128, 40, torch.float16, g)
    with pytest.raises(ValueError, match="q must be"):
        decode_attention_cuda(q.expand(2, 8, 2, 128).contiguous(), keys, values, mask, 1.0)
    with pytest.raises(ValueError, match="keys must be"):
        decode_attention_cuda(q, keys.transpose(2, 3), values, mask, 1.0)
    with pytest.raises(ValueError, match="not a multiple"):
        decode_attention_cuda(q[:, :7].contiguous(), keys, values, mask, 1.0)
    with pytest.raises(ValueError, match="mask must be"):
        decode_attention_cuda(q, keys, values, mask[..., :-1], 1.0)
    with pytest.raises(ValueError, match="mask must be an additive"):
        decode_attention_cuda(q, keys, values, mask == 0, 1.0)
    with pytest.raises(ValueError, match="fused quantize"):
        decode_attention_cuda(q, keys, values, mask, 1.0, quant_bits=4)
    with pytest.raises(ValueError, match="q must be"):
        decode_attention_cuda(torch.zeros((1, 8, 1, 96), dtype=torch.float16, device=DEV), keys, values, None, 1.0)


@pytest.mark.parametrize("quantized", [None, "w6a8"])
def test_decode_step_tracks_transformers_attention(quantized, monkeypatch):
    """A left-padded batch decoded (the same tokens fed) through KernelAttention with the decode kernel and with
    transformers' attention function: logits within the stated bound, and in the quantized model o_proj takes the
    kernel's pack (so its output is what o_proj gives on the kernel's attention output alone)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from flexq_cli.arch import spec_for_config
    from flexq_cli.config import load_preset
    from flexq_cli.fusion import fuse_shared_inputs
    from flexq_cli.generate import Decoder, left_pad
    from flexq_cli.modules import KernelAttention, QuantLinear
    from flexq_cli.quantize import quantize_model

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=640, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)  # D = 128
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).half().eval()
    if quantized:
        quantize_model(model, spec_for_config(config), load_preset(quantized), torch.float16)
    fuse_shared_inputs(model, spec_for_config(model.config))
    ids, pad = left_pad([[1, 2, 3, 4, 5, 6, 7], [9, 8, 7]], 0, "cuda")
    handed = []
    if quantized:
        o_proj = model.model.layers[0].self_attn.o_proj
        assert isinstance(o_proj, QuantLinear)
        real = QuantLinear.forward

        def spy(self, x):
            if self is o_proj and self.handed_over is not None:
                handed.append(self.handed_over[0] is x)
            return real(self, x)

        monkeypatch.setattr(QuantLinear, "forward", spy)
    runs = []
    monkeypatch.setattr(attn_kernel, "faster_alone", lambda pairs: True)  # the FP16 model too, at 2 sequences
    for kernel in (True, False):
        for m in model.modules():
            if isinstance(m, KernelAttention):
                m.decode_kernel = kernel
        dec = Decoder(model, 2, 16, use_graph=False)
        logits = [dec.prefill(ids, pad)]
        for i in range(5):  # the same tokens for both (a near tie could pick different ones)
            logits.append(dec.step(torch.tensor([11 + i, 23 + 2 * i], device="cuda")).clone())
        runs.append(torch.stack(logits))
    assert torch.equal(runs[0][0], runs[1][0])  # the prefill does not use the decode kernel
    # FP16: the attention's own rounding; W6A8: o_proj's 8-bit activation codes turn last-bit differences of the
    # attention output into whole code steps (1/127 of a group's max), so the logits move more
    rel = ((runs[0] - runs[1]).norm() / runs[1].norm()).item()
    assert rel < (5e-2 if quantized else 2e-3), rel
    if quantized:
        assert handed and all(handed)
