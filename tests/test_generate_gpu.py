"""Generation on the GPU through the BTC kernel: CUDA-graph decoding gives the same tokens as eager decoding."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
pytest.importorskip("cupy", reason="CuPy is not installed: pip install 'flexq[cuda]'")

from flexq_cli.arch import spec_for_config  # noqa: E402
from flexq_cli.config import QuantConfig, load_preset  # noqa: E402
from flexq_cli.generate import SamplingConfig, generate_tokens  # noqa: E402
from flexq_cli.modules import set_backend  # noqa: E402
from flexq_cli.quantize import quantize_model  # noqa: E402


def tiny(quantized: str | None):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=640, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    config.architectures = ["LlamaForCausalLM"]
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).half().eval()
    if quantized:
        quant = ONLINE if quantized == "online" else load_preset(quantized)
        quantize_model(model, spec_for_config(config), quant, torch.float16)
    return model


# W6A6 round to nearest with down_proj's input rotated online (a matmul before the kernel, inside the graph too)
ONLINE = QuantConfig(act_bits=6, online_rotate=("re:.*\\.down_proj",))


@pytest.mark.parametrize("quantized", [None, "w6a8", "flexq-rtn", "online"])
def test_graph_decode_matches_eager_token_for_token(quantized):
    from flexq_cli.fusion import fuse_shared_inputs

    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8, 7]]
    cfg = SamplingConfig(max_new_tokens=32, stop_at_eos=False)
    eager = generate_tokens(tiny(quantized), prompts, cfg, use_graph=False)
    model = tiny(quantized)
    if quantized:  # fused q/k/v and gate/up quantized GEMMs give the same bits as separate ones
        fuse_shared_inputs(model, spec_for_config(model.config), pack_kernels=False)  # (norm kernels: the next test)
    graph = generate_tokens(model, prompts, cfg, use_graph=True)
    assert graph["graph"] and not eager["graph"]
    assert graph["graphs"] == 1  # generate.graph_count: a tiny model's keys do not pay for a second capture
    assert graph["tokens"] == eager["tokens"]


@pytest.mark.parametrize("quantized", [None, "w6a8"])
def test_graph_per_view_length_matches_eager(quantized, monkeypatch):
    """A long generation decodes with one graph per view length of the cache (generate.view_bucket: 32, 64, 96, 128,
    160 and 167 keys here), each captured at the first step after one eager warm-up at the longest view, longest
    first: the tokens of eager decoding of the same model (fused, with the norm, SiLU and rotary kernels), which reads
    the same views. The decode attention splits 167 keys over more CTAs than 32 (2 sequences x 4 heads), so a capture
    that needed larger split buffers than the warm-up made would raise. (Captures made free, so the tiny model gets
    the finest views: generate.graph_count.)"""
    from flexq_cli import generate
    from flexq_cli.fusion import fuse_shared_inputs
    from flexq_cli.generate import Decoder

    monkeypatch.setattr(generate, "CAPTURE_S_PER_LAYER", 0.0)

    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8, 7]]
    cfg = SamplingConfig(max_new_tokens=160, stop_at_eos=False)
    model = tiny(quantized)
    fuse_shared_inputs(model, spec_for_config(model.config))
    eager = generate_tokens(model, prompts, cfg, use_graph=False)
    captured, views = [], []
    capture, forward = Decoder._capture, Decoder._forward

    def counted(self, ids, pos_ids, mask, slots):
        views.append(mask.shape[-1])
        return forward(self, ids, pos_ids, mask, slots)

    monkeypatch.setattr(Decoder, "_forward", counted)
    monkeypatch.setattr(Decoder, "_capture", lambda self: (views.clear(), capture(self),
                                                           captured.append((sorted(self.graphs), list(views)))))
    graph = generate_tokens(model, prompts, cfg, use_graph=True)
    assert graph["graph"] and graph["graphs"] == 6
    assert captured == [([32, 64, 96, 128, 160, 167], [167, 167, 160, 128, 96, 64, 32])]  # warm-up, then captures
    assert graph["tokens"] == eager["tokens"]


@pytest.mark.parametrize("quantized", [None, "w6a8", "flexq-rtn", "online"])
def test_norm_kernels_decode_as_the_reference_path(quantized):
    """Fused with the one-kernel RMSNorms (and their pack hand-over), SiLU products and rotary + cache writes: graph
    decoding, eager decoding and the pure-PyTorch reference path (rms_norm in PyTorch, reference linears,
    transformers' attention) give the same tokens."""
    from flexq_cli.fusion import fuse_shared_inputs
    from flexq_cli.modules import KernelAttention, KernelRMSNorm

    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8, 7]]
    cfg = SamplingConfig(max_new_tokens=32, stop_at_eos=False)
    runs = {}
    for mode in ("graph", "eager", "reference"):
        model = tiny(quantized)
        fuse_shared_inputs(model, spec_for_config(model.config))
        assert sum(isinstance(m, KernelRMSNorm) for m in model.modules()) == 2 * 2 + 1
        assert all(isinstance(layer.self_attn, KernelAttention) for layer in model.model.layers)
        if mode == "reference":
            set_backend(model, "reference")
        runs[mode] = generate_tokens(model, prompts, cfg, use_graph=mode == "graph")["tokens"]
    assert runs["graph"] == runs["eager"] == runs["reference"]


