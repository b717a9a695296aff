"""The RMSNorm the one-kernel norm computes (primitives.rms_norm) and how fusion installs it (CPU side; the kernel
itself is checked bit for bit against rms_norm in test_norm_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from flexq_cli.primitives import rms_norm


def _tree_sum(values: list[float]) -> torch.Tensor:
    """The documented order, one float32 add at a time: pad to a power of two, then neighbours, pairs of pairs..."""
    v = [torch.tensor(x, dtype=torch.float32) for x in values]
    width = 1
    while width < len(v):
        width *= 2
    v += [torch.tensor(0.0)] * (width - len(v))
    while len(v) > 1:
        v = [v[i] + v[i + 1] for i in range(0, len(v), 2)]
    return v[0]


@pytest.mark.parametrize("h", [1, 5, 8, 13, 64])
def test_rms_norm_sums_squares_in_the_documented_tree(h):
    torch.manual_seed(h)
    x = (torch.randn(3, h) * 3).half()
    w = (torch.rand(h) + 0.5).half()
    y = rms_norm(x, w, 1e-5)
    for r in range(3):
        xf = x[r].float()
        ss = _tree_sum([(a * a).item() for a in xf])
        var = ss / torch.tensor(float(h))
        inv = torch.tensor(1.0) / torch.sqrt(var + torch.tensor(1e-5, dtype=torch.float32))
        expect = w * (xf * inv).half()
        assert torch.equal(y[r], expect)


def test_rms_norm_is_hf_rmsnorm_within_rounding():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(576, eps=1e-5).half()
    norm.weight.data = (torch.rand(576) + 0.5).half()
    x = (torch.randn(7, 576) * 4).half()
    with torch.no_grad():
        hf, ours = norm(x).float(), rms_norm(x, norm.weight, 1e-5).float()
    # fp16 outputs: at most one rounding step of the last product apart
    assert torch.allclose(hf, ours, rtol=2e-3, atol=1e-3)
    assert (hf != ours).float().mean() < 0.05


def test_kernel_norm_keeps_hf_numerics_on_the_cpu():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from flexq_cli.modules import KernelRMSNorm

    norm = LlamaRMSNorm(256, eps=1e-6)
    norm.weight.data = torch.rand(256) + 0.5
    for dtype in (torch.float16, torch.float32):
        n = LlamaRMSNorm(256, eps=1e-6).to(dtype)
        n.weight.data = norm.weight.data.to(dtype)
        x = torch.randn(2, 5, 256).to(dtype)
        with torch.no_grad():
            assert torch.equal(KernelRMSNorm(n)(x), n(x))


def test_fusion_installs_norm_kernels_wired_to_the_fused_gemm(tiny_llama, tmp_path):
    from flexq_cli.arch import spec_for_config
    from flexq_cli.fusion import fuse_shared_inputs
    from flexq_cli.modules import KernelAttention, KernelGatedMLP, KernelRMSNorm, set_backend
    from flexq_cli.quantize import load_quantized, quantize

    quantize(str(tiny_llama), tmp_path / "q", preset="w6a8")
    model, _, _ = load_quantized(tmp_path / "q")
    ids = torch.randint(0, 1000, (2, 16))
    with torch.no_grad():
        before = model(ids).logits
        fuse_shared_inputs(model, spec_for_config(model.config))
        after = model(ids).logits
    # the CPU keeps HF's norm formula (bit for bit: test above); the fused q/k/v views may round attention
    # differently in float32 (test_generate.py::test_fused_qkv_and_gate_up_give_the_same_bits)
    assert torch.allclose(before, after, rtol=0, atol=1e-6)
    norms = [m for m in model.modules() if isinstance(m, KernelRMSNorm)]
    assert len(norms) == 2 * len(model.model.layers) + 1
    layer = model.model.layers[0]
    assert layer.input_layernorm.consumer == [layer.fused_self_attn_q_proj]
    assert layer.post_attention_layernorm.consumer == [layer.fused_mlp_gate_proj]
    assert model.model.norm.consumer == []
    assert isinstance(layer.mlp, KernelGatedMLP) and layer.mlp.gate_up == [layer.fused_mlp_gate_proj]
    assert isinstance(layer.self_attn, KernelAttention) and layer.self_attn.qkv == [layer.fused_self_attn_q_proj]
    set_backend(model, "reference")
    assert all(m.backend == "reference" for m in norms) and layer.mlp.backend == "reference"
    assert layer.self_attn.backend == "reference"


def test_fusion_can_leave_the_norms(tiny_llama, tmp_path):
    from flexq_cli.arch import spec_for_config
    from flexq_cli.fusion import fuse_shared_inputs
    from flexq_cli.modules import KernelAttention, KernelGatedMLP, KernelRMSNorm
    from flexq_cli.quantize import load_quantized, quantize

    quantize(str(tiny_llama), tmp_path / "q", preset="w6a8")
    model, _, _ = load_quantized(tmp_path / "q")
    fuse_shared_inputs(model, spec_for_config(model.config), pack_kernels=False)
    assert not any(isinstance(m, (KernelRMSNorm, KernelGatedMLP, KernelAttention)) for m in model.modules())


def test_kernel_attention_is_transformers_attention_on_the_cpu(tiny_llama, tmp_path):
    """On the CPU (and with any cache but generation's static one) KernelAttention runs transformers' forward:
    the fused model decodes through generation's static cache exactly as before the attention was replaced."""
    from flexq_cli.arch import spec_for_config
    from flexq_cli.fusion import fuse_shared_inputs
    from flexq_cli.generate import SamplingConfig, generate_tokens
    from flexq_cli.modules import KernelAttention
    from flexq_cli.quantize import load_quantized, quantize

    quantize(str(tiny_llama), tmp_path / "q", preset="w6a8")
    runs = []
    for attention_kernel in (False, True):
        model, _, _ = load_quantized(tmp_path / "q")
        fuse_shared_inputs(model, spec_for_config(model.config))
        if not attention_kernel:
            for layer in model.model.layers:
                layer.self_attn = layer.self_attn.attn[0]
        assert isinstance(model.model.layers[0].self_attn, KernelAttention) == attention_kernel
        runs.append(generate_tokens(model, [[1, 2, 3, 4], [5, 6]], SamplingConfig(max_new_tokens=8,
                                                                                stop_at_eos=False))["tokens"])
    assert runs[0] == runs[1]


def test_residual_adds_move_into_the_norms_with_the_same_bits(tiny_llama, tmp_path):
    """fuse_residual_adds gives each decoder layer a forward whose adds run in the norms (on CUDA in their launch,
    tests/test_norm_gpu.py); on the CPU the same ops as transformers' forward, so the same logits bit for bit, and
    a norm keeps a result ahead only where its kernel runs."""
    from flexq_cli.arch import spec_for_config
    from flexq_cli.fusion import fuse_residual_adds, fuse_shared_inputs
    from flexq_cli.modules import KernelRMSNorm
    from flexq_cli.quantize import load_quantized, quantize

    quantize(str(tiny_llama), tmp_path / "q", preset="w6a8")
    model, _, _ = load_quantized(tmp_path / "q")
    spec = spec_for_config(model.config)
    fuse_shared_inputs(model, spec)
    layers = model.model.layers
    assert all("forward" in vars(layer) for layer in layers)  # fuse_shared_inputs calls fuse_residual_adds
    assert layers[0].forward.args == (layers[0], layers[1].input_layernorm)
    assert layers[-1].forward.args == (layers[-1], model.model.norm)
    ids = torch.randint(0, 1000, (2, 16))
    with torch.no_grad():
        fused = model(ids).logits
        for layer in layers:
            del layer.forward  # transformers' own forward again
        assert fuse_residual_adds(model, spec) == len(layers)
        for layer in layers:
            del layer.forward
        plain = model(ids).logits
    assert torch.equal(fused, plain)
    norm = model.model.norm
    x, r = torch.randn(2, 3, model.config.hidden_size), torch.randn(2, 3, model.config.hidden_size)
    assert torch.equal(norm.add_ahead(x, r), r + x) and norm.ahead is None
    s, y = layers[0].post_attention_layernorm.add(x, r)
    assert torch.equal(s, r + x) and torch.equal(y, layers[0].post_attention_layernorm(r + x))
    # a layer whose norms are not all kernel norms keeps transformers' forward
    layers[1].input_layernorm = torch.nn.Identity()
    assert fuse_residual_adds(model, spec) == len(layers) - 2  # layer 0 (its next norm) and layer 1 (its own)
    assert isinstance(model.model.norm, KernelRMSNorm) and "forward" not in vars(layers[1])
