"""The rotary + static-cache kernel (kernels/rope.cu) against transformers' apply_rotary_pos_emb and the cache's
index_copy_, bit for bit, and the attention block that uses it (modules.KernelAttention) against transformers'
own forward."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
pytest.importorskip("cupy", reason="CuPy is not installed: pip install 'flexq[cuda]'")

from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # noqa: E402

from flexq_cli.rope_kernel import rope_cache_cuda  # noqa: E402

DEV = torch.device("cuda")


def _tables(b, t, d, dtype, g, base=10000.0):
    """cos, sin (B, T, D) as LlamaRotaryEmbedding makes them, for random positions up to 4096."""
    pos = torch.randint(0, 4096, (b, t), generator=g, device=DEV)
    inv = 1.0 / base ** (torch.arange(0, d, 2, device=DEV, dtype=torch.float32) / d)
    emb = torch.cat(((pos[..., None].float() * inv),) * 2, dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _reference(qkv, cos, sin, slots, keys, values, heads, kv_heads):
    b, t, _ = qkv.shape
    d = cos.shape[-1]
    q, k, v = qkv.split([heads * d, kv_heads * d, kv_heads * d], dim=-1)
    q, k, v = (x.view(b, t, -1, d).transpose(1, 2) for x in (q, k, v))
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    keys.index_copy_(2, slots, k)
    values.index_copy_(2, slots, v)
    return q


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,d", [(32, 32, 128), (32, 8, 128), (9, 3, 64), (4, 2, 16)])
def test_rope_cache_equals_transformers(heads, kv_heads, d, dtype):
    g = torch.Generator(device=DEV).manual_seed(heads * d)
    for b, t, length in [(1, 1, 9), (3, 1, 40), (2, 7, 16), (1, 33, 33)]:
        width = (heads + 2 * kv_heads) * d
        qkv = (torch.randn(b, t, width, generator=g, device=DEV) * 30).to(dtype)
        qkv[0, 0, :d] = 0  # zeros and a head of huge values
        qkv[-1, -1, -d:] = 6e4 if dtype == torch.float16 else 1e30
        cos, sin = _tables(b, t, d, dtype, g)
        slots = torch.randperm(length, generator=g, device=DEV)[:t]
        keys = torch.randn(b, kv_heads, length, d, generator=g, device=DEV).to(dtype)  # stale entries stay
        values = torch.randn(b, kv_heads, length, d, generator=g, device=DEV).to(dtype)
        ref_k, ref_v = keys.clone(), values.clone()
        ref_q = _reference(qkv, cos, sin, slots, ref_k, ref_v, heads, kv_heads)
        q = rope_cache_cuda(qkv, cos, sin, slots, keys, values, heads=heads, kv_heads=kv_heads)
        assert q.shape == (b, t, heads, d)
        assert torch.equal(q.transpose(1, 2).contiguous().view(torch.int16), ref_q.contiguous().view(torch.int16))
        assert torch.equal(keys.view(torch.int16), ref_k.view(torch.int16)), (b, t)
        assert torch.equal(values.view(torch.int16), ref_v.view(torch.int16)), (b, t)


def test_rope_cache_rejects_bad_arguments():
    b, t, heads, kv, d, length = 2, 3, 4, 2, 16, 8
    qkv = torch.zeros(b, t, (heads + 2 * kv) * d, dtype=torch.float16, device=DEV)
    cos = sin = torch.zeros(b, t, d, dtype=torch.float16, device=DEV)
    slots = torch.arange(t, device=DEV)
    cache = torch.zeros(b, kv, length, d, dtype=torch.float16, device=DEV)
    ok = {"qkv": qkv, "cos": cos, "sin": sin, "slots": slots, "keys": cache, "values": cache.clone()}
    bad = [({"qkv": qkv[..., :-1].contiguous()}, "not \\(heads 4 \\+ 2 x kv_heads 2\\)"),
           ({"cos": cos[:, :2].contiguous()}, "cos must have shape"),
           ({"sin": sin.float()}, "sin must have dtype"),
           ({"slots": slots.int()}, "slots must have dtype"),
           ({"slots": slots[:2]}, "slots must have shape"),
           ({"keys": cache[:1]}, "keys must have shape"),
           ({"values": cache[..., :4, :].contiguous()}, "must have one shape"),
           ({"qkv": qkv.cpu()}, "qkv must be on")]
    for change, message in bad:  # (slices made contiguous: the contiguity check would come first)
        with pytest.raises(ValueError, match=message):
            rope_cache_cuda(**{**ok, **change}, heads=heads, kv_heads=kv)


@pytest.mark.parametrize("quantized", [False, True])
def test_kernel_attention_equals_transformers_forward(quantized):
    """Prefill of 7 tokens, then one decode step, through transformers' attention and through KernelAttention with
    transformers' attention function (the decode kernel is tests/test_attention_gpu.py's), each writing its own
    static cache: the same output bits and the same cache contents."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from flexq_cli.arch import spec_for_config
    from flexq_cli.config import load_preset
    from flexq_cli.fusion import fuse_shared_inputs
    from flexq_cli.generate import StaticKV
    from flexq_cli.modules import KernelAttention
    from flexq_cli.quantize import quantize_model

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, architectures=["LlamaForCausalLM"])
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).half().eval()
    if quantized:
        quantize_model(model, spec_for_config(config), load_preset("w6a8"), torch.float16)
    fuse_shared_inputs(model, spec_for_config(config), decode_attention=False)
    fused = model.model.layers[0].self_attn
    assert isinstance(fused, KernelAttention)
    hf = fused.attn[0]
    rotary = model.model.rotary_emb
    caches = [StaticKV(config, 2, 12, torch.float16, DEV) for _ in range(2)]
    for t0, t in [(0, 7), (7, 1)]:
        x = torch.randn(2, t, 256, device=DEV).half()
        pos = torch.arange(t0, t0 + t, device=DEV).expand(2, t)
        mask = torch.ones(2, 1, t, 12, dtype=torch.bool, device=DEV).tril(t0)
        outs = []
        for module, cache in zip((hf, fused), caches):
            cache.positions = torch.arange(t0, t0 + t, device=DEV)
            with torch.no_grad():
                outs.append(module(hidden_states=x, position_embeddings=rotary(x, pos), attention_mask=mask,
                                   past_key_values=cache)[0])
        assert torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16)), t
        assert torch.equal(caches[0].keys[0], caches[1].keys[0]) and torch.equal(caches[0].values[0],
                                                                                   caches[1].values[0])