@pytest.mark.parametrize("quantized", [None, "w6a8"])
def test_residual_adds_in_the_norms_give_the_same_logits(quantized, monkeypatch):
    """fusion.fuse_residual_adds (each residual add in the norm launch after it, the next layer's input norm made
    ahead): the logits of a left-padded prefill and of graph-decoded steps equal, bit for bit, those of the same
    fused model with transformers' layer forward, with no more norm launches."""
    from flexq_cli import modules
    from flexq_cli.fusion import fuse_shared_inputs
    from flexq_cli.generate import Decoder, left_pad
    from flexq_cli.modules import KernelRMSNorm

    model = tiny(quantized)
    fuse_shared_inputs(model, spec_for_config(model.config))
    ids, pad = left_pad([[1, 2, 3, 4, 5, 6, 7], [9, 8, 7]], 0, "cuda")
    adds, launch = [], modules.rms_norm_cuda
    monkeypatch.setattr(modules, "rms_norm_cuda", lambda *a, **k: (adds.append("residual" in k), launch(*a, **k))[1])
    runs = []
    for fused in (True, False):
        if not fused:
            for layer in model.model.layers:
                del layer.forward
        dec = Decoder(model, 2, 16, use_graph=True)
        adds.clear()
        logits = [dec.prefill(ids, pad)]
        # 2L + 1 norm launches either way: fused, both adds of every layer are in one, and each input norm after
        # the first is the one made ahead (a norm recomputed would be a launch more)
        assert len(adds) == 2 * len(model.model.layers) + 1
        assert sum(adds) == (2 * len(model.model.layers) if fused else 0)
        for _ in range(5):
            logits.append(dec.step(logits[-1].argmax(-1)).clone())  # a graph replays into one buffer
        runs.append(torch.stack(logits))
        assert all(m.ahead is None for m in model.modules() if isinstance(m, KernelRMSNorm))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("quantized", [None, "w6a8"])
def test_additive_mask_gives_the_boolean_masks_bits(quantized, monkeypatch):
    """The decoder hands SDPA the float mask SDPA would make of the boolean one: the same logits, bit for bit, for a
    left-padded batch's prefill and decode steps (decode steps through SDPA too, not the decode kernel)."""
    from flexq_cli.fusion import fuse_shared_inputs
    from flexq_cli.generate import Decoder, left_pad

    model = tiny(quantized)
    fuse_shared_inputs(model, spec_for_config(model.config), decode_attention=False)
    ids, pad = left_pad([[1, 2, 3, 4, 5, 6, 7], [9, 8, 7]], 0, "cuda")
    runs = []
    for boolean in (False, True):
        if boolean:
            monkeypatch.setattr(Decoder, "attention_mask", staticmethod(lambda allowed, dtype: allowed))
        dec = Decoder(model, 2, 16, use_graph=True)
        assert dec.mask.dtype == (torch.bool if boolean else torch.float16)
        logits = [dec.prefill(ids, pad)]
        for _ in range(5):
            logits.append(dec.step(logits[-1].argmax(-1)).clone())  # a graph replays into one buffer
        runs.append(torch.stack(logits))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("quantized", ["w6a8", "online"])
def test_kernel_logits_track_the_reference_path(quantized):
    model = tiny(quantized)
    ids = torch.randint(0, 1000, (2, 40), device="cuda")
    with torch.no_grad():
        kernel = model(ids).logits.float()
        set_backend(model, "reference")
        reference = model(ids).logits.float()
    # same integer products; the fp32 epilogue order and fp16 rounding of each layer's output differ
    assert (kernel - reference).norm() / reference.norm() < 2e-3


def test_reference_backend_refuses_graphs():
    from flexq_cli.errors import FlexQError

    model = tiny("w6a8")
    set_backend(model, "reference")
    with pytest.raises(FlexQError, match="needs the btc backend"):
        generate_tokens(model, [[1, 2]], SamplingConfig(max_new_tokens=3), use_graph=True)
