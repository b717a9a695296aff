"""Generation over the static KV cache: the same tokens as recomputing the whole sequence every step."""

from __future__ import annotations

import pytest
import torch

from conftest import run_cli
from flexq_cli.generate import SamplingConfig, generate_tokens


@pytest.fixture(scope="module")
def fp_model(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


def naive_greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids, use_cache=False).logits[0, -1].argmax().item()
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_static_cache_greedy_matches_full_recompute(fp_model):
    prompt = [5, 17, 300, 42, 7, 99]
    got = generate_tokens(fp_model, [prompt], SamplingConfig(max_new_tokens=12), use_graph=False)
    assert got["tokens"][0] == naive_greedy(fp_model, prompt, 12)
    assert got["decode_steps"] == 11 and not got["graph"] and got["graphs"] == 0
    assert got["first_step_s"] > 0 and got["decode_s"] > 0


def test_attention_reads_a_bucketed_prefix_of_the_cache(fp_model, monkeypatch):
    """Steps read the first keys_read(t) keys (t + 1 rounded up to the bucket), not all max_len, and still give the
    tokens of a full recompute. (Captures made free, so the tiny model gets the finest views: graph_count.)"""
    from flexq_cli import generate
    from flexq_cli.generate import StaticKV, view_bucket

    assert view_bucket(128, 384) == 32 and view_bucket(6, 86) == 32 and view_bucket(0, 4096) == 512
    monkeypatch.setattr(generate, "CAPTURE_S_PER_LAYER", 0.0)
    seen = []
    visible = StaticKV.visible
    monkeypatch.setattr(StaticKV, "visible", lambda self, k, v: seen.append(self.view_len) or visible(self, k, v))
    prompt = [5, 17, 300, 42, 7, 99]
    got = generate_tokens(fp_model, [prompt, prompt[3:]], SamplingConfig(max_new_tokens=80), use_graph=False)
    assert got["tokens"][0] == naive_greedy(fp_model, prompt, 80)
    assert got["tokens"][1] == naive_greedy(fp_model, prompt[3:], 80)
    layers = fp_model.config.num_hidden_layers
    # prefill, then t = 6..31, 32..63, 64..84
    assert seen == [86] * layers + [32] * (26 * layers) + [64] * (32 * layers) + [86] * (21 * layers)


def test_graph_count_weighs_captures_against_the_keys_read_past_the_position():
    """The view lengths a generation gets: G = sqrt(waste / capture), 1..MAX_GRAPHS, on LLaMA shapes (keys and values
    of every layer per position: 2 x layers x kv_heads x head_dim x 2 bytes x batch); one graph reads one view."""
    from flexq_cli.generate import MAX_GRAPHS, graph_count, view_bucket

    per_position_7b = 2 * 32 * 4096 * 2  # LLaMA-2-7B, batch 1
    assert graph_count(256, per_position_7b, 32) == 1  # 7 ms of extra key reads against a 38 ms capture
    assert graph_count(256, 16 * per_position_7b, 32) == 2  # batch 16: 115 ms of them
    assert graph_count(2048, 16 * per_position_7b, 32) == MAX_GRAPHS  # 7.3 s: capped
    assert graph_count(256, 2 * 80 * 1024 * 2 * 16, 80) == 1  # LLaMA-2-70B (8 kv heads), batch 16
    assert graph_count(512, 16 * per_position_7b, 32) == 3  # 458 ms: sqrt(11.9)
    assert graph_count(4096, 2 * 30 * 192 * 2, 30) == 1  # SmolLM2-135M: few keys even over 4096 steps
    assert view_bucket(128, 384, 1) == 384 and view_bucket(128, 384, 2) == 128 and view_bucket(128, 384) == 32


def test_one_graph_reads_one_view(fp_model, monkeypatch):
    """Where graph_count gives one graph (the tiny model's keys are cheap), every decode step reads the whole cache:
    one view, so one CUDA graph on a GPU; the tokens are still those of a full recompute."""
    from flexq_cli.generate import StaticKV

    seen = []
    visible = StaticKV.visible
    monkeypatch.setattr(StaticKV, "visible", lambda self, k, v: seen.append(self.view_len) or visible(self, k, v))
    prompt = [5, 17, 300, 42, 7, 99]
    got = generate_tokens(fp_model, [prompt], SamplingConfig(max_new_tokens=40), use_graph=False)
    assert got["tokens"][0] == naive_greedy(fp_model, prompt, 40)
    assert set(seen) == {46}


def test_left_padded_batch_matches_each_prompt_alone(fp_model):
    prompts = [[5, 17, 300, 42, 7, 99], [8, 9], [1000, 2000, 3000]]
    batch = generate_tokens(fp_model, prompts, SamplingConfig(max_new_tokens=8), use_graph=False)
    for prompt, tokens in zip(prompts, batch["tokens"]):
        assert tokens == naive_greedy(fp_model, prompt, 8)


def test_quantized_model_generates_like_its_own_full_recompute(tiny_llama, tmp_path):
    from flexq_cli.quantize import load_quantized, quantize

    quantize(str(tiny_llama), tmp_path / "q", preset="flexq-rtn")
    model, _, _ = load_quantized(tmp_path / "q")
    prompt = [11, 22, 33, 44]
    got = generate_tokens(model, [prompt], SamplingConfig(max_new_tokens=10), use_graph=False)
    assert got["tokens"][0] == naive_greedy(model, prompt, 10)


def test_sampling_is_seeded_and_respects_top_k(fp_model):
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=3, seed=7)
    a = generate_tokens(fp_model, [[1, 2, 3]], cfg, use_graph=False)["tokens"]
    b = generate_tokens(fp_model, [[1, 2, 3]], cfg, use_graph=False)["tokens"]
    assert a == b
    top3 = set(fp_model(torch.tensor([[1, 2, 3]])).logits[0, -1].topk(3).indices.tolist())
    assert a[0][0] in top3


def test_generate_cli(tiny_llama):
    code, out, err = run_cli("generate", tiny_llama, "--prompt", "The tower is", "--max-new-tokens", 5,
                             "--device", "cpu")
    assert code == 0, err
    assert out.strip()
    assert "first step" in err and "CUDA graph" not in err  # the CPU decodes eagerly: no graphs to capture
    code, _, err = run_cli("generate", tiny_llama, "--prompt", "x", "--max-new-tokens", 600, "--device", "cpu")
    assert code == 1 and "exceeds the model's 512 positions" in err


def test_fused_qkv_and_gate_up_give_the_same_bits(tiny_llama, tmp_path):
    from flexq_cli.arch import spec_for_config
    from flexq_cli.fusion import SharedOutputSlice, fuse_shared_inputs
    from flexq_cli.quantize import load_quantized, quantize

    quantize(str(tiny_llama), tmp_path / "q", preset="flexq-rtn")
    model, _, _ = load_quantized(tmp_path / "q")
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 24))
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 24, model.config.hidden_size)
    with torch.no_grad():
        before = model(ids).logits
        separate = [attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)]
        assert fuse_shared_inputs(model, spec_for_config(model.config)) == 2 * 2  # (q,k,v) and (gate,up) x 2 layers
        after = model(ids).logits
        fused = [attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)]
    assert isinstance(attn.k_proj, SharedOutputSlice)
    assert all(torch.equal(a, b) for a, b in zip(separate, fused))  # the quantized columns: the same bits
    # the model: the members' outputs are now strided views of one tensor, and the float32 CPU kernels after
    # them (attention) may round differently on strided inputs: within float32 rounding
    assert torch.allclose(before, after, rtol=0, atol=1e-6)


def test_fused_float_linears_match_within_float_rounding(fp_model):
    import copy

    from flexq_cli.arch import spec_for_config
    from flexq_cli.fusion import fuse_shared_inputs

    fused = copy.deepcopy(fp_model)
    assert fuse_shared_inputs(fused, spec_for_config(fused.config)) == 4
    ids = torch.randint(0, 1000, (1, 20))
    with torch.no_grad():
        a, b = fp_model(ids).logits, fused(ids).logits
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)  # float32: one GEMM of concatenated rows, same sums


def test_fused_layers_keep_no_output_alive(tiny_llama, tmp_path):
    from flexq_cli.arch import spec_for_config
    from flexq_cli.fusion import FusedQuantLinear, fuse_shared_inputs
    from flexq_cli.quantize import load_quantized, quantize

    quantize(str(tiny_llama), tmp_path / "q", preset="w6a8")
    model, _, _ = load_quantized(tmp_path / "q")
    fuse_shared_inputs(model, spec_for_config(model.config))
    with torch.no_grad():
        model(torch.randint(0, 1000, (1, 8)))
    fused = [m for m in model.modules() if isinstance(m, FusedQuantLinear)]
    assert fused and all(m._last is None for m in fused)


def test_attn_kernel_switch_reaches_every_attention(tiny_llama, tmp_path, monkeypatch):
    """``generate --no-attn-kernel`` makes every fused attention keep transformers' attention function in decode steps
    (the switch's effect on the GPU: tests/test_attention_gpu.py); the default lets them run the kernel."""
    from flexq_cli import fusion
    from flexq_cli.quantize import quantize

    quantize(str(tiny_llama), tmp_path / "q", preset="w6a8")
    made = []
    real = fusion.KernelAttention

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(fusion, "KernelAttention", spy)
    for flag, want in (([], True), (["--attn-kernel"], True), (["--no-attn-kernel"], False)):
        made.clear()
        code, out, err = run_cli("generate", tmp_path / "q", "--prompt", "The tower is", "--max-new-tokens", 3,
                                 "--device", "cpu", *flag)
        assert code == 0, err
        assert out.strip() and len(made) == 2  # one per decoder layer
        assert all(m.decode_kernel is want for m in made), flag


def test_generate_cli_reports_the_capture_in_the_first_step(tiny_llama, monkeypatch):
    """The first decode step, which captures the CUDA graphs on a GPU, is reported on its own: it is kept out of the
    decode rate and can take longer than the rest of a short generation."""
    from flexq_cli.cli import generate as cli_generate

    def fake(model, prompts, cfg, **kwargs):
        return {"tokens": [[5, 6, 7]], "prefill_s": 0.0412, "first_step_s": 0.37, "graphs": 8, "decode_s": 0.005,
                "decode_steps": 2, "decode_tok_per_s": 200.0, "graph": True, "eager_reason": None}

    monkeypatch.setattr(cli_generate, "generate_tokens", fake)
    code, _, err = run_cli("generate", tiny_llama, "--prompt", "x", "--max-new-tokens", 3, "--device", "cpu")
    assert code == 0, err
    assert "prefill 41.2 ms, first step 370.0 ms (captured 8 CUDA graphs), decode 200.0 tok/s (1 x 2 steps, CUDA " \
           "graph)" in " ".join(err.split())
